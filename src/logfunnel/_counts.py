"""Counts that outlive a worker: how many records it accepted and dropped (DESIGN rule 10).

A worker's buffer dies with it on SIGKILL; its count of accepted records must not. At install each
worker process makes one small file in a folder that its listener made (mode 0700) and named in the
queue handle, and maps it: the logging call adds one to a 64-bit slot through a ``memoryview``, no
system call. The listener never takes a path from a peer: it scans its own folder for names of the
form ``PID-INCARNATION.count``, opens each without following links, checks that it is a regular file
of its own user with one link and the expected size and magic, and reads it once the process is gone
(``/proc`` says it is a zombie, or absent, or a different process with the same pid). Then it knows
the dead process's loss exactly: what it accepted and the listener never received.

Layout: unsigned 64-bit slots in native byte order (the file never leaves the machine)::

    0 magic (written last)   1 pid   2 ppid   3 start time (clock ticks since boot, Linux; else 0)
    4 accepted               5 dropped        6 length of the name   8.. the process name (UTF-8)
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import tempfile
from typing import NamedTuple

__all__ = [
    "ACCEPTED",
    "DROPPED",
    "CountFile",
    "Counts",
    "alive",
    "file_name",
    "make_folder",
    "read",
    "remove",
    "scan",
]

MAGIC = 0x6C6F6766756E0001  # "logfun" and the layout version
SIZE = 4096
ACCEPTED, DROPPED = 4, 5
_NAME_AT, _NAME_MAX = 64, 1024
_NAME = re.compile(r"([1-9][0-9]{0,9})-([0-9a-f]{16})\.count")
_LIMIT = 1 << 62  # a count beyond this is not a count


class Counts(NamedTuple):
    pid: int
    ppid: int
    name: str
    start: int
    accepted: int
    dropped: int


def file_name(pid: int, incarnation: bytes) -> str | None:
    """The name of the count file of (pid, incarnation), or None if they cannot name one."""
    if (
        type(pid) is not int
        or not 0 < pid < 10**10
        or type(incarnation) is not bytes
        or len(incarnation) != 8
    ):
        return None
    return f"{pid}-{incarnation.hex()}.count"


def start_time(pid: int | str = "self") -> int | None:
    """The start time of *pid* in clock ticks since boot (Linux); None if there is no such process
    or it is a zombie; 0 where ``/proc`` cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    fields = text[text.rindex(b")") + 2 :].split()  # the command name may hold spaces and brackets
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of proc(5), counting from pid as 1


def alive(pid: int, start: int) -> bool:
    """Whether the process that wrote a count file (pid, and start time if known) still runs."""
    if os.path.isdir("/proc/self"):
        now = start_time(pid)
        return now is not None and (start == 0 or now == 0 or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CountFile:
    """The worker's side: a mapped file whose ``slots`` the logging call updates."""

    def __init__(self, folder: str, pid: int, incarnation: bytes, name: str, ppid: int) -> None:
        file = file_name(pid, incarnation)
        if file is None:
            raise ValueError(f"no count file for pid {pid!r}")
        self.path = os.path.join(folder, file)
        flags = (
            os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        )
        fd = os.open(self.path, flags, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.slots = memoryview(self._map).cast("Q")
        encoded = name.encode("utf-8", "replace")[:_NAME_MAX]
        self._map[_NAME_AT : _NAME_AT + len(encoded)] = encoded
        self.slots[1], self.slots[2], self.slots[3], self.slots[6] = (
            pid,
            ppid,
            start_time() or 0,
            len(encoded),
        )
        self.slots[0] = MAGIC  # last: a file without it was never finished (its process made no record)

    def release(self) -> None:
        """Unmap (in a fork child, the parent's file: the child's records are not the parent's)."""
        try:
            self.slots.release()
            self._map.close()
        except (BufferError, ValueError):
            pass  # something still holds a view of it; the mapping goes with the process


def make_folder(address: str, private_dir: str | None) -> str:
    """Make the folder (mode 0700) where a listener's workers keep their count files: in its private
    folder, or in the private folder that holds its socket (a LogManager's), else a new one."""
    if private_dir is None and address.startswith("unix:") and os.path.basename(address) == "listener.sock":
        folder = os.path.dirname(address[len("unix:") :])
        info = os.lstat(folder)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
            private_dir = folder
    if private_dir is not None:
        path = os.path.join(private_dir, "counts")
        os.mkdir(path, 0o700)
        return path
    return tempfile.mkdtemp(prefix="logfunnel-counts-")


def scan(folder: str) -> list[tuple[str, int, bytes]]:
    """The count files in *folder*: (file name, pid, incarnation); other names are ignored."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match is not None:
            found.append((name, int(match.group(1)), bytes.fromhex(match.group(2))))
    return found


def read(folder: str, name: str) -> Counts | None:
    """The counts in *folder*/*name*, or None if it is not a finished count file of this user."""
    if _NAME.fullmatch(name) is None:
        return None
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    try:
        fd = os.open(os.path.join(folder, name), flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            return None
        if info.st_size != SIZE:
            return None
        data = os.pread(fd, SIZE, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) != SIZE:
        return None
    slots = memoryview(data).cast("Q")
    magic, pid, ppid, start, accepted, dropped, length = slots[0:7]
    if magic != MAGIC or str(pid) != name.partition("-")[0] or length > _NAME_MAX:
        return None
    if accepted >= _LIMIT or dropped >= _LIMIT:
        return None
    text = data[_NAME_AT : _NAME_AT + length].decode("utf-8", "replace")
    return Counts(pid, ppid, text, start, accepted, dropped)


def remove(folder: str, name: str) -> None:
    try:
        os.unlink(os.path.join(folder, name))
    except OSError:
        pass
