"""Writing whole lines when the disk (or the data) misbehaves, and counting the lines that could not be.

A write that fails part way (the disk filled up: ``ENOSPC``) leaves a fragment that the next writer's
line would be glued onto. Lines are therefore encoded here and written with ``os.write`` on the
stream's descriptor: after a failure, the file is cut back (``os.ftruncate``) to the end of the last
whole line written, and the lines that did not make it are counted, by reason, in a ``Losses``. The
handler's ``handleError`` is called once per episode, not once per line; the first write that succeeds
afterwards writes a WARNING saying how many lines were lost. A line the encoding cannot take costs only
itself.

Encodings with a state (a byte order mark, shift sequences) are left to the stream itself; then the
file is cut back to its size before the batch, and the stream, whose buffer may hold the rest, is
dropped and reopened.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import io
import logging
import os
import stat
import threading
import weakref
from typing import Any

__all__ = ["Losses", "losses_of", "write_lines"]

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_STATEFUL = ("utf-16", "utf-32", "utf-8-sig", "iso2022", "utf-7", "hz")


class Losses:
    """Lines a handler could not write: ``total``, ``by_reason`` (``disk_full``, ``unencodable``,
    ``write_error``, ``error``), and the current episode of failed writes, if one is under way."""

    def __init__(self) -> None:
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self.episode = 0  # lines lost since the last write that succeeded
        self.episode_reason = ""
        self._lock = threading.Lock()

    def lose(self, count: int, reason: str, episode: bool = True) -> bool:
        """Count *count* lines lost; return whether they begin an episode (report it, then)."""
        with self._lock:
            self.total += count
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count
            if not episode:
                return True
            first = self.episode == 0
            self.episode += count
            if first:
                self.episode_reason = reason
            return first

    def recovered(self) -> tuple[int, str]:
        """After a write that succeeded: the lines the episode that just ended lost (0 if none was
        under way), and its reason; the episode is over, unless ``resume()`` says otherwise."""
        with self._lock:
            count, reason, self.episode = self.episode, self.episode_reason, 0
            return count, reason

    def resume(self, count: int, reason: str) -> None:
        """The warning that ends an episode could not be written either: the episode goes on."""
        with self._lock:
            if not self.episode:
                self.episode_reason = reason
            self.episode += count

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"lines_lost": self.total, "by_reason": dict(self.by_reason)}


_plain_losses: weakref.WeakKeyDictionary[logging.Handler, Losses] = weakref.WeakKeyDictionary()
_plain_lock = threading.Lock()


def losses_of(handler: logging.Handler) -> Losses:
    """The ``Losses`` of *handler*: its own ``losses`` (the locked handlers), or one kept here for a
    standard library handler that a listener writes to."""
    own = getattr(handler, "losses", None)
    if isinstance(own, Losses):
        return own
    with _plain_lock:
        found = _plain_losses.get(handler)
        if found is None:
            found = _plain_losses[handler] = Losses()
        return found


@functools.lru_cache(maxsize=64)
def _stateless(encoding: str) -> bool:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    return not name.startswith(_STATEFUL)


def _failure(text: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": text, "levelno": logging.ERROR, "levelname": "ERROR"})


def _reason(exc: OSError) -> str:
    return "disk_full" if exc.errno in _DISK_FULL else "write_error"


def _encode(
    handler: logging.Handler, lines: list[str], end: str, encoding: str, errors: str, losses: Losses
) -> tuple[list[str], bytes]:
    """The lines that can be encoded, and their bytes; each one that cannot is reported and counted."""
    try:
        return lines, (end.join(lines) + end if end else "".join(lines)).encode(encoding, errors)
    except UnicodeError:  # one line the encoding cannot take must not cost the others
        pass
    kept: list[str] = []
    parts: list[bytes] = []
    for line in lines:
        try:
            parts.append((line + end).encode(encoding, errors))
        except UnicodeError:
            losses.lose(1, "unencodable", episode=False)
            handler.handleError(_failure(line))
            continue
        kept.append(line)
    return kept, b"".join(parts)


def write_lines(handler: logging.Handler, stream: Any, lines: list[str], end: str = "") -> Any:
    """Write *lines*, each followed by *end* (their terminator, unless they carry it), to *stream*:
    each line whole or not at all, losses counted.

    Returns the stream to keep using: *stream*, or None when it had to be dropped (the caller
    reopens it). The caller holds whatever lock keeps other writers out of the file.
    """
    losses = losses_of(handler)
    if type(stream) is not io.TextIOWrapper:  # a wrapper's own write() must run (colour, capture)
        return _write_through_stream(handler, stream, [line + end for line in lines], losses)
    try:
        fd = stream.fileno()
        encoding = stream.encoding
        errors = stream.errors or "strict"
    except (AttributeError, OSError, ValueError):
        fd = -1
        encoding = errors = ""
    if fd < 0 or not _stateless(encoding):
        return _write_through_stream(handler, stream, [line + end for line in lines], losses)
    lines, data = _encode(handler, lines, end, encoding, errors, losses)
    if not data:
        return stream
    stream.flush()  # anything written through the stream itself goes first (a seam of a subclass)
    try:
        _write_all(fd, data)
    except OSError as exc:
        _cut_back(handler, fd, [line + end for line in lines], encoding, errors, exc, losses)
        return stream
    if losses.episode:
        _report_recovery(handler, fd, encoding, errors, losses)
    return stream


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of *data* is written; an OSError carries how much was (``written``)."""
    done = 0
    view = memoryview(data)
    while done < len(data):
        try:
            done += os.write(fd, view[done:])
        except InterruptedError:
            continue
        except OSError as exc:
            exc.written = done  # type: ignore[attr-defined]
            raise


def _truncate(fd: int, excess: int) -> None:
    """Cut the last *excess* bytes off the file open on *fd* (a fragment of a failed write)."""
    if excess <= 0:
        return
    try:
        size = os.fstat(fd).st_size - excess
        os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)  # (for a file not opened for appending)
    except OSError:
        pass


def _own_file(handler: logging.Handler, fd: int) -> bool:
    """Whether a torn line may be cut off *fd*: a FileHandler's file, or a regular file a
    StreamHandler was given (``StreamHandler(open(path, "a"))``); never stdout or stderr, which
    other processes may be writing to (a terminal, a pipe, or a file they were redirected to)."""
    if isinstance(handler, logging.FileHandler):
        return True
    if fd in (1, 2):
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _cut_back(
    handler: logging.Handler,
    fd: int,
    lines: list[str],
    encoding: str,
    errors: str,
    exc: OSError,
    losses: Losses,
) -> None:
    """After a write failed part way: keep the whole lines written, cut the file back to the end of
    the last one, count the others lost; report the failure if it begins an episode."""
    done: int = getattr(exc, "written", 0)
    kept_bytes = kept_lines = 0
    if done:
        for line in lines:
            length = len(line.encode(encoding, errors))
            if kept_bytes + length > done:
                break
            kept_bytes += length
            kept_lines += 1
    if _own_file(handler, fd):
        _truncate(fd, done - kept_bytes)
    if losses.lose(len(lines) - kept_lines, _reason(exc)):
        try:
            raise exc
        except OSError:
            handler.handleError(_failure(f"{len(lines) - kept_lines} lines not written"))


def _warning(handler: logging.Handler, count: int, reason: str) -> str:
    """The line that ends an episode: how many lines it cost, formatted as the handler's own."""
    plural = "line was" if count == 1 else "lines were"
    if reason == "disk_full":
        message = f"{count} {plural} lost while the disk was full"
    else:
        message = f"{count} {plural} lost while the log could not be written"
    record = logging.LogRecord("logfunnel", logging.WARNING, __file__, 0, message, None, None)
    return handler.format(record) + getattr(handler, "terminator", "\n")


def _report_recovery(handler: logging.Handler, fd: int, encoding: str, errors: str, losses: Losses) -> None:
    count, reason = losses.recovered()
    if not count:
        return
    try:
        _write_all(fd, _warning(handler, count, reason).encode(encoding, "replace"))
    except OSError as exc:
        if isinstance(handler, logging.FileHandler):
            _truncate(fd, getattr(exc, "written", 0))
        losses.resume(count, reason)
    except Exception:
        losses.resume(count, reason)


def _write_through_stream(handler: logging.Handler, stream: Any, lines: list[str], losses: Losses) -> Any:
    """The stream's own write, for a stream without a descriptor or an encoding with a state."""
    fd = -1
    size = -1
    with contextlib.suppress(Exception):
        fd = stream.fileno()
        stream.flush()
        size = os.fstat(fd).st_size
    try:
        try:
            stream.write("".join(lines))
        except UnicodeError:  # one line the encoding cannot take must not cost the others
            for line in lines:
                try:
                    stream.write(line)
                except UnicodeError:
                    losses.lose(1, "unencodable", episode=False)
                    handler.handleError(_failure(line))
        stream.flush()
    except OSError as exc:
        if losses.lose(len(lines), _reason(exc)):
            handler.handleError(_failure(f"{len(lines)} lines not written"))
        if fd < 0 or size < 0 or not isinstance(handler, logging.FileHandler):
            return stream
        # The stream's buffer may still hold part of the batch: cut the file back, and drop the
        # stream without flushing it (kept, so that its finalizer never closes a reused descriptor).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
            os.close(fd)
        _dropped.append(stream)
        return None
    if losses.episode:
        count, reason = losses.recovered()
        if count:
            try:
                stream.write(_warning(handler, count, reason))
                stream.flush()
            except Exception:
                losses.resume(count, reason)
    return stream


_dropped: list[Any] = []
