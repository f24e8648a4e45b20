"""A ``Dispatcher``'s whole records: the lanes made for them, the path one record takes, and the losses.

``_dispatch`` decides the plan and writes the lines workers rendered; whatever needs a whole record
comes here (``_RecordPath``, the ``Dispatcher``'s base): a batch to each handler's lane in one call
or to an inline handler record by record, one record from anywhere (``handle_record``), the routed
walk of ``Logger.handle`` with a lane in place of each network handler, the pause of whole records
while every lane that needs them is saturated, and the accounting of what failed (a handler that
raised, records that arrived without the attributes their loggers need, lines the handlers lost) and
of the lanes. Kept apart because this is the path that runs the user's handlers, filters and loggers
on single records, with a failure of any one costing that record only.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._handling import HANDLER_ERRORS, banner
from ._lanes import Lane, is_lane, wants_inline
from .handlers._disk import losses_of

if TYPE_CHECKING:
    from ._routing import RoutePlan


_Route = tuple[logging.Handler, logging.Handler]  # a handler given, and what to call: itself or its lane


def _raised(where: object, exc: BaseException) -> None:
    banner(
        f"{where} raised {exc!r} on a record: that record is lost to it (counted in the listener's "
        "stats as handler_failures['raised']), the others go on",
        kind=f"raised:{type(where).__name__}",
    )


def _walks_itself(logger: logging.Logger) -> bool:
    """Whether the dispatcher may walk *logger*'s hierarchy itself: not for a Logger subclass with
    its own ``handle`` or ``callHandlers`` (that one is called as it is, without lanes)."""
    kind = type(logger)
    return kind.handle is logging.Logger.handle and kind.callHandlers is logging.Logger.callHandlers


class _RecordPath:
    """Whole records to handlers (each itself, or the lane made for it here) and the figures; the base of
    ``Dispatcher``, whose ``__init__`` makes the state below."""

    handlers: list[logging.Handler]
    level: int
    respect_handler_level: bool
    routed: bool
    _find_logger: Callable[[str], logging.Logger]
    _route_plan: RoutePlan | None
    _unrouted: int
    _raised_count: int
    _seam: Callable[[logging.LogRecord], None] | None
    _slow: list[tuple[logging.Handler, logging.Handler]]
    _routes: list[tuple[logging.Handler, logging.Handler]]
    _lanes: dict[int, tuple[logging.Handler, Lane]]
    _found: dict[int, tuple[logging.Handler, logging.Handler]]
    _lanes_lock: threading.Lock
    _pausable: bool

    def _target_for(self, handler: logging.Handler) -> logging.Handler:
        """*handler* itself if it runs inline, else the lane made for it (once)."""
        if wants_inline(handler):
            return handler
        with self._lanes_lock:
            made = self._lanes.get(id(handler))
            if made is None:
                made = self._lanes[id(handler)] = (handler, Lane(handler))
                made[1]._held = True  # noqa: SLF001  (this dispatcher stops it)
        return made[1]

    # -- whole records -----------------------------------------------------------------------------

    def _threshold(self, handler: logging.Handler) -> int:
        """The lowest level *handler* takes from this dispatcher."""
        return max(self.level, handler.level if self.respect_handler_level else 0)

    def wants_records(self) -> bool:
        """Whether workers should send whole records with their lines. Not while every handler that
        needs them sits on a lane of its own that is saturated (a dead sink): its records would only
        be dropped, and making, sending and decoding them would slow the file handlers beside it.
        The lanes count the records not sent as dropped (``_count_unsent``)."""
        if not self._pausable:
            return True
        if self._route_plan is not None:
            return not self._route_plan.check_all()
        return not all(target.check_saturated() for _, target in self._slow)  # type: ignore[attr-defined]

    def _count_unsent(self, levels: list[int]) -> None:
        low = min(levels)
        for handler, target in self._slow:
            threshold = self._threshold(handler)
            count = len(levels) if threshold <= low else sum(1 for level in levels if level >= threshold)
            target.count_dropped(count)  # type: ignore[attr-defined]

    def _deliver_batch(self, levels: list[int], records: list[logging.LogRecord]) -> None:
        # A lane takes the batch in one call (one lock); an inline handler record by record. Order
        # holds per handler; across handlers it never could (a lane delivers in its own time).
        for handler, target in self._slow:
            threshold = self._threshold(handler)
            chosen = records
            if threshold > min(levels):
                chosen = [record for record, level in zip(records, levels) if level >= threshold]
            if not chosen:
                continue
            if isinstance(target, Lane) and not target.filters:
                target.handle_batch(chosen)
                continue
            for record in chosen:
                try:
                    target.handle(record)
                except HANDLER_ERRORS as exc:
                    self._count_raised(target, exc)

    def handle_record(self, record: logging.LogRecord) -> None:
        """Offer one record to every handler (through its lane), or to its logger in routed mode."""
        self.deliver(record, self._routes)

    def deliver(self, record: logging.LogRecord, routes: list[_Route]) -> None:
        if record.levelno < self.level:
            return
        if self.routed:
            self._route(record)
            return
        respect = self.respect_handler_level
        for handler, target in routes:
            if not respect or record.levelno >= handler.level:
                try:
                    target.handle(record)
                except HANDLER_ERRORS as exc:
                    self._count_raised(target, exc)

    def _count_raised(self, where: object, exc: BaseException) -> None:
        """A handler (or filter, or logger) raised on one record. In one process the exception would
        reach the logging call; here it would end the batch for every handler after it. It costs
        that record on that handler only: counted, said on stderr (rate limited), and the rest go on."""
        self._raised_count += 1
        _raised(where, exc)

    def _route(self, record: logging.LogRecord) -> None:
        # Exactly what this process would do with the call that made the record: its logger's level
        # (and logging.disable), then Logger.handle (disabled, filters, propagate, handler levels,
        # lastResort), with a lane called in place of each handler that gets one.
        logger = self._find_logger(record.name)
        if not logger.isEnabledFor(record.levelno):
            return
        if not _walks_itself(logger):
            try:
                logger.handle(record)
            except HANDLER_ERRORS as exc:
                self._count_raised(logger, exc)
            return
        if logger.disabled:
            return
        try:
            verdict: Any = logger.filter(record)
        except HANDLER_ERRORS as exc:
            self._count_raised(logger, exc)
            return
        if not verdict:
            return
        if isinstance(verdict, logging.LogRecord):  # 3.12: a filter may return a new record
            record = verdict
        found = 0
        current: logging.Logger | None = logger
        while current is not None:
            for handler in current.handlers:
                found += 1
                if record.levelno >= handler.level:
                    try:
                        self._found_target(handler).handle(record)
                    except HANDLER_ERRORS as exc:
                        self._count_raised(handler, exc)
            current = current.parent if current.propagate else None
        if found == 0:
            last = logging.lastResort
            if last is not None:
                if record.levelno >= last.level:
                    last.handle(record)
            elif logging.raiseExceptions and not logger.manager.emittedNoHandlerWarning:
                sys.stderr.write(f'No handlers could be found for logger "{logger.name}"\n')
                logger.manager.emittedNoHandlerWarning = True

    def _found_target(self, handler: logging.Handler) -> logging.Handler:
        found = self._found.get(id(handler))
        if found is None or found[0] is not handler:
            found = self._found[id(handler)] = (handler, self._target_for(handler))
        return found[1]

    # -- figures -----------------------------------------------------------------------------------

    def lanes(self) -> list[Any]:
        """Every lane records go through: the user's own (in handler order), then those made here."""
        own = [h for h in self.handlers if is_lane(h)]
        with self._lanes_lock:
            made = [lane for _, lane in self._lanes.values()]
        return own + made

    def lane_stats(self) -> list[dict[str, Any]]:
        return [lane.lane_stats() for lane in self.lanes()]

    def handler_figures(self) -> list[dict[str, Any]]:
        """Per handler given: its repr and its backlog (records waiting on its lane; 0 inline)."""
        figures = []
        for handler in self.handlers:
            lane: Any = handler if is_lane(handler) else self._lanes.get(id(handler), (None, None))[1]
            backlog = int(lane.lane_stats()["backlog"]) if lane is not None else 0
            figures.append({"handler": repr(handler), "backlog": backlog})
        return figures

    def losses(self) -> dict[str, Any]:
        """Lines the handlers could not write (a full disk, an unencodable line): ``lines_lost``, and
        ``handler_failures`` by reason, summed over the handlers (this process's share of each)."""
        total = 0
        reasons: dict[str, int] = {}
        for handler in self.handlers:
            figures = losses_of(handler).as_dict()
            total += figures["lines_lost"]
            for reason, count in figures["by_reason"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        if self._unrouted:
            total += self._unrouted
            reasons["configuration_changed"] = self._unrouted
        if self._raised_count:
            total += self._raised_count
            reasons["raised"] = self._raised_count
        return {"lines_lost": total, "handler_failures": reasons}
