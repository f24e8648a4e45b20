"""File handlers that stay correct when many processes write one file set: the public classes.

Each is the standard library's handler with the same constructor and attributes, made safe with an
exclusive lock on a lock file beside the log (``_lockfile``). Under the lock a writer checks that the
file at the path is still the one it has open and reopens it if not (``_shared_file``), decides
rotation line by line (here, for ``LockedRotatingFileHandler``), and writes whole lines. ``emit()``
writes at once when the lock is free, and otherwise queues the line for a flusher thread, so that
writers never wait for each other (``_locked``).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os

from ._locked import ROTATING_SEAMS, Locked
from ._perms import OwnerSpec
from ._shared_file import WIDEST, Item

__all__ = ["LockedFileHandler", "LockedRotatingFileHandler", "LockedWatchedFileHandler"]

# The standard library's classes, bound once: code that swaps the names in ``logging`` for ours (a
# drop-in test harness, a dictConfig shim) must not turn our calls into calls to ourselves.
_FileHandler = logging.FileHandler
_RotatingFileHandler = logging.handlers.RotatingFileHandler
_WatchedFileHandler = logging.handlers.WatchedFileHandler


OPTIONS_DOC = """
    Options beyond the standard library's, all keyword-only (the names concurrent-log-handler users
    know are accepted too):

    - *chmod*: the exact mode of every file the handler makes (log, backups, lock file), set as each
      is created, so none is ever visible with a wider one.
    - *umask*: instead of *chmod*, the mode ``0o666 & ~umask`` (the process's own umask is untouched).
    - *owner*: ``(user, group)``, names or ids (None leaves one unchanged), given to the log, its
      backups and the lock file with ``os.chown`` (needs the privilege to).
    - *lock_file*: where the lock lives (by default ``.<name>.lock`` beside the log; none for a device
      or a FIFO such as ``/dev/null``); a missing folder is made, and a lock file that cannot be opened
      fails the constructor.
    - *terminator* (or *newline*): what ends each line, as the standard library's ``terminator``
      attribute, on every path.
    - *unicode_error_policy*: ``'ignore'``, ``'replace'`` or ``'strict'``, the same as *errors*.

    ``lines_lost`` counts the lines this process could not write, ``losses.by_reason`` by reason
    (``disk_full``, ``write_error``, ``unencodable``, ``error``). Writes are of whole lines: after a
    failed write (a full disk) the file is cut back to the last whole line; ``handleError`` is called
    once per episode, and the first write that succeeds afterwards adds a WARNING with the count.
"""


def _stdlib_rolls_empty_files() -> bool:
    """Whether this interpreter's RotatingFileHandler.shouldRollover() says yes for an empty file.

    Older releases do; those with gh-116263 (3.13, and later 3.12 patch releases) never roll an empty
    file over. Asked of the standard library itself, with an empty stream and maxBytes 1, so that
    every patch release answers for itself.
    """

    class Probe:
        baseFilename = ""
        maxBytes = 1
        stream = io.StringIO()

        def format(self, record: object) -> str:
            return "x"

    try:
        return bool(_RotatingFileHandler.shouldRollover(Probe(), None))  # type: ignore[arg-type]
    except Exception:
        return False


_ROLLS_EMPTY_FILES = _stdlib_rolls_empty_files()


class _LockedPlain(Locked):
    """The constructor that FileHandler and WatchedFileHandler share, plus the lock's options."""

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        *,
        chmod: int | None = None,
        lock_file: str | None = None,
        umask: int | None = None,
        owner: OwnerSpec | None = None,
        terminator: str | None = None,
        newline: str | None = None,
        unicode_error_policy: str | None = None,
    ) -> None:
        errors = self._options(chmod, umask, owner, errors, unicode_error_policy)
        super().__init__(filename, mode, encoding, delay, errors)  # type: ignore[call-arg]
        self._locked_init(lock_file, terminator=terminator, newline=newline)


class LockedFileHandler(_LockedPlain, _FileHandler):
    """``logging.FileHandler``, safe when several processes append to the same file."""

    __doc__ = (__doc__ or "") + "\n" + OPTIONS_DOC


class LockedWatchedFileHandler(_LockedPlain, _WatchedFileHandler):
    """``logging.handlers.WatchedFileHandler`` for many processes: a file moved away (logrotate) is
    noticed under the lock before every write, and reopened."""

    __doc__ = (__doc__ or "") + "\n" + OPTIONS_DOC


class LockedRotatingFileHandler(Locked, _RotatingFileHandler):
    """``logging.handlers.RotatingFileHandler`` for many processes.

    The size is the file's own, read under the lock; a line that would take the file to *maxBytes*
    starts a new one (a single record larger than that is written alone). With *compress*, backups
    are gzipped in the background (``app.log.1.gz``). As in the standard library, no backup is
    made when *maxBytes* or *backupCount* is zero.
    """

    __doc__ = (__doc__ or "") + OPTIONS_DOC

    _seams = ROTATING_SEAMS

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        maxBytes: int = 0,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        *,
        compress: bool = False,
        chmod: int | None = None,
        lock_file: str | None = None,
        umask: int | None = None,
        owner: OwnerSpec | None = None,
        terminator: str | None = None,
        newline: str | None = None,
        unicode_error_policy: str | None = None,
    ) -> None:
        errors = self._options(chmod, umask, owner, errors, unicode_error_policy)
        _RotatingFileHandler.__init__(self, filename, mode, maxBytes, backupCount, encoding, delay, errors)
        self._locked_init(lock_file, compress, terminator, newline)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """Whether *record* would take the file, as it is now in every process, to maxBytes.

        The standard library's answer, with the size read under the lock: False when maxBytes is 0
        or the path is not a regular file (``/dev/null``); True even when backupCount is 0 (then
        ``doRollover()`` only reopens the file); for an empty file, what this interpreter's own
        ``RotatingFileHandler`` says (3.13 never rolls an empty file over, gh-116263). The
        handler's own batched writing never rolls an empty file over, on any version; a subclass
        that overrides a seam gets the standard library's decisions, record by record.
        """
        if os.path.exists(self.baseFilename) and not os.path.isfile(self.baseFilename):
            return False  # bpo-45401: /dev/null and friends never rotate
        with self._locked():
            size = self._sync_stream()  # opens the file, as the standard library's does with delay
            if self.maxBytes <= 0 or (size == 0 and not _ROLLS_EMPTY_FILES):
                return False
            return size + self._nbytes(self.format(record) + self.terminator) >= self.maxBytes

    def doRollover(self) -> None:
        """Rotate the backups and start a new file, as the standard library's does (with
        backupCount 0, only reopen the file), under the lock."""
        with self._locked():
            self._sync_stream()
            self._rollover()

    def _before_emit(self, record: logging.LogRecord) -> None:
        if self.shouldRollover(record):
            self.doRollover()

    def _write_items(self, items: list[Item], size: int) -> None:
        if self.maxBytes <= 0 or self.backupCount <= 0 or not self._regular:
            self._write_text([text for text, _ in items])
            return
        if self._ascii_ok and size + WIDEST * sum(len(text) for text, _ in items) < self.maxBytes:
            self._write_text([text for text, _ in items])  # no line can reach maxBytes
            return
        chunk: list[str] = []
        for text, _ in items:
            length = self._nbytes(text)
            if size > 0 and size + length >= self.maxBytes:
                chunk = self._write_then_roll(chunk, self._rollover)
                size = 0
            chunk.append(text)
            size += length
        if chunk:
            self._write_text(chunk)

    def _rollover(self) -> None:
        # The standard library's doRollover, run with the lock held by the process that decided.
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.backupCount <= 0:
            self.stream = self._open()  # nothing to keep: the standard library only reopens
            return
        # One directory listing instead of an exists() per possible backup: with a large
        # backupCount the standard library's loop makes thousands of system calls per rollover.
        # A namer may put backups elsewhere: list their folder too, and ask about any other.
        folders = {os.path.dirname(self.rotation_filename(f"{self.baseFilename}.{i}")) for i in (1, 2)}
        folders.add(os.path.dirname(self.baseFilename))
        present = {os.path.join(f, name) for f in folders for name in os.listdir(f or ".")}

        def exists(path: str) -> bool:
            return path in present if os.path.dirname(path) in folders else os.path.exists(path)

        def names(i: int) -> list[str]:
            # With compress, a backup is plain until gzipped (see _compress): shift both forms.
            named = self.rotation_filename(f"{self.baseFilename}.{i}")
            return [named, named[:-3]] if self._compressor is not None and named.endswith(".gz") else [named]

        for i in range(self.backupCount - 1, 0, -1):
            sources = names(i)
            if any(exists(source) for source in sources):
                dests = names(i + 1)
                for dest in dests:
                    if exists(dest):
                        os.remove(dest)
                        present.discard(dest)
                for source, dest in zip(sources, dests):
                    if exists(source):
                        os.rename(source, dest)
                        present.add(dest)
                        present.discard(source)
        for dest in names(1):
            if os.path.exists(dest):
                os.remove(dest)
        dest = self.rotation_filename(self.baseFilename + ".1")
        self.rotate(self.baseFilename, dest)
        self.stream = self._open()
