"""File handlers that stay correct when many processes write one file set.

Each is the standard library's handler with the same constructor and attributes, made safe with an
exclusive lock on a lock file beside the log (``fcntl.flock`` on a descriptor kept open: it blocks in
the kernel without polling, and a child reopens it after ``fork``). Under the lock a writer checks that
the file at the path is still the one it has open (another process may have rotated it, or logrotate
moved it) and reopens it if not, decides rotation line by line, and writes whole lines.

``emit()`` formats the record and, when the lock is free, writes at once, so a single process sees its
line in the file as soon as the call returns. When another process holds the lock, the line waits in a
short queue that a flusher thread of the handler writes, with everything else that gathered, as soon
as the lock is free: writers never wait for each other, and under contention the lock is taken once
per batch instead of once per line. ERROR records and ``flush()`` wait until they are written.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import logging.handlers
import multiprocessing.util
import os
import re
import stat
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .. import _render
from .._exit import at_exit
from .._handling import UnlockedHandle, banner
from ._compress import Compressor
from ._disk import Losses, write_lines
from ._perms import OwnerSpec, Perms, resolve_owner

__all__ = ["LockedFileHandler", "LockedRotatingFileHandler", "LockedWatchedFileHandler"]

# The standard library's classes, bound once: code that swaps the names in ``logging`` for ours (a
# drop-in test harness, a dictConfig shim) must not turn our calls into calls to ourselves.
_FileHandler = logging.FileHandler
_BaseRotatingHandler = logging.handlers.BaseRotatingHandler
_RotatingFileHandler = logging.handlers.RotatingFileHandler
_WatchedFileHandler = logging.handlers.WatchedFileHandler

# The standard library's methods that a subclass may override, and that then decide how a record is
# written (see _Locked._locked_init). namer and rotator are attributes, honoured on either path.
_PLAIN_SEAMS = ("emit", "format")
_ROTATING_SEAMS = (*_PLAIN_SEAMS, "shouldRollover", "doRollover", "rotation_filename", "rotate")

_ASCII_SUPERSETS = {"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1", "cp1252"}
_STATE_SIZE = 64
#: The most bytes one character can take in an ASCII superset, error handlers included
#: (xmlcharrefreplace writes U+10FFFF as "&#1114111;").
_WIDEST = 10
Item = tuple[str, float]  # a formatted line with its terminator, and the record's creation time


class _LockFile:
    """An exclusive lock between processes, and a few bytes of state they share (the timed schedule).

    Without a *path* (a log that is a device or a FIFO), it locks nothing and keeps the state here.
    """

    def __init__(self, path: str | None, perms: Perms) -> None:
        self.path = path
        self.perms = perms
        self._fd = -1
        self._pid = 0
        self._state = ""

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            # A fork child needs an open file description of its own: a flock belongs to the
            # description, which the child shares with its parent until it opens the file again.
            # Closing the inherited copy leaves the parent's lock alone.
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            assert self.path is not None
            self._fd = self.perms.open_lock(self.path)  # with chmod, umask and owner applied
            self._pid = os.getpid()
        return self._fd

    def acquire(self, blocking: bool = True) -> bool:
        if self.path is None:
            return True
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd >= 0:  # (closed while held, by a close() inside a seam: closing released it)
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read_state(self) -> str:
        if self.path is None:
            return self._state
        return os.pread(self._descriptor(), _STATE_SIZE, 0).decode("ascii", "replace").strip()

    def write_state(self, text: str) -> None:
        if self.path is None:
            self._state = text
            return
        os.pwrite(self._descriptor(), text.encode("ascii").ljust(_STATE_SIZE), 0)

    def close(self) -> None:
        if self._pid == os.getpid() and self._fd >= 0:
            os.close(self._fd)
        self._fd, self._pid = -1, 0


_handlers: weakref.WeakSet[_Locked] = weakref.WeakSet()
_orphans: list[Any] = []  # streams inherited across fork and closed under them


class _Locked(UnlockedHandle):
    """What the four handlers share: the lock, the queue, the flusher, reopening, compression."""

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

    _seams: tuple[str, ...] = _PLAIN_SEAMS

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

    def _locked_init(
        self,
        chmod: int | None,
        lock_file: str | None,
        compress: bool = False,
        terminator: str | None = None,
    ) -> None:
        if terminator is not None:
            self.terminator = terminator
        self.compress = compress
        folder, name = os.path.split(self.baseFilename)
        self.lock_file: str | None = os.path.join(folder, f".{name}.lock")
        if lock_file:
            self.lock_file = os.path.abspath(lock_file)
        elif _is_special(self.baseFilename):
            # /dev/null, /dev/stdout, a FIFO: never rotated, each batch one write(), and the
            # folder (/dev) is no place for a lock file of ours, nor writable for most users.
            self.lock_file = None
        self._lockfile = _LockFile(self.lock_file, self._perms)
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
        self._renderer: tuple[Any, _render.Renderer | None] = (object(), None)
        # A subclass that overrides one of the standard library's seams gets the standard library's
        # emit: one record at a time, each seam called where the standard library calls it, under
        # the file lock. Others get the batched path, which decides rotation itself, line by line.
        # (Decided once here: a class check, not a cost per record.)
        self._per_record = _overrides(type(self), self._seams)
        self._reset_process()
        _handlers.add(self)
        multiprocessing.util.register_after_fork(self, _Locked._mp_child)
        if self._compressor is not None:
            self._compressor.sweep()

    def _reset_process(self) -> None:
        # In __init__ and in a fork child: the parent's queue, thread and lock state are not ours.
        self._pid = os.getpid()
        self._pending: list[Item] = []
        self._writing = threading.Lock()  # held by whichever of this process's threads writes
        self._holder: int | None = None  # the thread that holds _writing and the file lock
        self._wake = threading.Condition(threading.Lock())
        self._woken = False
        self._flusher: threading.Thread | None = None
        self._closing = False
        self._exit_hooked = False  # registered at the first line this process writes
        self._sync = False  # in a raw os.fork() child: every line written before emit() returns
        self.losses = Losses()  # this process's lines that could not be written, by reason

    def _after_fork_in_child(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            # Drop the parent's stream without flushing (whatever its buffer holds is the parent's),
            # and keep the object, so that its finalizer never closes a reused descriptor number.
            with contextlib.suppress(Exception):
                os.close(stream.fileno())
            _orphans.append(stream)
            self.stream = None
        self._reset_process()
        # A raw os.fork() child leaves through os._exit() with no exit hook of ours run, so nothing
        # may wait in its queue: it writes each line before emit() returns. A multiprocessing child
        # runs its finalizers, our flush among them, and says so below (_mp_child, registered with
        # multiprocessing's after-fork hooks, which run after this one and only in its children).
        self._sync = True
        if self._compressor is not None:
            self._compressor = self._make_compressor()

    def _make_compressor(self) -> Compressor:
        return Compressor(self.baseFilename, self._locked, self._perms, self._backup_pattern())

    def _backup_pattern(self) -> str:
        """A regular expression for the names of this handler's uncompressed backups."""
        return re.escape(os.path.basename(self.baseFilename)) + r"\.\d+"

    def _mp_child(self) -> None:
        self._sync = False

    @property
    def lines_lost(self) -> int:
        """How many lines this process could not write (all reasons; see ``losses.by_reason``)."""
        return self.losses.total

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
        self._ascii_ok = encoding in _ASCII_SUPERSETS
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

    # -- emitting -------------------------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter *record* and emit it, without the handler lock (``UnlockedHandle.handle``, inlined
        here to keep the batched path one call short). For a subclass that overrides a seam, as the
        standard library's ``Handler.handle`` does (``emit()`` under the handler lock), and under the
        file lock too, so that an ``emit()`` of its own writes whole lines among other processes."""
        rv = self.filter(record) if self.filters else True  # type: ignore[attr-defined]
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            if not self._per_record:
                self.emit(record)
                return rv
            with self.lock:
                if self._pid != os.getpid():
                    self._after_fork_in_child()
                held = contextlib.ExitStack()
                try:
                    held.enter_context(self._locked())
                except Exception:  # a lock we cannot take is the handler's failure, not the caller's
                    self.handleError(record)  # type: ignore[attr-defined]
                    return rv
                with held:
                    self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        if self._per_record:
            self._emit_per_record(record)
            return
        try:
            with self.lock:
                if self._pid != os.getpid():
                    self._after_fork_in_child()
                if self.stream is None and self.mode == "w" and self._closed:
                    return  # as FileHandler.emit: a closed 'w' handler drops the record (bpo-42378)
                if not self._exit_hooked:
                    self._hook_exit()
                item = (self._render(record) + self.terminator, record.created)
                # Nothing queued and nobody writing, here or in another process: write it now.
                if not self._pending and self._writing.acquire(blocking=False):
                    try:
                        if self._lockfile.acquire(blocking=False):
                            self._holder = threading.get_ident()
                            try:
                                self._write_items([item], self._sync_stream())
                            finally:
                                self._holder = None
                                self._lockfile.release()
                            return
                    finally:
                        self._writing.release()
                self._pending.append(item)
            if self._sync or (isinstance(record.levelno, int) and record.levelno >= logging.ERROR):
                self._flush_pending(block=True)
            elif not self._woken:
                self._wake_flusher()
        except RecursionError:
            raise
        except Exception:
            self.losses.lose(1, "error", episode=False)
            self.handleError(record)  # type: ignore[attr-defined]

    def _emit_per_record(self, record: logging.LogRecord) -> None:
        """The standard library's emit, with the file lock held: ``_before_emit()`` (the rotation
        seams), then what ``FileHandler.emit`` does (``format()``, write whole, flush)."""
        try:
            with self.lock:
                if self._pid != os.getpid():
                    self._after_fork_in_child()
                if self.stream is None and self.mode == "w" and self._closed:
                    return  # bpo-42378, as in emit()
                if not self._exit_hooked:
                    self._hook_exit()  # backups being gzipped are waited for at exit
                with self._locked():
                    self._sync_stream()
                    self._before_emit(record)
                    # StreamHandler.emit's format and write, through _write_text: a full disk
                    # leaves no fragment here either, and the loss is counted.
                    self._write_text([self.format(record) + self.terminator])  # type: ignore[attr-defined]
        except RecursionError:
            raise
        except Exception:
            self.losses.lose(1, "error", episode=False)
            self.handleError(record)  # type: ignore[attr-defined]

    def write_rendered(self, lines: list[str], created: list[float]) -> None:
        """Write *lines*, rendered elsewhere by an identical formatter (a listener's workers), as
        ``emit()`` would write the records they came from, *created* their creation times (used by
        the timed handler): queued with whatever waits, then written under the file lock, the
        rotation decided line by line; if another process holds the lock, the flusher thread
        writes them as soon as it is free (as ``emit()`` does for a line below ERROR), so the
        listener never waits for another process."""
        try:
            with self.lock:
                if self._pid != os.getpid():
                    self._after_fork_in_child()
                if self.stream is None and self.mode == "w" and self._closed:
                    return  # as emit(): a closed 'w' handler drops the records (bpo-42378)
                if not self._exit_hooked:
                    self._hook_exit()
                terminator = self.terminator
                self._pending.extend((line + terminator, when) for line, when in zip(lines, created))
            if not self._flush_pending(block=self._sync) and not self._woken:
                self._wake_flusher()
        except RecursionError:
            raise
        except Exception:
            self.losses.lose(len(lines), "error", episode=False)
            self.handleError(logging.makeLogRecord({"msg": f"a batch of {len(lines)} lines"}))  # type: ignore[attr-defined]

    def _before_emit(self, record: logging.LogRecord) -> None:
        """What the standard library's emit does before writing; the rotating handlers decide here."""

    def _hook_exit(self) -> None:
        at_exit(_flush_all)
        self._exit_hooked = True

    def _render(self, record: logging.LogRecord) -> str:
        # A plain Formatter is rendered by an identical one that caches the time text per second.
        formatter = self.formatter
        if formatter is not self._renderer[0]:
            spec = _render.formatter_spec(formatter)
            self._renderer = (formatter, _render.Renderer(spec) if spec is not None else None)
        renderer = self._renderer[1]
        if renderer is None:
            return self.format(record)  # type: ignore[attr-defined, no-any-return]
        record.message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = renderer.formatException(record.exc_info)
        return renderer.format(record)

    def flush(self) -> None:
        """Write everything queued (waiting for the lock if need be), then flush the stream."""
        if self._pid == os.getpid():
            self._flush_pending(block=True)
        with self.lock:
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()

    def close(self) -> None:
        if self._pid == os.getpid():
            self._closing = True
            self._flush_pending(block=True)
            flusher = self._flusher
            self._wake_flusher()
            if flusher is not None and flusher is not threading.current_thread():
                flusher.join(30.0)  # it leaves once closing and nothing is queued
            self._flush_pending(block=True)
            if self._compressor is not None:
                self._compressor.wait(60.0)
        _FileHandler.close(self)  # type: ignore[arg-type]
        self._lockfile.close()

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

    def _flush_pending(self, block: bool) -> bool:
        """Write the queue if this process's writer and the file lock are free (or wait for them).

        Waiting also waits for a batch another thread of ours has taken and is writing, so that a
        flush() or close() returns only once every line handed over so far is in the file.
        """
        if not block and not self._pending:
            return True
        if self._holder == threading.get_ident():  # called by a seam, with both locks held already
            with self.lock:
                items, self._pending = self._pending, []
            if items:
                self._write_items(items, self._sync_stream())
            return True
        if not self._writing.acquire(blocking=block):
            return False
        try:
            if not self._pending:
                return True  # any batch in flight was written before we got _writing
            if not self._lockfile.acquire(block):
                return False
            self._holder = threading.get_ident()
            try:
                while True:
                    with self.lock:
                        items, self._pending = self._pending, []
                    if not items:
                        return True
                    self._write_items(items, self._sync_stream())
            finally:
                self._holder = None
                self._lockfile.release()
        finally:
            self._writing.release()

    def _wake_flusher(self) -> None:
        with self._wake:
            if self._flusher is None or not self._flusher.is_alive():
                if self._closing:
                    return
                self._flusher = threading.Thread(
                    target=self._run_flusher, name="logfunnel-file-flusher", daemon=True
                )
                self._flusher.start()
            self._woken = True
            self._wake.notify()

    def _run_flusher(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._woken, timeout=1.0)
                self._woken = False
            if self._pid != os.getpid():
                return
            try:
                self._flush_pending(block=True)
            except Exception as exc:
                banner(f"could not write to {self.baseFilename}: {exc!r}")
            if self._closing and not self._pending:
                return

    # -- writing (the file lock is held) ---------------------------------------------------------------

    def _write_items(self, items: list[Item], size: int) -> None:
        """Write *items* to the file, whose current size is *size*."""
        self._write_text([text for text, _ in items])

    def _write_text(self, lines: list[str]) -> None:
        # Whole lines or none (see _disk): a disk that fills up mid-write leaves no fragment behind.
        if self.stream is None:  # dropped after a failed write: reopen
            self.stream = self._open()
        self.stream = write_lines(self, self.stream, lines)  # type: ignore[arg-type]

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


def _terminator(terminator: str | None, newline: str | None, cls: type) -> str | None:
    """The terminator asked for, by the standard library's name or concurrent-log-handler's."""
    if terminator is not None and newline is not None and terminator != newline:
        raise ValueError(
            f"{cls.__name__}() got terminator={terminator!r} and newline={newline!r}: "
            "they are the same option, give one"
        )
    return terminator if terminator is not None else newline


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


def _is_special(path: str) -> bool:
    """Whether *path* exists and is not a regular file (a device, a FIFO)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _overrides(cls: type, seams: tuple[str, ...]) -> bool:
    """Whether *cls* replaces any of *seams* as defined by the logfunnel class it derives from."""
    ours = next(c for c in cls.__mro__ if c.__module__.startswith(__package__ or "logfunnel"))
    return any(getattr(cls, name, None) is not getattr(ours, name, None) for name in seams)


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


def _flush_all() -> None:
    for handler in list(_handlers):
        if handler._pid == os.getpid():  # noqa: SLF001
            with contextlib.suppress(Exception):
                handler.flush()
                if handler._compressor is not None:  # noqa: SLF001
                    handler._compressor.wait(30.0)  # noqa: SLF001


def _after_fork_in_child() -> None:
    for handler in list(_handlers):
        handler._after_fork_in_child()  # noqa: SLF001


os.register_at_fork(after_in_child=_after_fork_in_child)


class _LockedPlain(_Locked):
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
        self._locked_init(chmod, lock_file, terminator=_terminator(terminator, newline, type(self)))


class LockedFileHandler(_LockedPlain, _FileHandler):
    """``logging.FileHandler``, safe when several processes append to the same file."""

    __doc__ = (__doc__ or "") + "\n" + OPTIONS_DOC


class LockedWatchedFileHandler(_LockedPlain, _WatchedFileHandler):
    """``logging.handlers.WatchedFileHandler`` for many processes: a file moved away (logrotate) is
    noticed under the lock before every write, and reopened."""

    __doc__ = (__doc__ or "") + "\n" + OPTIONS_DOC


class LockedRotatingFileHandler(_Locked, _RotatingFileHandler):
    """``logging.handlers.RotatingFileHandler`` for many processes.

    The size is the file's own, read under the lock; a line that would take the file to *maxBytes*
    starts a new one (a single record larger than that is written alone). With *compress*, backups
    are gzipped in the background (``app.log.1.gz``). As in the standard library, no backup is
    made when *maxBytes* or *backupCount* is zero.
    """

    __doc__ = (__doc__ or "") + OPTIONS_DOC

    _seams = _ROTATING_SEAMS

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
        self._locked_init(chmod, lock_file, compress, _terminator(terminator, newline, type(self)))

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
        if self._ascii_ok and size + _WIDEST * sum(len(text) for text, _ in items) < self.maxBytes:
            self._write_text([text for text, _ in items])  # no line can reach maxBytes
            return
        chunk: list[str] = []
        for text, _ in items:
            length = self._nbytes(text)
            if size > 0 and size + length >= self.maxBytes:
                if chunk:
                    self._write_text(chunk)
                    chunk = []
                self._rollover()
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
