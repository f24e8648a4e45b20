"""``Lane``: a handler on a thread of its own, behind a bounded buffer.

A slow or dead sink (an HTTP endpoint that never answers, an SMTP server that stalls) must delay
nothing else. A ``Lane`` takes a record in constant time (an append to a bounded buffer, or a
counted drop when it is full) and hands it to its target on its own daemon thread, exactly as an
inline call would (``target.handle(record)``: filters, formatter, lock). A record whose emit failed
(the target called its ``handleError``, or raised) stays at the head and is tried again with
back-off; once it gives up, the target's own ``handleError`` runs with the last failure. A target
whose ``handle`` raises is not retried: that is a bug in it, not an outage.

Every lane reports ``lane_stats()`` and can be ``drain()``-ed (the lane protocol, shared with
handlers that run their own sender thread). A lane stuck inside its target when it must stop is
*abandoned*: its target is taken out of ``logging``'s list of handlers to flush at exit, so that
``logging.shutdown`` does not wait forever on the lock the stuck emit holds, and the program exits.

Here: the buffer, the caller's side, the lane's life (drain, stop, close) and its figures. The lane's
thread, ``Retry`` and the ``handleError`` interception are in ``_lane_delivery``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from typing import Any

from ._checks import check_count, check_seconds
from ._exit import at_exit
from ._handling import UnlockedHandle, banner
from ._lane_delivery import NO_RETRY, Retry, _Delivery, _Intercept, abandon_target
from ._probes import probe_for

__all__ = ["Lane", "Retry", "abandon_target", "inline", "is_lane"]

WHEN_FULL = ("drop_newest", "drop_oldest", "block")
_DROP_REPORT_INTERVAL = 5.0  # at most one banner per lane this often about records it dropped
_INLINE_MARK = "_logfunnel_inline"

_lanes: weakref.WeakSet[Lane] = weakref.WeakSet()


def inline(handler: logging.Handler) -> logging.Handler:
    """Mark *handler* to be called inline by a listener (on its thread), never on a lane; return it.

    For a handler that never blocks (a ``QueueHandler`` to an unbounded queue, a counter) and whose
    records should not wait behind a thread switch. A handler stuck inline stalls every record.
    """
    if not isinstance(handler, logging.Handler):
        raise TypeError(f"logfunnel.inline() expected a logging.Handler, got {type(handler).__name__!r}")
    setattr(handler, _INLINE_MARK, True)
    return handler


def is_lane(handler: object) -> bool:
    """True for an object that follows the lane protocol (``lane_stats()`` and ``drain()``)."""
    return callable(getattr(handler, "lane_stats", None)) and callable(getattr(handler, "drain", None))


def wants_inline(handler: logging.Handler) -> bool:
    """Whether a listener calls *handler* itself rather than through a lane it makes for it: local
    files and streams, ``NullHandler``, handlers marked with ``inline()``, logfunnel's own worker
    handler (it only appends to its buffer) and handlers that already are lanes."""
    if getattr(handler, _INLINE_MARK, False) or is_lane(handler):
        return True
    if isinstance(handler, (logging.StreamHandler, logging.NullHandler)):
        return True  # FileHandler and its subclasses (Rotating, Watched, Locked*) are StreamHandlers
    from .worker import FunnelHandler

    return isinstance(handler, FunnelHandler)


class Lane(UnlockedHandle, _Delivery):
    """Put *handler* on a lane of its own: a daemon thread, a buffer of *capacity* records, a drop
    policy, retry with back-off for records whose emit failed on the way out (an ``OSError`` or an
    ``http.client`` error: the network, the server; a record that fails by itself, as a format naming
    a missing field does, gets its handleError at once), and figures (``lane_stats()``).

    *when_full* says what happens to a record that finds the buffer full: ``"drop_newest"`` (the
    default: it is dropped, and counted), ``"drop_oldest"`` (the oldest waiting record is dropped to
    make room) or ``"block"`` (the caller waits up to *block_timeout* seconds for room, then drops it).
    *retry* is a ``Retry`` (see its defaults and why), a number of seconds to keep retrying a failing
    record, or None to try each record once. ``close()`` waits up to *drain_timeout* seconds for the
    buffer to empty, then closes the target; what it could not deliver is reported on stderr and
    in ``lane_stats()["undelivered"]``. The lane's level starts as the target's.

    Records reach the target as ``handler.handle(record)`` would, later and on the lane's thread:
    arguments that change after the logging call may show their new value (as with ``QueueHandler``
    without ``prepare``). A ``Lane`` works in any handler list: a listener's, or a logger's. Its
    ``handle`` takes no handler lock (its buffer has its own), so callers never queue behind a
    ``block`` wait or each other.
    """

    def __init__(
        self,
        handler: logging.Handler,
        *,
        capacity: int = 10_000,
        when_full: str = "drop_newest",
        retry: Retry | float | None = Retry(),  # noqa: B008  (immutable)
        drain_timeout: float = 5.0,
        block_timeout: float = 1.0,
        name: str | None = None,
    ) -> None:
        if not isinstance(handler, logging.Handler):
            raise TypeError(f"Lane() expected a logging.Handler to run, got {type(handler).__name__!r}")
        if isinstance(handler, Lane):
            raise TypeError("Lane() got a Lane: a handler needs one lane, not two")
        check_count(capacity, "Lane()", "capacity (records)")
        if when_full not in WHEN_FULL:
            raise ValueError(f"Lane() got when_full={when_full!r}, expected one of {', '.join(WHEN_FULL)}")
        for label, value in (("drain_timeout", drain_timeout), ("block_timeout", block_timeout)):
            check_seconds(value, "Lane()", label, zero=True)
        if retry is None:
            retry = NO_RETRY
        elif not isinstance(retry, Retry):
            if isinstance(retry, bool) or not isinstance(retry, (int, float)):
                raise TypeError(
                    "Lane() expected retry as a Retry, a number of seconds or None, "
                    f"got {type(retry).__name__!r}"
                )
            retry = Retry(give_up_after=retry)
        super().__init__(handler.level)
        self.target = handler
        self.capacity = capacity
        self.when_full = when_full
        self.retry = retry
        self.drain_timeout = float(drain_timeout)
        self.block_timeout = float(block_timeout)
        self.name = name or f"lane-{type(handler).__name__}"
        self._probe = probe_for(handler)  # a stdlib handler that fails without saying so (_probes)
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent's thread is not ours)."""
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._buffer: collections.deque[logging.LogRecord] = collections.deque()
        self._current: logging.LogRecord | None = None  # the record being handed to the target
        self._backing_off: BaseException | None = None  # the failure a retry of _current waits out
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._failure: BaseException | None = None
        # Kept across a fork: the hook is still installed on the target, and stays the one.
        self._intercept: _Intercept | None = getattr(self, "_intercept", None)
        self._state = "running"
        self._stopping = False  # close(): finish what is buffered, then end
        self._abandon = False  # give up: end as soon as the target lets go
        self._held = False  # a running listener drains and stops it (not the exit hook here)
        self.handled = self.dropped = self.failed = self.retried = self.undelivered = 0
        self._saturated = False
        self._reported_drops = 0
        self._reported_at = 0.0

    # -- the caller's side -------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Append *record* to the buffer (start the thread if needed); when full, as *when_full* says."""
        if self._pid != os.getpid():
            self._reset()
        cond = self._cond
        with cond:
            if self._state != "running" or self._stopping:
                self.undelivered += 1  # after close(): counted, never silently gone
                return
            buffer = self._buffer
            if len(buffer) >= self.capacity:
                if self.when_full == "drop_oldest":
                    buffer.popleft()
                    self.dropped += 1
                elif self.when_full != "block" or not cond.wait_for(
                    lambda: len(buffer) < self.capacity or self._state != "running", self.block_timeout
                ):
                    self.dropped += 1
                    record = None  # type: ignore[assignment]
                elif self._state != "running":
                    self.undelivered += 1
                    return
            if record is not None:
                buffer.append(record)
                if self._thread is None:
                    self._start()
                cond.notify_all()
        if self.dropped > self._reported_drops:
            self._report_drops()

    def check_saturated(self) -> bool:
        """Whether a record given now would surely be dropped (``drop_newest``, buffer full): then a
        listener may stop asking its workers for whole records until the buffer is half empty again
        (``count_dropped`` counts the ones never built). Each call moves that hysteresis on: a lane
        saturated stays so until half of its buffer has drained."""
        if self.when_full != "drop_newest" or self._state != "running":
            return False
        waiting = len(self._buffer)
        if self._saturated:
            self._saturated = waiting > self.capacity // 2
        else:
            self._saturated = waiting >= self.capacity
        return self._saturated

    def count_dropped(self, count: int) -> None:
        """Count *count* records this lane would have been given while it was saturated."""
        if count <= 0:
            return
        with self._cond:
            if self._state != "running" or self._stopping:
                self.undelivered += count
            else:
                self.dropped += count
        self._report_drops()

    def handle_batch(self, records: list[logging.LogRecord]) -> None:
        """Append many records at once (one lock, not one per record), as ``emit`` would one by one.

        For a lane without filters of its own (the dispatcher checks); ``"block"`` goes record by record.
        """
        if self.when_full == "block":
            for record in records:
                self.handle(record)
            return
        if self._pid != os.getpid():
            self._reset()
        cond = self._cond
        with cond:
            if self._state != "running" or self._stopping:
                self.undelivered += len(records)
                return
            buffer = self._buffer
            room = self.capacity - len(buffer)
            if len(records) <= room:
                buffer.extend(records)
            elif self.when_full == "drop_oldest":
                buffer.extend(records)
                excess = len(buffer) - self.capacity
                for _ in range(excess):
                    buffer.popleft()
                self.dropped += excess
            else:
                if room > 0:
                    buffer.extend(records[:room])
                self.dropped += len(records) - max(room, 0)
            if self._thread is None and buffer:
                self._start()
            cond.notify_all()
        if self.dropped > self._reported_drops:
            self._report_drops()

    def _report_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._reported_at < _DROP_REPORT_INTERVAL:
            return
        new = self.dropped - self._reported_drops
        if new <= 0:
            return
        self._reported_drops, self._reported_at = self.dropped, now
        banner(
            f"lane {self.name} ({self.target!r}) dropped {new} records ({self.dropped} in all): its "
            f"buffer of {self.capacity} records is full: the handler is slower than records arrive; "
            "raise capacity, or look at the sink",
            kind=f"lane-drops-{id(self)}",
        )

    def _start(self) -> None:
        # Called with the condition held.
        if self._intercept is None:
            self._intercept = _Intercept(self, self.target.handleError)
            self.target.handleError = self._intercept  # type: ignore[method-assign]
        thread = threading.Thread(target=self._run, name=f"logfunnel-{self.name}", daemon=True)
        self._thread = thread
        _lanes.add(self)
        at_exit(_stop_all)  # also at a multiprocessing child's exit, which skips atexit
        thread.start()

    # -- the lane protocol -------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records waiting: buffered, and the one being handed to the target."""
        return len(self._buffer) + (self._current is not None)

    def lane_stats(self) -> dict[str, Any]:
        """``name``, ``handler`` (repr of the target), ``backlog``, ``handled``, ``dropped``,
        ``failed``, ``retried``, ``undelivered``, ``state`` and ``capacity``."""
        with self._cond:
            return {
                "name": self.name,
                "handler": repr(self.target),
                "backlog": self.backlog,
                "handled": self.handled,
                "dropped": self.dropped,
                "failed": self.failed,
                "retried": self.retried,
                "undelivered": self.undelivered,
                "state": self._state,
                "capacity": self.capacity,
            }

    def drain(self, timeout: float) -> int:
        """Wait at most *timeout* seconds for what is buffered to be delivered (or given up); return
        how many records are still waiting, which ``lane_stats()["undelivered"]`` then counts."""
        with self._cond:
            self._cond.wait_for(lambda: not self.backlog, max(0.0, timeout))
            return self.backlog

    def flush(self) -> None:
        """Wait (up to *drain_timeout* seconds) for the buffer to empty, then flush the target."""
        if self._pid != os.getpid() or self._state != "running":
            return
        if self.drain(self.drain_timeout) == 0:
            self.target.flush()

    def close(self) -> None:
        """Deliver what is buffered within *drain_timeout* seconds, end the thread, close the target.

        A lane still stuck in its target then is abandoned: what it holds is counted undelivered
        and reported on stderr, its target is left open (its lock is held by the stuck emit) and taken
        out of ``logging.shutdown``'s list, so the program can exit."""
        try:
            self.stop(self.drain_timeout)
            if self._state == "stopped":
                try:
                    self.target.close()
                except Exception as exc:
                    banner(f"lane {self.name}: closing {self.target!r} failed: {exc!r}")
        finally:
            super().close()

    def stop(self, timeout: float) -> int:
        """End the lane: drain for up to *timeout* seconds, then stop its thread (or abandon it if it
        is stuck); return how many records could not be delivered. The target stays open."""
        if self._pid != os.getpid():
            return 0  # a forked child's copy: the parent's lane
        with self._cond:
            if self._state != "running":
                return 0
            self._stopping = True
            self._cond.notify_all()
        left = self.drain(timeout)
        self._report_drops(force=True)  # the drops not reported yet: none goes unsaid
        thread = self._thread
        with self._cond:
            if left:
                self._abandon = True
                self.undelivered += left
                self._buffer.clear()
                self._state = "abandoned"
            else:
                self._state = "stopped"
            self._cond.notify_all()
        if left:
            abandon_target(self.target)
            failing = self._backing_off
            if failing is not None:
                stuck = f" (its target kept failing: {failing!r})"
            elif self._current is not None:
                stuck = " (it is stuck in the handler)"
            else:
                stuck = ""
            banner(
                f"lane {self.name} could not deliver {left} records to {self.target!r} by its drain deadline"
                f"{stuck}; they are lost and counted as undelivered"
            )
        elif thread is not None:
            thread.join(1.0)
        if not left:
            self._restore()
        return left

    def __repr__(self) -> str:
        return f"<Lane {self.name} {self.target!r} backlog={self.backlog}>"

    def __reduce__(self) -> Any:
        # A lane crosses a process boundary (to a LogManager) as its target and its options.
        options = {
            "capacity": self.capacity,
            "when_full": self.when_full,
            "retry": self.retry,
            "drain_timeout": self.drain_timeout,
            "block_timeout": self.block_timeout,
            "name": self.name,
        }
        return _rebuild_lane, (self.target, options, self.level, self.filters)


def _rebuild_lane(target: logging.Handler, options: dict[str, Any], level: int, filters: list[Any]) -> Lane:
    lane = Lane(target, **options)
    lane.setLevel(level)
    lane.filters = list(filters)
    return lane


def _stop_all() -> None:
    # Before logging.shutdown (registered earlier, so it runs later): a lane stuck in its target is
    # abandoned here, and its target taken out of the list logging.shutdown would wait on. A lane a
    # running listener holds is the listener's to drain, after the records still on their way.
    for lane in list(_lanes):
        if lane._pid == os.getpid() and not lane._held:  # noqa: SLF001
            lane.stop(lane.drain_timeout)


atexit.register(_stop_all)
