"""One process's side of a log file that many processes share: the file itself, under the lock.

``SharedFile`` holds the lock's options and the lock file, and everything that happens while the lock
is held: checking that the file at the path is still the one open here (another process may have
rotated it, or logrotate moved it) and reopening it if not, measuring lines in bytes, writing whole
lines, and the compression-aware ``rotation_filename()`` and ``rotate()``. How records get here (the
queue, the flusher thread, fork and exit) is ``_locked.Locked``, the class above this one.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._handling import UnlockedHandle
from ._compress import Compressor
from ._disk import Losses, write_lines
from ._lockfile import LockFile, sidecar
from ._perms import OwnerSpec, Perms, resolve_owner

__all__ = ["ASCII_SUPERSETS", "WIDEST", "Item", "SharedFile"]

_FileHandler = logging.FileHandler  # bound once (see files.py)
_BaseRotatingHandler = logging.handlers.BaseRotatingHandler

#: Encodings in which an ASCII text takes one byte a character.
ASCII_SUPERSETS = {"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1", "cp1252"}
#: The most bytes one character can take in an ASCII superset, error handlers included
#: (xmlcharrefreplace writes U+10FFFF as "&#1114111;").
WIDEST = 10
Item = tuple[str, float]  # a formatted line with its terminator, and the record's creation time


class SharedFile(UnlockedHandle):
    """The lock's options, the lock file, and the file as it is written with the lock held."""

    # Provided by logging.FileHandler and friends:
    baseFilename: str
    mode: str
    stream: Any
    terminator: str
    lock: Any
    formatter: logging.Formatter | None
    filters: list[Any]
    encoding: str | None
    errors: str | None
    chmod: int | None  # set by each constructor (_options), before the standard library's opens the file
    _perms: Perms
    _closed: bool  # set by Handler.close()
    # Made for each process by Locked._reset_process (see there):
    losses: Losses
    _writing: threading.Lock
    _holder: int | None

    def _options(
        self,
        chmod: int | None,
        umask: int | None,
        owner: OwnerSpec | None,
        errors: str | None,
        unicode_error_policy: str | None,
    ) -> str | None:
        """Keep the options that the standard library's constructor needs already (it opens the file);
        return the *errors* to give it."""
        caller = f"{type(self).__name__}()"
        self.chmod = chmod
        self._perms = Perms(chmod, umask, resolve_owner(owner, caller))
        if unicode_error_policy is None:
            return errors
        if unicode_error_policy not in ("ignore", "replace", "strict"):
            raise ValueError(
                f"{caller} expected unicode_error_policy 'ignore', 'replace' or 'strict', "
                f"got {unicode_error_policy!r}"
            )
        if errors is not None and errors != unicode_error_policy:
            raise ValueError(
                f"{caller} got errors={errors!r} and unicode_error_policy={unicode_error_policy!r}: "
                "they are the same option, give one"
            )
        return unicode_error_policy

    def _file_init(
        self, lock_file: str | None, compress: bool, terminator: str | None, newline: str | None
    ) -> None:
        """The options kept after the standard library's constructor, and the lock file, opened.
        *terminator* or *newline*: the standard library's name for it, or concurrent-log-handler's."""
        if terminator is not None and newline is not None and terminator != newline:
            raise ValueError(
                f"{type(self).__name__}() got terminator={terminator!r} and newline={newline!r}: "
                "they are the same option, give one"
            )
        terminator = terminator if terminator is not None else newline
        if terminator is not None:
            self.terminator = terminator
        self.compress = compress
        self.lock_file = os.path.abspath(lock_file) if lock_file else sidecar(self.baseFilename, "lock")
        self._lockfile = LockFile(self.lock_file, self._perms)
        if self.lock_file is not None:
            # A lock file in a folder that does not exist: the folder is made, here, and the lock file
            # opened, so that a path this process cannot use fails now, with its reason, instead of
            # losing every record later (concurrent-log-handler's own tests: all 10,000 lost).
            try:
                self._perms.make_folder(os.path.dirname(self.lock_file))
                self._lockfile.acquire(blocking=False)
                self._lockfile.release()
            except OSError as exc:
                raise type(exc)(
                    exc.errno,
                    f"{type(self).__name__}() could not open its lock file {self.lock_file!r}: "
                    f"{exc.strerror}; give lock_file= a path this process may create and write",
                ) from exc
        self._compressor = self._make_compressor() if compress else None

    def _make_compressor(self) -> Compressor:
        return Compressor(self.baseFilename, self._locked, self._perms, self._backup_pattern())

    def _backup_pattern(self) -> str:
        """A regular expression for the names of this handler's uncompressed backups."""
        return re.escape(os.path.basename(self.baseFilename)) + r"\.\d+"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's writer lock and the file lock; re-entrant, for a seam that calls another
        (an overridden ``emit()`` calling ``shouldRollover()``, which locks too)."""
        if self._holder == threading.get_ident():
            yield
            return
        with self._writing:
            self._lockfile.acquire()
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
                self._lockfile.release()

    # -- opening --------------------------------------------------------------------------------------

    def _open(self) -> Any:
        # Made with its mode and owner from the start (see _perms), never visible with the umask's.
        self._perms.create(self.baseFilename)
        stream = _FileHandler._open(self)  # type: ignore[arg-type]  # noqa: SLF001
        st = os.fstat(stream.fileno())
        self._ident = (st.st_dev, st.st_ino)
        self._regular = stat.S_ISREG(st.st_mode)  # /dev/null and friends are never rotated
        self.dev, self.ino = self._ident  # as WatchedFileHandler has them
        encoding = (stream.encoding or "utf-8").lower()
        self._ascii_ok = encoding in ASCII_SUPERSETS
        return stream

    def _sync_stream(self) -> int:
        """Reopen if the file at our path is not the one we have open; return its size."""
        try:
            st = os.stat(self.baseFilename)
        except FileNotFoundError:
            st = None
        if self.stream is None or st is None or (st.st_dev, st.st_ino) != self._ident:
            if self.stream is not None:
                with contextlib.suppress(Exception):
                    self.stream.close()
            self.stream = self._open()
            return os.fstat(self.stream.fileno()).st_size
        return st.st_size

    def reopenIfNeeded(self) -> None:
        with self._locked():
            self._sync_stream()

    # -- writing (the file lock is held) ---------------------------------------------------------------

    def _write_items(self, items: list[Item], size: int) -> None:
        """Write *items* to the file, whose current size is *size*."""
        self._write_text([text for text, _ in items])

    def _write_text(self, lines: list[str]) -> None:
        # Whole lines or none (see _disk): a disk that fills up mid-write leaves no fragment behind.
        if self.stream is None:  # dropped after a failed write: reopen
            self.stream = self._open()
        self.stream = write_lines(self, self.stream, lines)  # type: ignore[arg-type]

    def _write_then_roll(self, chunk: list[str], rollover: Callable[[], None]) -> list[str]:
        """Write *chunk*, the lines that came before a rollover, then *rollover()*; return the next,
        empty, chunk (the rotating handlers' size rule, a line that would reach maxBytes)."""
        if chunk:
            self._write_text(chunk)
        rollover()
        return []

    def _nbytes(self, text: str) -> int:
        if self._ascii_ok and text.isascii():
            return len(text)
        if self.stream is None:  # dropped after a failed write (see _disk): reopen
            self.stream = self._open()
        try:
            return len(text.encode(self.stream.encoding, self.stream.errors or "strict"))
        except UnicodeError:  # written (or counted lost) on its own later; its size is a guess here
            return len(text.encode(self.stream.encoding, "replace"))

    def rotation_filename(self, default_name: str) -> str:
        name: str = _BaseRotatingHandler.rotation_filename(self, default_name)  # type: ignore[arg-type]
        if self.compress and not name.endswith(".gz"):
            name += ".gz"
        return name

    def rotate(self, source: str, dest: str) -> None:
        if self._compressor is not None and not callable(getattr(self, "rotator", None)):
            # The backup keeps its plain name until it is gzip (see _compress): a name ending in
            # .gz never holds plain text, even when compressing fails (a full disk).
            plain = dest[:-3] if dest.endswith(".gz") else dest
            _BaseRotatingHandler.rotate(self, source, plain)  # type: ignore[arg-type]
            self._compressor.submit(plain)
            return
        _BaseRotatingHandler.rotate(self, source, dest)  # type: ignore[arg-type]
