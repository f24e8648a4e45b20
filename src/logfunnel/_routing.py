"""Routing by logger name with lines the workers rendered: the ``RoutePlan`` of a routed listener.

A listener without handlers of its own routes each record through this process's logger tree, as
``Logger.handle`` would. When the handlers in that tree can take lines (a formatter the workers can
render, a class with a batch writer, no filter: see ``_render.render_spec`` and ``_writers``), the
plan asks the workers for those lines and for each record's logger name, and a batch is routed by
name alone: for each name, once, the handlers ``Logger.handle`` would reach (its logger's level is
checked per record, live, and each handler's level), then each handler gets its lines in one write.

Where the record itself is needed (a logger with filters, a handler that cannot take lines, a
``Logger`` subclass with its own ``handle``, no handler at all: ``lastResort``), the record takes
the record path, so workers are asked for whole records only while some route needs them
(``wants_records``). The tree may change after workers connected: a cheap signature of the loggers
on the routes planned so far (their handlers, filters, propagate and disabled flags and parents,
each handler's filters and formatter) is checked at every batch, and the routes are planned again
when it differs; the whole tree is looked at every 0.1 s, and at once after such a change, to decide
whether whole records must travel again. A handler added later
whose format the workers were not asked for takes the record path. A record of a batch already
sent without its attributes whose route needs them then is counted lost (``losses()``, reason
``configuration_changed``), with a banner: its lines still go to the handlers of its route that
take lines, unless its logger itself needs the record (a filter).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import _render, _writers

__all__ = ["HANDLERS", "LOGGER", "NAME_SPEC", "RoutePlan"]

_EVERY = 0.1  # seconds between looks at the whole tree (for wants_records)

#: The format that renders each record's logger name (the key of its route).
NAME_SPEC: _render.Spec = ("%(name)s", None, "%", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local")

Target = tuple[logging.Handler, int, _writers.Writer]
#: A name's logger, the handlers that take lines, and what needs the record: None (nothing), HANDLERS
#: (a handler of the route that cannot take lines) or LOGGER (the logger itself: its filters, its own
#: ``handle``, or no handler at all, ``lastResort``).
Route = tuple[logging.Logger, list[Target], int | None]
HANDLERS, LOGGER = 1, 2


def _walks_itself(logger: logging.Logger) -> bool:
    kind = type(logger)
    return kind.handle is logging.Logger.handle and kind.callHandlers is logging.Logger.callHandlers


def _loggers(manager: Any) -> list[logging.Logger]:
    return [manager.root, *(lg for lg in list(manager.loggerDict.values()) if isinstance(lg, logging.Logger))]


class RoutePlan:
    """Which handlers of the logger tree take lines, under which format index, and each name's route."""

    def __init__(self, find_logger: Callable[[str], logging.Logger]) -> None:
        self.find_logger = find_logger
        self.manager = find_logger("").manager
        self.specs: list[_render.AnySpec] = []
        self.fast: dict[int, tuple[logging.Handler, Any, int, _writers.Writer]] = {}  # id -> (h, fmt, i, w)
        self.names = -1
        self.created = -1
        self.routes: dict[str, Route] = {}
        self.chain: dict[int, logging.Logger] = {}  # the loggers of the routes planned so far
        self.signature = self._signature(self.chain)
        self.all_fast = False
        self._next_full = 0.0

    def start(self, created_spec: _render.Spec) -> list[_render.AnySpec]:
        """Plan the formats from the tree as it is now; return them (the plan's ``formats``)."""
        for logger in _loggers(self.manager):
            for handler in logger.handlers:
                if id(handler) in self.fast:
                    continue
                spec = _render.render_spec(handler.formatter)
                writer = _writers.writer_for(handler) if spec is not None else None
                if spec is None or writer is None:
                    continue
                if spec not in self.specs:
                    self.specs.append(spec)
                self.fast[id(handler)] = (handler, handler.formatter, self.specs.index(spec), writer)
                if _writers.needs_created(handler) and self.created < 0:
                    self.specs.append(created_spec)
                    self.created = len(self.specs) - 1
        if self.fast:
            self.specs.append(NAME_SPEC)
            self.names = len(self.specs) - 1
        self.check_all()
        return self.specs

    def check(self) -> None:
        """Plan the routes again if a logger on one of them changed since the last batch: its
        handlers (and theirs: filters, formatter), filters, propagate and disabled flags, parent.
        Cheap: only the loggers of the routes planned so far (a new name's route is planned from
        the tree as it is then)."""
        if self._signature(self.chain) != self.signature:
            self.replan()

    def check_all(self) -> bool:
        """Whether every route of the tree, as it is now, takes lines only (whole records need not
        travel). Looks at every logger at most every ``_EVERY`` seconds (a logger off every route
        so far may have changed), and at once after ``check()`` found a change."""
        now = time.monotonic()
        if now >= self._next_full:
            self._next_full = now + _EVERY
            loggers = _loggers(self.manager)
            self.all_fast = bool(self.fast) and all(self._plan(lg)[2] is None for lg in loggers)
        return self.all_fast

    def replan(self) -> None:
        self.routes = {}
        self.chain = {}
        self.signature = self._signature(self.chain)
        self._next_full = 0.0

    @staticmethod
    def _signature(chain: dict[int, logging.Logger]) -> int:
        parts = []
        for logger in chain.values():
            handlers = tuple((id(h), id(h.formatter), len(h.filters)) for h in logger.handlers)
            parent = id(logger.parent)
            parts.append(
                (id(logger), parent, logger.propagate, logger.disabled, len(logger.filters), handlers)
            )
        return hash(tuple(parts))

    def route(self, name: str) -> Route:
        """The route of a record of logger *name*."""
        try:
            return self.routes[name]
        except KeyError:
            pass
        logger = self.find_logger(name)
        route = self.routes[name] = self._plan(logger)
        added = False
        current: logging.Logger | None = logger
        while current is not None:  # the loggers whose changes may change this route
            if id(current) not in self.chain:
                self.chain[id(current)] = current
                added = True
            current = current.parent
        if added:
            self.signature = self._signature(self.chain)
        return route

    def _plan(self, logger: logging.Logger) -> Route:
        if not _walks_itself(logger) or logger.filters:
            return (logger, [], LOGGER)
        if logger.disabled:
            return (logger, [], None)
        targets: list[Target] = []
        needs: int | None = None
        found = 0
        current: logging.Logger | None = logger
        while current is not None:
            for handler in current.handlers:
                found += 1
                fast = self.fast.get(id(handler))
                if (
                    fast is None
                    or fast[0] is not handler
                    or fast[1] is not handler.formatter
                    or handler.filters
                ):
                    needs = HANDLERS
                else:
                    targets.append((handler, fast[2], fast[3]))
            current = current.parent if current.propagate else None
        return (logger, targets, needs if found else LOGGER)  # none at all: lastResort
