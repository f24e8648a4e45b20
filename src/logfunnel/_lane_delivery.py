"""How a lane's thread hands a record to its target, and what it does when that fails.

``Retry`` is the back-off policy. While a lane runs its target, ``_Intercept`` stands in for the
target's ``handleError``, so that a failed emit (the stdlib's handlers report one by calling
``handleError``, never by raising) is noted and retried instead of printed and lost; only once the
lane gives up does the target's own ``handleError`` run, with the last failure. ``_transient`` tells
an outage (worth a retry) from a record that fails by itself (never retried). ``_Delivery`` is the
lane's thread: take the head of the buffer, deliver it with retry and back-off, count it.
``abandon_target`` takes a target stuck in its emit out of ``logging.shutdown``'s list.

Kept apart from ``_lanes`` (the buffer, the caller's side and the lane's life) because this is the
part that runs the user's handler: everything here happens on the lane's own thread, except the
interception's pass-through on other threads.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._checks import check_seconds
from ._handling import HANDLER_ERRORS, banner

if TYPE_CHECKING:
    import collections

    from ._probes import Probe

__all__ = ["NO_RETRY", "Retry", "abandon_target"]


class Retry:
    """How a lane retries a record whose emit failed: back-off from *first_delay* seconds, doubling
    up to *max_delay*, until the record has been failing for *give_up_after* seconds.

    The default (0.1 s doubling to 5 s, for up to 60 s) rides out what a network sink usually
    suffers (a restart, a dropped connection, a short outage) while the buffer holds what arrives
    meanwhile; an outage longer than a minute costs one record per minute in ``failed`` and the
    buffer's overflow in ``dropped``, both counted. ``Retry(give_up_after=0)`` tries each record once.
    """

    __slots__ = ("first_delay", "give_up_after", "max_delay")

    def __init__(self, give_up_after: float = 60.0, first_delay: float = 0.1, max_delay: float = 5.0) -> None:
        for name, value in (
            ("give_up_after", give_up_after),
            ("first_delay", first_delay),
            ("max_delay", max_delay),
        ):
            check_seconds(value, "Retry()", name, zero=True)
        self.give_up_after = float(give_up_after)
        self.first_delay = float(first_delay)
        self.max_delay = float(max(max_delay, first_delay))

    def delay(self, attempt: int) -> float:
        """The pause before retry number *attempt* (1 for the first retry)."""
        return float(min(self.max_delay, self.first_delay * 2 ** min(attempt - 1, 30)))

    def __repr__(self) -> str:
        return (
            f"Retry(give_up_after={self.give_up_after}, first_delay={self.first_delay}, "
            f"max_delay={self.max_delay})"
        )


NO_RETRY = Retry(give_up_after=0.0)


def abandon_target(handler: logging.Handler) -> None:
    """Take *handler* out of ``logging``'s list of handlers that ``logging.shutdown`` flushes and
    closes: it is stuck in its emit, holding its lock, and shutdown would wait on it forever."""
    with _logging_lock():
        refs = logging._handlerList  # type: ignore[attr-defined]  # noqa: SLF001
        for ref in list(refs):
            if ref() is handler:
                refs.remove(ref)


class _LoggingLock:
    def __enter__(self) -> None:
        logging._acquireLock()  # type: ignore[attr-defined]  # noqa: SLF001

    def __exit__(self, *exc_info: object) -> None:
        logging._releaseLock()  # type: ignore[attr-defined]  # noqa: SLF001


def _logging_lock() -> Any:
    # 3.13 dropped _acquireLock()/_releaseLock() for a plain `with logging._lock`.
    if hasattr(logging, "_acquireLock"):
        return _LoggingLock()
    return logging._lock  # type: ignore[attr-defined]  # noqa: SLF001


class _HandleErrorCalled(RuntimeError):
    """What a lane notes when its target called handleError() outside an exception handler."""


def _transient(failure: BaseException) -> bool:
    """Whether an emit that failed may succeed if tried again: the network or the server failed
    (an ``OSError``: refused, reset, timed out, TLS, SMTP; an ``http.client`` error), or the handler
    did not say why. A failure of the record itself (a format naming a missing field, a value that
    cannot be encoded) fails the same way every time: retrying would hold every record behind it."""
    if isinstance(failure, (OSError, _HandleErrorCalled)):
        return True
    client = sys.modules.get("http.client")  # not imported: nothing raised one of its errors
    return client is not None and isinstance(failure, client.HTTPException)


class _Intercept:
    """Stands in for the target's ``handleError`` while a lane runs it: on the lane's own thread a
    call means "this emit failed" (noted, to be retried); on any other thread (the target may also
    sit on a logger used directly) it is the target's own ``handleError``."""

    def __init__(self, lane: _Delivery, original: Any) -> None:
        self.lane = weakref.ref(lane)
        self.original = original

    def __call__(self, record: logging.LogRecord) -> None:
        lane = self.lane()
        if lane is not None and threading.get_ident() == lane._ident:  # noqa: SLF001
            lane._failure = sys.exc_info()[1] or _HandleErrorCalled("the handler called handleError()")  # noqa: SLF001
            return
        self.original(record)


class _Delivery(logging.Handler):
    """The lane's own thread (``Lane`` is one): its loop, and delivery with retry and back-off.

    The state it works on is made by ``Lane._reset``; the caller's side fills the buffer.
    """

    target: logging.Handler
    retry: Retry
    handled: int
    failed: int
    retried: int
    _probe: Probe | None
    _cond: threading.Condition
    _buffer: collections.deque[logging.LogRecord]
    _current: logging.LogRecord | None
    _backing_off: BaseException | None
    _ident: int | None
    _failure: BaseException | None
    _intercept: _Intercept | None
    _stopping: bool
    _abandon: bool

    # -- the lane's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        from . import worker

        self._ident = threading.get_ident()
        # A record made on this thread (a handler that logs) must not loop back through a funnel.
        worker.listener_threads.add(self._ident)
        cond = self._cond
        try:
            while True:
                with cond:
                    while not self._buffer and not self._stopping and not self._abandon:
                        cond.wait()
                    if self._abandon or not self._buffer:
                        return
                    record = self._current = self._buffer.popleft()
                    cond.notify_all()  # room for a blocked caller
                delivered = self._deliver(record)
                with cond:
                    self._current = None
                    if self._abandon:
                        return  # stop() counted this record undelivered: the figures are final
                    if delivered:
                        self.handled += 1
                    else:
                        self.failed += 1
                    cond.notify_all()
        finally:
            worker.listener_threads.discard(self._ident)
            self._ident = None  # its ident may be reused by another thread: no longer ours

    def _deliver(self, record: logging.LogRecord) -> bool | None:
        """Hand *record* to the target, retrying; True once delivered, False when it gave up
        (the target's own handleError has run), None when the lane was abandoned meanwhile."""
        attempt = 0
        first_failure = 0.0
        while True:
            self._failure = None
            probe = self._probe
            try:
                if probe is not None:
                    probe.before()
                self.target.handle(record)
            except HANDLER_ERRORS as exc:
                # A handle() that raises instead of calling handleError() (the stdlib's handlers
                # never do) has a bug, not an outage: retrying would hold the lane for the whole
                # give_up_after on every record. It gets its handleError at once, counted failed.
                self._give_up(record, exc)
                return False
            failure = self._failure
            if failure is None and probe is not None:
                found = probe.after()
                if found is not None:
                    failure, retry = found
                    if not retry:
                        self._give_up(record, failure)
                        return False
            if failure is None:
                return True
            if not _transient(failure):  # the record's own fault (its format): the same every time
                self._give_up(record, failure)
                return False
            if self._abandon:
                return None  # counted undelivered by stop(); its target's handleError is not ours to call
            now = time.monotonic()
            if attempt == 0:
                first_failure = now
            attempt += 1
            if now - first_failure >= self.retry.give_up_after:
                self._give_up(record, failure)
                return False
            self.retried += 1
            with self._cond:
                self._backing_off = failure
                try:
                    self._cond.wait_for(lambda: self._abandon, self.retry.delay(attempt))
                finally:
                    self._backing_off = None
                if self._abandon:
                    return None

    def _give_up(self, record: logging.LogRecord, failure: BaseException) -> None:
        original = self._intercept.original if self._intercept is not None else self.target.handleError
        try:
            raise failure  # so that handleError's traceback shows the last failure
        except BaseException:
            try:
                original(record)
            except Exception as exc:
                banner(f"lane {self.name}: the handler's handleError() failed: {exc!r}")

    def _restore(self) -> None:
        intercept = self._intercept
        if intercept is not None and self.target.__dict__.get("handleError") is intercept:
            del self.target.handleError
        self._intercept = None
