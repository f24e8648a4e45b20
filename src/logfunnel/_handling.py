"""What logfunnel's own handlers share with each other, apart from the standard library's."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Any

__all__ = ["HANDLER_ERRORS", "UnlockedHandle", "banner", "flush_banners", "reset_banners"]


# The toolkit's own messages are rate limited per kind: a flood of hostile peers, or a handler that
# fails on every record, must not turn stderr into a busy loop of its own (422k lines in 10 s were
# measured with 600 idle peers). At most BANNER_BURST messages of a kind are written per
# BANNER_WINDOW seconds; what was held back is summed up once BANNER_SUMMARY seconds have passed.
#: What a handler (its emit, filters, formatter) may raise that must cost that record only, on a
#: thread of ours: a SystemExit from a "fatal" handler, or a KeyboardInterrupt raised explicitly,
#: would otherwise end the thread silently (a thread reports neither), and every record after it.
HANDLER_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)
BANNER_BURST = 5
BANNER_WINDOW = 1.0
BANNER_SUMMARY = 10.0


class _Kind:
    __slots__ = ("example", "shown", "since", "suppressed", "window_start")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.shown = 0
        self.suppressed = 0
        self.since = now
        self.example = ""


_kinds: dict[str, _Kind] = {}
_NUMBERS = re.compile(r"\d+")
_kinds_lock = threading.Lock()


def _write(message: str) -> None:
    try:
        sys.stderr.write(f"--- logfunnel (pid {os.getpid()}) ---\n{message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _summary(kind: _Kind, now: float) -> str:
    text = f"… (and {kind.suppressed:,} more like it in the last {now - kind.since:.0f} s): {kind.example}"
    kind.suppressed = 0
    return text


def banner(message: str, kind: str | None = None) -> None:
    """The toolkit's own failures go to stderr under a banner, never through the logging it serves.

    Messages of one *kind* (unless given: the message with its numbers left out) are rate
    limited: at most ``BANNER_BURST`` per ``BANNER_WINDOW`` seconds; the rest are counted and
    summed up later ("… (and 4,211 more like it in the last 10 s): <the last one>"), by
    ``flush_banners()`` or by the next message of the kind.
    """
    now = time.monotonic()
    out: list[str] = []
    key = kind or _NUMBERS.sub("#", message)  # "a frame of 10 bytes", "a frame of 20 bytes": one kind
    with _kinds_lock:
        state = _kinds.get(key)
        if state is None:
            if len(_kinds) > 1000:  # kinds are a short fixed list; never let them grow without bound
                _flush_locked(now, out, force=True)
                _kinds.clear()
            state = _kinds[key] = _Kind(now)
        if now - state.window_start >= BANNER_WINDOW:
            state.window_start, state.shown = now, 0
        if state.shown < BANNER_BURST:
            state.shown += 1
            if state.suppressed and now - state.since >= BANNER_SUMMARY:
                out.append(_summary(state, now))
            out.append(message)
        else:
            if not state.suppressed:
                state.since = now
            state.suppressed += 1
            state.example = message
    for text in out:
        _write(text)


def _flush_locked(now: float, out: list[str], force: bool) -> None:
    for state in _kinds.values():
        if state.suppressed and (force or now - state.since >= BANNER_SUMMARY):
            out.append(_summary(state, now))


def flush_banners(force: bool = False) -> None:
    """Write the summary of every kind of message held back for ``BANNER_SUMMARY`` seconds (every
    kind at all with *force*). The listener calls it from its loop, and with *force* when it stops."""
    out: list[str] = []
    with _kinds_lock:
        _flush_locked(time.monotonic(), out, force)
    for text in out:
        _write(text)


def reset_banners() -> None:
    """Forget what was written and held back (for tests: each starts with the rate limit unspent)."""
    with _kinds_lock:
        _kinds.clear()


class UnlockedHandle:
    """``Handler.handle`` without the handler lock around ``emit()``.

    For handlers whose ``emit()`` takes the locks it needs itself, for only as long as it needs them
    (a buffer append, a file lock), so that concurrent callers are not queued behind one another.
    Filters run as in the standard library, including 3.12's filters that return a new record.
    """

    filters: list[Any]

    def handle(self, record: logging.LogRecord) -> Any:
        rv = self.filter(record) if self.filters else True  # type: ignore[attr-defined]
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)  # type: ignore[attr-defined]
        return rv
