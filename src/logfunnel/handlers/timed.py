"""``LockedTimedRotatingFileHandler``: timed rotation that many processes agree on.

The processes share one schedule, kept in ``.<name>.schedule`` beside the log and read under the lock
at every batch: whichever first writes a line from a new interval rotates, for everyone, including
processes that start later or slept across the boundary. A line goes to the file of the interval it
was logged in, and no backup is ever overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import math
import os
import re
import stat
import time
from typing import Any

from ._compress import append_file, append_text
from ._locked import ROTATING_SEAMS, Locked
from ._lockfile import LockFile, sidecar
from ._perms import OwnerSpec
from ._shared_file import Item
from .files import OPTIONS_DOC

__all__ = ["LockedTimedRotatingFileHandler"]

_TimedRotatingFileHandler = logging.handlers.TimedRotatingFileHandler  # bound once, as in files.py


class LockedTimedRotatingFileHandler(Locked, _TimedRotatingFileHandler):
    """``logging.handlers.TimedRotatingFileHandler`` for many processes.

    The processes share one schedule, kept beside the lock: whichever first writes a line from a new
    interval rotates, for everyone, including processes that start later or slept across the
    boundary. A line goes to the file of the interval it was logged in. No backup is ever overwritten:
    if one exists already for an interval, the file is appended to it.

    With *maxBytes*, the file is also rotated when a line would take it to that size, whichever comes
    first: the backups of one interval are then numbered (``app.log.2026-01-31.1``, ``.2``, ...).
    """

    __doc__ = (__doc__ or "") + OPTIONS_DOC

    _seams = (*ROTATING_SEAMS, "computeRollover", "getFilesToDelete")

    def __init__(
        self,
        filename: str | os.PathLike[str],
        when: str = "h",
        interval: int = 1,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        utc: bool = False,
        atTime: Any = None,
        errors: str | None = None,
        *,
        compress: bool = False,
        chmod: int | None = None,
        lock_file: str | None = None,
        maxBytes: int = 0,
        umask: int | None = None,
        owner: OwnerSpec | None = None,
        terminator: str | None = None,
        newline: str | None = None,
        unicode_error_policy: str | None = None,
    ) -> None:
        errors = self._options(chmod, umask, owner, errors, unicode_error_policy)
        self.maxBytes = maxBytes
        _TimedRotatingFileHandler.__init__(
            self, filename, when, interval, backupCount, encoding, delay, utc, atTime, errors
        )
        self._locked_init(lock_file, compress, terminator, newline)
        # The shared schedule belongs to this log, even where several logs share one lock file
        # (a device or a FIFO, never rotated, keeps it in memory).
        self._schedule = LockFile(sidecar(self.baseFilename, "schedule"), self._perms)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """The standard library's answer (the time now against the next rollover time; never for a
        file that is not a regular one), with the next rollover time taken from the shared schedule;
        with *maxBytes*, also True when *record* would take the file to that size."""
        with self._locked():
            self._adopt_schedule()
            if self.maxBytes > 0 and os.path.isfile(self.baseFilename):  # size too, whichever first
                size = self._sync_stream()
                if size > 0 and size + self._nbytes(self.format(record) + self.terminator) >= self.maxBytes:
                    return True
        return bool(_TimedRotatingFileHandler.shouldRollover(self, record))

    def doRollover(self) -> None:
        """Rotate now, for every process sharing the schedule, under the lock."""
        with self._locked():
            self._sync_stream()
            self._rollover(time.time())

    def _before_emit(self, record: logging.LogRecord) -> None:
        if self.shouldRollover(record):
            self.doRollover()

    def getFilesToDelete(self) -> list[str]:
        """The oldest backups beyond backupCount. With compression the names end in .gz, and with
        *maxBytes* an interval's backups are numbered, which the standard library's matching does not
        accept (on every version), so they are matched here."""
        if (not self.compress and self.maxBytes <= 0) or callable(self.namer):
            return super().getFilesToDelete()
        folder = os.path.dirname(self.baseFilename)
        pattern = re.compile(self._backup_pattern() + r"(?:\.gz)?")
        found = [
            (m.group(1), int(m.group(2) or 0), m.group())
            for m in map(pattern.fullmatch, os.listdir(folder or "."))
            if m
        ]
        backups = [entry for *_, entry in sorted(found)]  # by interval, then number (.2 before .10)
        if len(backups) <= self.backupCount:
            return []
        return [os.path.join(folder, entry) for entry in backups[: len(backups) - self.backupCount]]

    def _backup_pattern(self) -> str:
        """The names of this handler's plain backups: the suffix's stamp, and a number (maxBytes)."""
        digits = {"%Y": r"\d{4}"}
        stamp = re.sub(r"%[YmdHMS]", lambda m: digits.get(m.group(), r"\d{2}"), re.escape(self.suffix))
        return re.escape(os.path.basename(self.baseFilename) + ".") + f"({stamp})" + r"(?:\.(\d+))?"

    def _exists(self, dest: str) -> str | None:
        """The backup at *dest*, compressed or (until it is) plain, if there is one."""
        for path in (dest, dest[:-3]) if self.compress and dest.endswith(".gz") else (dest,):
            if os.path.exists(path):
                return path
        return None

    def _free_name(self, raw: str) -> str:
        """With *maxBytes*: the backup name for *raw* if free, or else the first free numbered one."""
        dest = self.rotation_filename(raw)
        number = 0
        while self._exists(dest) is not None:
            number += 1
            dest = self.rotation_filename(f"{raw}.{number}")
        return dest

    def _write_items(self, items: list[Item], size: int) -> None:
        # Another process may have rotated since our last batch: take the schedule as it is now, or
        # a line from the interval it closed would land in the new file.
        self._adopt_schedule()
        sized = self.maxBytes > 0 and self._regular
        chunk: list[str] = []
        for text, created in items:
            if created >= self.rolloverAt:
                if chunk:
                    self._write_text(chunk)
                    chunk = []
                self._adopt_schedule()
                if created >= self.rolloverAt:
                    self._rollover(created)
                    size = 0
            elif created < self.rolloverAt - self.interval and self._write_late(text, created):
                continue
            if sized:  # rotate on size too, whichever comes first (as RotatingFileHandler decides)
                length = self._nbytes(text)
                if size > 0 and size + length >= self.maxBytes:
                    chunk = self._write_then_roll(chunk, self._size_rollover)
                    size = 0
                size += length
            chunk.append(text)
        if chunk:
            self._write_text(chunk)

    def _write_late(self, text: str, created: float) -> bool:
        """A line whose interval was rotated while it waited (in our queue, or another process
        rotated first) joins the backup of its own interval, if that backup still exists."""
        periods = math.ceil((self.rolloverAt - created) / self.interval)
        start = self.rolloverAt - periods * self.interval
        time_tuple = time.gmtime(start) if self.utc else time.localtime(start)
        dest = self._exists(
            self.rotation_filename(self.baseFilename + "." + time.strftime(self.suffix, time_tuple))
        )
        if dest is None:
            return False
        try:
            data = text.encode(self.stream.encoding, self.stream.errors or "strict")
        except UnicodeError:
            return False  # written, or counted lost, with the others
        append_text(dest, data)
        return True

    def _adopt_schedule(self) -> None:
        """Take the shared next rollover time, or publish ours if we are the first."""
        shared = self._schedule.read_state()
        if not shared.isdigit():
            self._schedule.write_state(str(int(self.rolloverAt)))
        elif int(shared) != self.rolloverAt:  # new to us: at start, or another process rotated
            self.rolloverAt = self._unless_stale(int(shared))

    def _unless_stale(self, shared: int) -> int:
        """*shared*, or an earlier rollover time if the log's last write came before the interval
        *shared* closes (the file was written in an earlier interval, or *when* changed since the
        schedule was written): then the standard library's rule applies, the time computed from the
        file's modification time, and it is published for every process."""
        try:
            st = os.stat(self.baseFilename)
        except OSError:
            return shared
        if st.st_size == 0 or not stat.S_ISREG(st.st_mode):
            return shared
        due = int(self.computeRollover(int(st.st_mtime)))
        # A schedule kept across a DST change may be an hour off the computed one; a second covers
        # the file system's coarse clock. Either way the file belongs to the current interval.
        local_days = (self.when == "MIDNIGHT" or self.when.startswith("W")) and not self.utc
        if due + (3600 if local_days else 1) >= shared:
            return shared
        self._schedule.write_state(str(due))
        return due

    def _rollover(self, now: float) -> None:
        # The standard library's doRollover with the lock held, keyed by the shared schedule.
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        current = int(now)
        start = self.rolloverAt - self.interval
        time_tuple = time.gmtime(start) if self.utc else time.localtime(start)
        if not self.utc:
            dst_now = time.localtime(current)[-1]
            dst_then = time_tuple[-1]
            if dst_now != dst_then:
                time_tuple = time.localtime(start + (3600 if dst_now else -3600))
        raw = self.baseFilename + "." + time.strftime(self.suffix, time_tuple)
        # With maxBytes, an interval's backups are numbered; else one backup per interval, appended to.
        dest = self._free_name(raw) if self.maxBytes > 0 else self.rotation_filename(raw)
        self._move_to_backup(dest)
        self.stream = self._open()
        following = self.computeRollover(current)
        while following <= current:
            following += self.interval
        if (self.when == "MIDNIGHT" or self.when.startswith("W")) and not self.utc:
            dst_at_rollover = time.localtime(following)[-1]
            if time.localtime(current)[-1] != dst_at_rollover:
                following += -3600 if not dst_at_rollover else 3600
        self.rolloverAt = following
        self._schedule.write_state(str(int(following)))

    def _size_rollover(self) -> None:
        # maxBytes reached within an interval: a numbered backup of the interval; the schedule stays.
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        start = self.rolloverAt - self.interval
        time_tuple = time.gmtime(start) if self.utc else time.localtime(start)
        self._move_to_backup(
            self._free_name(self.baseFilename + "." + time.strftime(self.suffix, time_tuple))
        )
        self.stream = self._open()

    def _move_to_backup(self, dest: str) -> None:
        """The file becomes the backup *dest* (or is appended to it: never overwrite a backup); the
        oldest backups beyond backupCount go."""
        if os.path.exists(self.baseFilename) and os.path.getsize(self.baseFilename) > 0:
            existing = self._exists(dest)
            if existing is not None:
                append_file(self.baseFilename, existing)
                if self._compressor is not None and not existing.endswith(".gz"):
                    self._compressor.submit(existing)  # it grew: its identity is a new one
            else:
                self.rotate(self.baseFilename, dest)
        if self.backupCount > 0:
            for old in self.getFilesToDelete():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old)
