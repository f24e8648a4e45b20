"""How records reach a file that many processes share: write now, or queue for the flusher thread.

``emit()`` formats the record and, when the lock is free, writes at once, so a single process sees its
line in the file as soon as the call returns. When another process holds the lock, the line waits in a
short queue that a flusher thread of the handler writes, with everything else that gathered, as soon
as the lock is free: writers never wait for each other, and under contention the lock is taken once
per batch instead of once per line. ERROR records and ``flush()`` wait until they are written.

A subclass that overrides one of the standard library's seams gets the standard library's emit
instead, record by record under the file lock. This module also keeps each process's state apart:
after ``fork`` a child drops its parent's queue, thread and stream, and at exit each process writes
what it has queued. The file itself, with the lock held, is ``_shared_file.SharedFile``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import os
import threading
import weakref
from typing import Any

from .. import _render
from .._exit import at_exit
from .._handling import banner
from ._disk import Losses
from ._shared_file import Item, SharedFile

__all__ = ["PLAIN_SEAMS", "ROTATING_SEAMS", "Locked"]

_FileHandler = logging.FileHandler  # bound once (see files.py)

# The standard library's methods that a subclass may override, and that then decide how a record is
# written (see Locked._locked_init). namer and rotator are attributes, honoured on either path.
PLAIN_SEAMS = ("emit", "format")
ROTATING_SEAMS = (*PLAIN_SEAMS, "shouldRollover", "doRollover", "rotation_filename", "rotate")

_handlers: weakref.WeakSet[Locked] = weakref.WeakSet()
_orphans: list[Any] = []  # streams inherited across fork and closed under them


class Locked(SharedFile):
    """What the four handlers share: the queue, the flusher, the per-record path, fork and exit."""

    _seams: tuple[str, ...] = PLAIN_SEAMS

    def _locked_init(
        self,
        lock_file: str | None,
        compress: bool = False,
        terminator: str | None = None,
        newline: str | None = None,
    ) -> None:
        self._file_init(lock_file, compress, terminator, newline)
        self._renderer: tuple[Any, _render.Renderer | None] = (object(), None)
        # A subclass that overrides one of the standard library's seams gets the standard library's
        # emit: one record at a time, each seam called where the standard library calls it, under
        # the file lock. Others get the batched path, which decides rotation itself, line by line.
        # (Decided once here: a class check, not a cost per record.)
        self._per_record = _overrides(type(self), self._seams)
        self._reset_process()
        _handlers.add(self)
        multiprocessing.util.register_after_fork(self, Locked._mp_child)
        if self._compressor is not None:
            self._compressor.sweep()

    def _reset_process(self) -> None:
        # In __init__ and in a fork child: the parent's queue, thread and lock state are not ours.
        self._pid = os.getpid()
        self._pending: list[Item] = []
        self._writing = threading.Lock()  # held by whichever of this process's threads writes
        self._holder = None  # the thread that holds _writing and the file lock
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

    def _mp_child(self) -> None:
        self._sync = False

    @property
    def lines_lost(self) -> int:
        """How many lines this process could not write (all reasons; see ``losses.by_reason``)."""
        return self.losses.total

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


def _overrides(cls: type, seams: tuple[str, ...]) -> bool:
    """Whether *cls* replaces any of *seams* as defined by the logfunnel class it derives from."""
    ours = next(c for c in cls.__mro__ if c.__module__.startswith(__package__ or "logfunnel"))
    return any(getattr(cls, name, None) is not getattr(ours, name, None) for name in seams)


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
