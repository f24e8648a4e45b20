"""Who owns the files a handler makes, and with which mode: from the moment each one exists.

A file made by ``open()`` is visible with the umask's mode until a later ``chmod``; a file made here
is created with its mode (``os.open`` with ``O_EXCL``, then ``fchmod`` to add back the bits the
process's umask took away: never wider than asked, at any moment) and handed to its owner before
anything is written to it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd

__all__ = ["Owner", "Perms", "resolve_owner"]

OwnerSpec = tuple[str | int | None, str | int | None]
Owner = tuple[int, int]  # uid, gid; -1 leaves one unchanged, as os.chown does


def resolve_owner(owner: OwnerSpec | None, caller: str) -> Owner | None:
    """*owner* as (uid, gid): each a name or an id; None leaves that one unchanged."""
    if owner is None:
        return None
    if not isinstance(owner, tuple) or len(owner) != 2:
        raise TypeError(f"{caller} expected owner=(user, group), names or ids, got {owner!r}")
    user, group = owner
    try:
        uid = -1 if user is None else user if isinstance(user, int) else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ValueError(f"{caller} expected owner=(user, group) with a known user, got {user!r}") from None
    try:
        gid = -1 if group is None else group if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"{caller} expected owner=(user, group) with a known group, got {group!r}") from None
    return uid, gid


class Perms:
    """The mode (exact, or None for the process's umask) and owner of every file a handler makes."""

    def __init__(self, chmod: int | None, umask: int | None, owner: Owner | None) -> None:
        self.mode = chmod if chmod is not None else (0o666 & ~umask if umask is not None else None)
        self.folder_mode = 0o777 & ~umask if umask is not None else 0o777
        self.owner = owner

    def _initial(self) -> int:
        return 0o666 if self.mode is None else self.mode  # the umask may take bits; never adds any

    def apply(self, fd: int) -> None:
        """Give the file open on *fd* its mode and owner (a file this handler has just made)."""
        if self.mode is not None:
            os.fchmod(fd, self.mode)
        if self.owner is not None:
            os.fchown(fd, *self.owner)

    def apply_path(self, path: str) -> None:
        if self.mode is not None:
            os.chmod(path, self.mode)
        if self.owner is not None:
            os.chown(path, *self.owner)

    def create(self, path: str) -> bool:
        """Make *path*, empty, with its mode and owner, unless it exists; return whether we made it."""
        if self.mode is None and self.owner is None:
            return False  # the standard library's open() makes it, with the umask's mode
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self._initial())
        except FileExistsError:
            return False
        try:
            self.apply(fd)
        finally:
            os.close(fd)
        return True

    def open_lock(self, path: str) -> int:
        """Open (or make, with its mode and owner) the lock file at *path*, for reading and writing."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self._initial())
        except FileExistsError:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.apply(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd

    def make_folder(self, folder: str) -> None:
        """Make *folder* (and its parents) if missing; ours get the owner too."""
        if not folder or os.path.isdir(folder):
            return
        parent = os.path.dirname(folder)
        if parent and parent != folder:
            self.make_folder(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, self.folder_mode)
            if self.owner is not None:
                os.chown(folder, *self.owner)
