"""Whole batches of rendered lines into file handlers, byte for byte what they write record by record.

The dispatcher asks ``writer_for(handler)`` once, when a listener starts. A handler gets a batch
writer when its class keeps the standard library's (or logfunnel's) emitting seams; what it would
decide per record is then decided here per line, from the same facts:

* ``StreamHandler``, ``FileHandler``: the lines, written in one system call (``_disk.write_lines``).
* ``WatchedFileHandler``: ``reopenIfNeeded()`` once per batch (the batch arrived at one moment), then
  the lines.
* ``RotatingFileHandler``: rollover decided line by line as ``shouldRollover`` decides it (the file's
  position in bytes plus the line's length in characters and a newline, against ``maxBytes``; an
  empty file rolled over only where this interpreter's standard library does), then the handler's
  own ``doRollover()`` (so ``namer``, ``rotator``, ``rotation_filename``, ``rotate`` and an
  overridden ``doRollover`` are called as the standard library calls them).
* ``TimedRotatingFileHandler``: the handler's own ``shouldRollover()`` once per batch (it compares
  the time now, not the records' times, so every record of one batch gets the same answer), its own
  ``doRollover()`` when due, then the lines.
* logfunnel's ``Locked*`` handlers: their own batched writing (``write_rendered``), which decides
  rotation line by line under the file lock, with each record's creation time for the timed one.

A subclass that overrides ``emit``, ``format``, ``handle`` or ``shouldRollover`` (or a ``Locked*``
subclass overriding any of its seams) gets no writer: its records go through it one by one.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Callable

from .handlers._disk import _stateless, losses_of, write_lines
from .handlers._locked import Locked
from .handlers._shared_file import ASCII_SUPERSETS, WIDEST
from .handlers.files import _ROLLS_EMPTY_FILES

__all__ = ["Writer", "needs_created", "writer_for"]

#: Writes a batch: the handler, its lines (without terminators), each record's creation time.
Writer = Callable[[logging.Handler, list[str], list[float]], None]

_Rotating = logging.handlers.RotatingFileHandler
_Timed = logging.handlers.TimedRotatingFileHandler
_Watched = logging.handlers.WatchedFileHandler


def _failure_record(text: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": text, "args": None, "name": "logfunnel"})


def _keeps(cls: type, base: type, seams: tuple[str, ...]) -> bool:
    return all(getattr(cls, name, None) is getattr(base, name, None) for name in seams)


_SEAMS = ("handle", "emit", "format")


def writer_for(handler: logging.Handler) -> Writer | None:
    """The batch writer for *handler*, or None: its records go through it one by one."""
    cls = type(handler)
    if handler.filters:
        return None
    if isinstance(handler, Locked):
        return None if handler._per_record else _write_locked  # noqa: SLF001
    if cls in (logging.StreamHandler, logging.FileHandler):
        return _write_plain
    if not isinstance(handler, logging.FileHandler):
        return None
    if isinstance(handler, _Watched) and _keeps(cls, _Watched, _SEAMS):
        return _write_watched
    if isinstance(handler, _Rotating) and _keeps(cls, _Rotating, (*_SEAMS, "shouldRollover")):
        return _write_rotating
    if isinstance(handler, _Timed) and _keeps(cls, _Timed, (*_SEAMS, "shouldRollover")):
        return _write_timed
    return None


def needs_created(handler: logging.Handler) -> bool:
    """Whether *handler*'s batch writer needs each record's creation time (a timed ``Locked*``)."""
    from .handlers.timed import LockedTimedRotatingFileHandler

    return isinstance(handler, LockedTimedRotatingFileHandler)


def _write_plain(handler: logging.Handler, lines: list[str], created: list[float]) -> None:
    with _BatchErrors(handler, lines):
        _append(handler, lines)


def _write_watched(handler: logging.Handler, lines: list[str], created: list[float]) -> None:
    with _BatchErrors(handler, lines):
        handler.reopenIfNeeded()  # type: ignore[attr-defined]
        _append(handler, lines)


def _write_timed(handler: logging.Handler, lines: list[str], created: list[float]) -> None:
    with _BatchErrors(handler, lines):
        if handler.shouldRollover(_PROBE):  # type: ignore[attr-defined]
            handler.doRollover()  # type: ignore[attr-defined]
        _append(handler, lines)


def _write_rotating(handler: logging.Handler, lines: list[str], created: list[float]) -> None:
    rotating: _Rotating = handler  # type: ignore[assignment]
    with _BatchErrors(handler, lines):
        base = rotating.baseFilename
        if rotating.maxBytes <= 0 or (os.path.exists(base) and not os.path.isfile(base)):
            _append(handler, lines)  # bpo-45401: /dev/null and friends never roll over
            return
        if rotating.stream is None:  # delay was set, or a rollover left it closed
            rotating.stream = rotating._open()  # noqa: SLF001
        stream = rotating.stream
        stream.seek(0, 2)
        position = stream.tell()
        limit = rotating.maxBytes
        terminator = rotating.terminator
        encoding = (stream.encoding or "utf-8").lower()
        errors = stream.errors or "strict"
        if not _stateless(encoding):  # UTF-16 and friends: a BOM once per file, not per line
            _append_measured(handler, lines)
            return
        ascii_ok = encoding in ASCII_SUPERSETS and terminator.isascii()
        extra = len(terminator)
        if ascii_ok and position + WIDEST * (sum(map(len, lines)) + len(lines) * (extra + 1)) < limit:
            # No line of the batch can reach maxBytes (at most WIDEST bytes a character in these
            # encodings, error handlers included): the rule per line would say no to each.
            _append(handler, lines)
            return
        start = 0
        for index, line in enumerate(lines):
            # RotatingFileHandler.shouldRollover: tell() + len("%s\n" % msg) >= maxBytes.
            if (position or _ROLLS_EMPTY_FILES) and position + len(line) + 1 >= limit:
                if index > start:
                    _append(handler, lines[start:index])
                start = index
                rotating.doRollover()
                if rotating.stream is None:  # delay: shouldRollover opens it for the next record
                    rotating.stream = rotating._open()  # noqa: SLF001
                stream = rotating.stream
                stream.seek(0, 2)
                position = stream.tell()
            if ascii_ok and line.isascii():  # O(1) in CPython
                position += len(line) + extra
            else:
                try:
                    position += len((line + terminator).encode(encoding, errors))
                except UnicodeError:
                    pass  # not written: write_lines reports it, and it takes no room
        if start < len(lines):
            _append(handler, lines[start:])


def _append_measured(handler: logging.Handler, lines: list[str]) -> None:
    """Line by line, the position asked of the stream each time, as ``shouldRollover`` asks it: for
    encodings whose bytes per line depend on what came before (a byte-order mark)."""
    rotating: _Rotating = handler  # type: ignore[assignment]
    for line in lines:
        stream = rotating.stream
        if stream is None:
            stream = rotating.stream = rotating._open()  # noqa: SLF001
        stream.seek(0, 2)
        position = stream.tell()
        if (position or _ROLLS_EMPTY_FILES) and position + len(line) + 1 >= rotating.maxBytes:
            rotating.doRollover()
        _append(handler, [line])


def _write_locked(handler: logging.Handler, lines: list[str], created: list[float]) -> None:
    handler.write_rendered(lines, created)  # type: ignore[attr-defined]


_PROBE = logging.makeLogRecord({"msg": "", "name": "logfunnel"})


class _BatchErrors:
    """The handler lock, and what ``Handler.handleError`` would be told if the batch fails."""

    def __init__(self, handler: logging.Handler, lines: list[str]) -> None:
        self.handler = handler
        self.count = len(lines)

    def __enter__(self) -> None:
        self.handler.acquire()

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        try:
            if exc is not None and isinstance(exc, Exception):
                losses_of(self.handler).lose(self.count, "error", episode=False)
                self.handler.handleError(_failure_record(f"a batch of {self.count} lines"))
                return True
            return False
        finally:
            self.handler.release()


def _append(handler: logging.Handler, lines: list[str]) -> None:
    # What StreamHandler.emit does for each record, once for the whole batch: whole lines or none
    # when the disk fills up, losses counted, one unencodable line costing only itself
    # (handlers._disk.write_lines). The caller holds the handler's lock.
    terminator = handler.terminator  # type: ignore[attr-defined]
    stream = handler.stream  # type: ignore[attr-defined]
    if (
        stream is None
        and isinstance(handler, logging.FileHandler)
        and (handler.mode != "w" or not getattr(handler, "_closed", False))  # as FileHandler.emit
    ):
        stream = handler.stream = handler._open()  # noqa: SLF001
    if stream is None:
        return
    kept = write_lines(handler, stream, lines, terminator)
    if kept is None and isinstance(handler, logging.FileHandler):
        handler.stream = None  # dropped after a failed write: reopened with the next batch
