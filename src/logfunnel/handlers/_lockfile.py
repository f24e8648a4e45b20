"""The lock between the processes that write one log, and where it and its neighbours live.

``LockFile`` is an exclusive ``fcntl.flock`` on a descriptor kept open (it blocks in the kernel without
polling, and a child reopens it after ``fork``), with a few bytes at the start of the file that the
processes share (the timed handler's schedule). ``sidecar()`` names such a file beside the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat

from ._perms import Perms

__all__ = ["LockFile", "sidecar"]

_STATE_SIZE = 64


class LockFile:
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


def _is_special(path: str) -> bool:
    """Whether *path* exists and is not a regular file (a device, a FIFO)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def sidecar(log: str, kind: str) -> str | None:
    """``.<name>.<kind>`` beside the log *log*, or None for a device or a FIFO (``/dev/null``): it is
    never rotated, and its folder (``/dev``) is no place for a file of ours, nor writable for most."""
    if _is_special(log):
        return None
    folder, name = os.path.split(log)
    return os.path.join(folder, f".{name}.{kind}")
