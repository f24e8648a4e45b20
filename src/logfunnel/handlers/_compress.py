"""Gzip rotated files in the background, without holding up any writer.

A rotated file keeps its plain name (``app.log.1``) until it is compressed: a name ending in ``.gz``
always holds gzip. Later rotations shift plain and compressed backups alike. A thread compresses the
backup into a hidden temporary file and, under the handler's locks, renames that to the backup's
name by then plus ``.gz`` and removes the plain one. If compressing fails (a full disk), the plain
backup stays, under its plain name, and is compressed when the handler next starts. The backup is
found again by its identity: device, inode, size and modification time, since a file system reuses
the inode number of a deleted backup at once. One that grew meanwhile (a late line was appended) is
compressed again; one that was deleted is dropped. A ``.gz`` without a gzip header (left by an older
release) gets its plain name back, and is compressed, when the handler starts.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._handling import banner
from ._perms import Perms

__all__ = ["Compressor", "append_file", "is_gzip"]

_GZIP_MAGIC = b"\x1f\x8b"


def append_file(source: str, dest: str) -> None:
    """Append *source*'s bytes to *dest*, as a gzip member if *dest* is compressed; remove *source*."""
    packed = os.path.exists(dest) and os.path.getsize(dest) > 0 and is_gzip(dest)
    with open(source, "rb") as src, open(dest, "ab") as out:
        target: Any = gzip.GzipFile(fileobj=out, mode="wb") if packed else contextlib.nullcontext(out)
        with target as sink:
            shutil.copyfileobj(src, sink, 1 << 20)
    os.remove(source)


def append_text(dest: str, data: bytes) -> None:
    """Append *data* to *dest*, as a gzip member if *dest* is compressed."""
    packed = os.path.getsize(dest) > 0 and is_gzip(dest)
    with open(dest, "ab") as out:
        if packed:
            with gzip.GzipFile(fileobj=out, mode="wb") as sink:
                sink.write(data)
        else:
            out.write(data)


Identity = tuple[int, int, int, int]


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def is_gzip(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == _GZIP_MAGIC
    except OSError:
        return True  # gone, or unreadable: nothing for us to do


class Compressor:
    """One background thread per handler and process; ``wait()`` returns when its queue is empty."""

    def __init__(
        self,
        base: str,
        locked: Callable[[], contextlib.AbstractContextManager[Any]],
        perms: Perms,
        pattern: str,
    ) -> None:
        self.base = base
        self.locked = locked  # a context manager that holds the handler's locks
        self.perms = perms
        self.pattern = re.compile(pattern)  # the names of the handler's plain backups
        self._queue: list[Identity] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False

    def submit(self, path: str) -> None:
        """Compress the backup now at *path* (called with the handler's locks held)."""
        try:
            st = os.stat(path)
        except OSError:
            return
        with self._cond:
            self._queue.append(_identity(st))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="logfunnel-gzip", daemon=True)
                self._thread.start()
            self._cond.notify()

    def sweep(self) -> None:
        """Queue every plain backup (a failed compression's, a crash's); give a ``.gz`` that is not
        gzip (an older release's) its plain name back first."""
        with self.locked():
            for path in list(self._backups()):
                name = os.path.basename(path)
                if path.endswith(".gz") and not is_gzip(path) and not os.path.exists(path[:-3]):
                    os.rename(path, path[:-3])
                    path, name = path[:-3], name[:-3]
                if self.pattern.fullmatch(name) and not is_gzip(path):
                    self.submit(path)

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue, timeout=5.0):
                    self._thread = None
                    return
                identity = self._queue.pop(0)
                self._busy = True
            try:
                self._compress(identity)
            except Exception as exc:
                banner(f"could not compress a backup of {self.base}: {exc!r}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _backups(self) -> Iterator[str]:
        folder, name = os.path.split(self.base)
        prefix = name + "."
        with os.scandir(folder or ".") as entries:
            for entry in entries:
                if entry.name.startswith(prefix):
                    yield entry.path

    def _find(self, identity: Identity, exact: bool = True) -> tuple[str, os.stat_result] | None:
        for path in self._backups():
            try:
                st = os.stat(path)
            except OSError:
                continue
            if _identity(st) == identity or (not exact and _identity(st)[:2] == identity[:2]):
                return path, st
        return None

    def _compress(self, identity: Identity) -> None:
        with self.locked():
            found = self._find(identity)
            if found is None or is_gzip(found[0]):
                return
            source = open(found[0], "rb")  # noqa: SIM115 - read outside the lock, through this descriptor
        folder, name = os.path.split(self.base)
        temporary = os.path.join(folder, f".{name}.{os.getpid()}.{identity[1]}.gz-tmp")
        try:
            with source, open(temporary, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as packed:
                shutil.copyfileobj(source, packed, 1 << 20)
            self.perms.apply_path(temporary)
            with self.locked():
                found = self._find(identity)  # it may have been shifted, or deleted, meanwhile
                if found is not None:
                    path = found[0]
                    if path.endswith(".gz"):  # (an older release's .gz name)
                        os.replace(temporary, path)
                        return
                    # First the gzip under its name, then the plain one goes: a crash in between
                    # leaves the lines twice, never nowhere.
                    os.replace(temporary, path + ".gz")
                    os.remove(path)
                    return
                grown = self._find(identity, exact=False)
                if grown is not None and not is_gzip(grown[0]):
                    with self._cond:  # a late line was appended while we compressed: again
                        self._queue.append(_identity(grown[1]))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
