"""Where a record goes after it is decoded: the ``Dispatcher``.

A listener owns one. Told the handlers once (or None: records go through this process's logging
configuration), it decides what the workers render, then for every batch:

* a file or stream handler whose formatter the workers can render (a plain ``Formatter``, a JSON one,
  one declared with ``render_in_workers``; see ``_render.render_spec``) and whose class keeps the
  emitting seams (``StreamHandler``, ``FileHandler``, ``WatchedFileHandler``, the rotating and timed
  ones, logfunnel's ``Locked*``; see ``_writers``) gets the lines the workers rendered, written
  batch by batch, rotation decided line by line, on the listener's thread;
* every other local file or stream handler (and ``NullHandler``, logfunnel's own handlers, and any
  handler marked with ``logfunnel.inline()``) gets whole records, inline;
* every other handler (the network ones: HTTP, SMTP, sockets, syslog, and anything unknown) gets whole
  records through a ``Lane`` of its own, so that a slow or dead sink delays nothing else. A handler
  that already is a lane (a ``Lane``, or one that runs its own sender thread) is called inline.

In routed mode the dispatcher walks ``Logger.handle``'s logic itself (disabled, filters, the propagate
walk with handler levels, ``lastResort``), calling a lane in place of each network handler it finds,
so the user's loggers are never altered. ``handle_record(record)`` is the entry point for a record
from anywhere (a listener's seams, a receiver of stdlib ``SocketHandler`` clients).

Here: the plan, the lines (written batch by batch, routed or not) and the end. Whole records (the
lanes made for them, the per-record path, the routed walk) and the failure accounting are in
``_dispatch_records``, the ``Dispatcher``'s base.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _render, _writers
from ._dispatch_records import _RecordPath
from ._handling import HANDLER_ERRORS, banner
from ._lanes import Lane
from ._routing import LOGGER, RoutePlan

__all__ = ["Dispatcher"]

#: A format every worker renders when a handler needs each record's creation time (a timed
#: ``Locked*`` handler): ``repr`` of a float, which ``float()`` turns back into the same float.
_CREATED_SPEC: _render.Spec = ("%(created)r", None, "%", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local")
_EARLIEST, _LATEST = 0.0, 2.0**40  # creation times a worker may claim (beyond: the time now)


def new_record(state: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__ = state
    return record


class _RenderedRecord(logging.LogRecord):
    """A record that also carries the lines its worker rendered, kept outside ``__dict__`` so that
    formatters which dump a record's attributes never see them."""

    __slots__ = ("rendered",)


class _Prerendered:
    """Stands in for a handler's plain ``Formatter`` while a listener runs: returns the line the
    worker rendered with an identical formatter, or formats as the original would."""

    def __init__(self, formatter: logging.Formatter | None, index: int) -> None:
        self.original = formatter
        self.index = index

    def format(self, record: logging.LogRecord) -> str:
        rendered = getattr(record, "rendered", None)
        if rendered is not None:
            columns, position = rendered
            line = columns[self.index][position]
            if line is not None:
                return line  # type: ignore[no-any-return]
        return (self.original or _render.DEFAULT_FORMATTER).format(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original or _render.DEFAULT_FORMATTER, name)


def _failure_record(text: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": text, "args": None, "name": "logfunnel"})


class Dispatcher(_RecordPath):
    """Hand decoded records to *handlers* (None: through this process's logging configuration).

    *level* skips records below it; *respect_handler_level* checks each handler's level, as
    ``QueueListener`` does. With *prerender* True (a listener on a socket, without seams) the plan
    asks workers to render the lines of plain formatters. *seam*, if given, is called for every
    record instead of ``handle_record`` (a ``LogListener`` subclass overriding ``handle``).
    *find_logger* gives the logger a routed record goes to (``logging.getLogger``; a receiver of
    foreign peers passes one that never creates a logger for a name a peer made up).

    Use: ``start()`` (returns the plan for workers), then ``dispatch(levels, lines, records)`` for
    batches or ``handle_record(record)`` for single records from any thread, then ``stop()``, which
    drains every lane within its own deadline and returns what could not be delivered.
    """

    def __init__(
        self,
        handlers: Sequence[logging.Handler] | None,
        *,
        level: int = logging.NOTSET,
        respect_handler_level: bool = True,
        prerender: bool = False,
        seam: Callable[[logging.LogRecord], None] | None = None,
        find_logger: Callable[[str], logging.Logger] = logging.getLogger,
    ) -> None:
        self.handlers = list(handlers or ())
        self._find_logger = find_logger
        self.level = level
        self.respect_handler_level = respect_handler_level
        self.routed = not self.handlers
        self._prerender = prerender and seam is None
        self._route_plan: RoutePlan | None = None  # routed, with lines: see _routing
        self._unrouted = 0
        self._raised_count = 0  # records a handler, filter or logger raised on (each once per raise)
        self._seam = seam
        self._fast: list[tuple[logging.Handler, int, _writers.Writer]] = []
        self._created = -1  # the plan's index of the creation times, if a fast handler needs them
        self._slow: list[tuple[logging.Handler, logging.Handler]] = []  # (handler, what to call)
        self._routes: list[tuple[logging.Handler, logging.Handler]] = []
        self._wrapped: list[tuple[logging.Handler, _Prerendered]] = []
        self._lanes: dict[int, tuple[logging.Handler, Lane]] = {}  # made here, by id of the handler
        self._found: dict[int, tuple[logging.Handler, logging.Handler]] = {}  # routed: handler -> target
        self._lanes_lock = threading.Lock()
        self.plan: dict[str, Any] = {"formats": [], "full": True, "level": level}
        self.undelivered = 0
        self._pausable = False

    # -- the plan ----------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Decide, once, what workers render and which handler runs where; return the plan."""
        if self.routed and self._prerender:
            return self._start_routed()
        specs: list[_render.AnySpec] = []
        for handler in self.handlers:
            spec = _render.render_spec(handler.formatter) if self._prerender else None
            index = -1
            if spec is not None:
                if spec not in specs:
                    specs.append(spec)
                index = specs.index(spec)
            target = self._target_for(handler)
            self._routes.append((handler, target))
            writer = _writers.writer_for(handler) if index >= 0 else None
            if writer is not None:
                self._fast.append((handler, index, writer))
                if _writers.needs_created(handler) and self._created < 0:
                    if _CREATED_SPEC not in specs:
                        specs.append(_CREATED_SPEC)
                    self._created = specs.index(_CREATED_SPEC)
                continue
            self._slow.append((handler, target))
            if index >= 0:
                stand_in = _Prerendered(handler.formatter, index)
                handler.formatter = stand_in  # type: ignore[assignment]
                self._wrapped.append((handler, stand_in))
        self.plan = {"formats": specs, "full": not self._prerender or bool(self._slow), "level": self.level}
        # Whole records may be paused (wants_records) only when every handler needing them is on a
        # lane made here with a plain drop-newest buffer, and nothing else (a seam, routing) needs them.
        self._pausable = (
            self._prerender
            and bool(self._slow)
            and all(isinstance(target, Lane) and not target.filters for _, target in self._slow)
        )
        for handler in self.handlers:
            if isinstance(handler, Lane):
                handler._held = True  # noqa: SLF001  (drained by stop(), after the last records)
        return self.plan

    def _start_routed(self) -> dict[str, Any]:
        plan = RoutePlan(self._find_logger)
        specs = plan.start(_CREATED_SPEC)
        if plan.fast:
            self._route_plan = plan
            self._created = plan.created
            self._pausable = True  # records only while some route needs them (wants_records)
        # Whole records travel (the first batches, and whenever a route needs them) unless told
        # otherwise by an acknowledgement (wants_records).
        self.plan = {"formats": specs, "full": True, "level": self.level}
        return self.plan

    # -- records -----------------------------------------------------------------------------------

    def dispatch(
        self, levels: list[int], lines: list[list[str | None]], records: list[dict[str, Any]] | None
    ) -> None:
        """A decoded batch: rendered lines to the fast handlers, records to the rest."""
        if self._route_plan is not None:
            self._dispatch_routed(levels, lines, records)
            return
        created: list[float] = []
        if self._fast and self._created >= 0:
            created = _created(lines[self._created])
        for handler, index, writer in self._fast:
            threshold = self._threshold(handler)
            chosen = lines[index]
            times = created or [0.0] * len(chosen)
            if threshold > min(levels):
                times = [when for when, level in zip(times, levels) if level >= threshold]
                chosen = [line for line, level in zip(chosen, levels) if level >= threshold]
            if None in chosen:
                times = [when for when, line in zip(times, chosen) if line is not None]
                chosen = [line for line in chosen if line is not None]
            if chosen:
                writer(handler, chosen, times)  # type: ignore[arg-type]
        if records is None:
            if self._slow and self._pausable:
                self._count_unsent(levels)
            return
        seam = self._seam
        if seam is None and not self._slow and not self.routed:
            return
        wrapped = bool(self._wrapped)
        made: list[logging.LogRecord] = []
        record: logging.LogRecord
        for position, state in enumerate(records):
            if wrapped:
                rendered = _RenderedRecord.__new__(_RenderedRecord)
                rendered.__dict__ = state
                rendered.rendered = (lines, position)
                record = rendered
            else:
                record = new_record(state)
            made.append(record)
        if seam is not None:
            for record in made:
                try:
                    seam(record)
                except HANDLER_ERRORS as exc:
                    self._count_raised(seam, exc)
        elif self.routed:
            for record in made:
                self.deliver(record, self._slow)
        else:
            self._deliver_batch(levels, made)

    def _dispatch_routed(
        self, levels: list[int], lines: list[list[str | None]], records: list[dict[str, Any]] | None
    ) -> None:
        # Each name's route once (RoutePlan), each handler's lines gathered and written at the end
        # of the batch, or before a record of the batch takes the record path (order per handler).
        plan = self._route_plan
        assert plan is not None
        plan.check()
        names = lines[plan.names]
        created = _created(lines[self._created]) if self._created >= 0 else None
        pending: dict[int, tuple[logging.Handler, _writers.Writer, list[str], list[float]]] = {}
        floor = self.level
        unrouted = 0
        for position, name in enumerate(names):
            level = levels[position]
            if level < floor:
                continue
            if type(name) is not str:
                continue  # the worker could not render it, and said so there
            logger, targets, needs = plan.route(name)
            if needs is not None:
                if records is not None:
                    self._flush_routed(pending)
                    self._route(new_record(records[position]))
                    continue
                if not logger.isEnabledFor(level):
                    continue
                unrouted += 1
                if needs == LOGGER:
                    continue
            if not targets or not logger.isEnabledFor(level):
                continue
            for handler, index, writer in targets:
                if level < handler.level:
                    continue
                line = lines[index][position]
                if line is None:
                    continue  # the worker could not render it, and said so there
                gathered = pending.get(id(handler))
                if gathered is None:
                    gathered = pending[id(handler)] = (handler, writer, [], [])
                gathered[2].append(line)
                if created is not None:
                    gathered[3].append(created[position])
        self._flush_routed(pending)
        if unrouted:
            self._unrouted += unrouted
            banner(
                f"{unrouted} log records arrived without their attributes after the logging "
                "configuration changed so that their loggers need them (a filter, or a handler whose "
                "format the workers do not render); they are counted lost (configuration_changed)"
            )

    @staticmethod
    def _flush_routed(
        pending: dict[int, tuple[logging.Handler, _writers.Writer, list[str], list[float]]],
    ) -> None:
        for handler, writer, chosen, times in pending.values():
            writer(handler, chosen, times or [0.0] * len(chosen))
        pending.clear()

    # -- the listener's own records ----------------------------------------------------------------

    def report(self, level: int, message: str, *args: object) -> None:
        """A record of the listener's own (a loss report) through the same handlers and lanes."""
        record = logging.LogRecord("logfunnel", level, __file__, 0, message, args, None, "listener")
        try:
            if self._seam is not None:
                self._seam(record)
            else:
                self.handle_record(record)
        except Exception as exc:
            banner(f"could not report {record.getMessage()!r}: {exc!r}")

    # -- the end -----------------------------------------------------------------------------------

    def stop(self) -> int:
        """Drain every lane, each within its own ``drain_timeout`` from now (all at once, not one
        after another); stop the lanes made here, abandon the stuck ones; report and return what
        could not be delivered. The handlers get their own formatters back; none is closed."""
        started = time.monotonic()
        left_total = 0
        with self._lanes_lock:
            made = {id(lane) for _, lane in self._lanes.values()}
        for lane in self.lanes():
            remaining = max(0.0, started + float(getattr(lane, "drain_timeout", 5.0)) - time.monotonic())
            try:
                if id(lane) in made:
                    left = lane.stop(remaining)
                else:
                    left = lane.drain(remaining)
                    if left and isinstance(lane, Lane):
                        lane.stop(0.0)  # the user's lane is stuck: abandon it, or exit would hang on it
                    elif left:
                        banner(f"{lane!r} could not deliver {left} records before the listener stopped")
            except Exception as exc:
                banner(f"draining {lane!r} failed: {exc!r}")
                continue
            finally:
                if isinstance(lane, Lane):
                    lane._held = False  # noqa: SLF001
            left_total += left
        self.undelivered = left_total
        self._unwrap()
        return left_total

    def _unwrap(self) -> None:
        for handler, stand_in in self._wrapped:
            if handler.formatter is stand_in:  # type: ignore[comparison-overlap]
                handler.formatter = stand_in.original
        self._wrapped = []

    def abandoned(self, handler: logging.Handler) -> bool:
        """Whether *handler*'s lane was abandoned (it is stuck: do not flush or close it)."""
        lane: Any = handler if isinstance(handler, Lane) else self._lanes.get(id(handler), (None, None))[1]
        return lane is not None and lane.lane_stats()["state"] == "abandoned"

    def close_handlers(self) -> None:
        """Flush and close every handler given, except those stuck in an abandoned lane."""
        for handler in self.handlers:
            if self.abandoned(handler):
                continue
            try:
                handler.flush()
                handler.close()
            except Exception:
                pass


def _created(column: list[str | None]) -> list[float]:
    """Each record's creation time from the lines of ``_CREATED_SPEC``; the time now for any line
    that is not a finite time a worker could have stamped (a hostile or broken peer)."""
    now = time.time()
    times = []
    for text in column:
        try:
            when = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            when = now
        times.append(when if _EARLIEST <= when <= _LATEST else now)
    return times


def _write_lines(handler: logging.Handler, lines: list[str]) -> None:
    """What ``StreamHandler.emit`` does for each record, once for the whole batch (``_writers``)."""
    _writers._write_plain(handler, lines, [])  # noqa: SLF001
