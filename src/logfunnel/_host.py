"""Where a host-wide listener (``logfunnel serve``) says how to join it: its state file.

The state file is JSON, mode 0600 in a 0700 folder of the listener's user:
``{"address": "unix:/…/listener.sock", "authkey": "<hex>", "counts": "/…" or null, "pid": 1234}``.
Anyone who can read it can join the listener (and read its stats), so only its user can read it.

Beside it, ``serve.json.lock`` is held (``filelock``) by the running ``logfunnel serve`` for its whole
life: the kernel lets it go when the process dies, even by SIGKILL, so a state file whose lock is free
is stale. ``serve.json.start.lock`` is held by the one process that decides to start a funnel
(``join_host_funnel``), so that of many processes starting at once exactly one starts it.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from ._transport import QueueHandle

__all__ = [
    "default_address",
    "default_state_file",
    "handle_from_state",
    "make_state_folder",
    "read_state",
    "remove_state",
    "serve_alive",
    "serve_lock_path",
    "start_lock_path",
    "write_state",
]

STATE_NAME = "serve.json"
STATE_ENV = "LOGFUNNEL_STATE_FILE"  # another well-known path, for a host, a container or a test


def runtime_dir() -> Path:
    """This user's folder for logfunnel's host files: ``$XDG_RUNTIME_DIR/logfunnel``, else
    ``<tmp>/logfunnel-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "logfunnel"
    return Path(tempfile.gettempdir()) / f"logfunnel-{os.getuid()}"


def default_state_file() -> Path:
    """The well-known state file of this user's host funnel: ``$LOGFUNNEL_STATE_FILE`` if set, else
    ``serve.json`` in ``runtime_dir()``."""
    named = os.environ.get(STATE_ENV)
    if named:
        return Path(named)
    return runtime_dir() / STATE_NAME


def default_address(state_file: str | os.PathLike[str]) -> str:
    """The socket a serve with *state_file* listens on unless told: ``serve.sock`` beside ``serve.json``."""
    return f"unix:{Path(state_file).with_suffix('.sock')}"


def serve_lock_path(state_file: str | os.PathLike[str]) -> Path:
    """The lock a running serve holds for its whole life."""
    path = Path(state_file)
    return path.with_name(path.name + ".lock")


def start_lock_path(state_file: str | os.PathLike[str]) -> Path:
    """The lock held by the one process deciding to start a serve for *state_file*."""
    path = Path(state_file)
    return path.with_name(path.name + ".start.lock")


def serve_alive(state_file: str | os.PathLike[str]) -> bool:
    """Whether a process holds the serve lock of *state_file* (a serve is running, or starting)."""
    import filelock

    lock_path = serve_lock_path(state_file)
    if not lock_path.parent.is_dir():
        return False
    lock = filelock.FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def make_state_folder(state_file: str | os.PathLike[str]) -> Path:
    """Make the folder of *state_file* (mode 0700) if it is missing; refuse one that another user owns
    or that others can write (in a shared ``/tmp`` someone else could have made it first)."""
    folder = Path(state_file).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PermissionError(
            f"{folder} is not a folder of this user that only this user can write (owner uid {info.st_uid}, "
            f"mode {stat.S_IMODE(info.st_mode):o}); remove it, or choose another state_file"
        )
    return folder


def write_state(
    path: str | os.PathLike[str], handle: QueueHandle, pid: int, extra: dict[str, Any] | None = None
) -> None:
    """Write *handle*, *pid* and *extra* (more JSON keys) to *path* atomically, readable by this user only."""
    path = Path(path)
    make_state_folder(path)
    state = {
        **(extra or {}),
        "address": handle.address,
        "authkey": handle.authkey.hex(),
        "counts": handle.counts,
        "pid": pid,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state in *path*; ValueError naming the file when it is not a logfunnel state file."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)}: not a logfunnel state file ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("address"), str):
        raise ValueError(f"{os.fspath(path)}: not a logfunnel state file (no 'address')")
    if not isinstance(state.get("authkey"), str):
        raise ValueError(f"{os.fspath(path)}: not a logfunnel state file (no 'authkey')")
    return state


def handle_from_state(path: str | os.PathLike[str]) -> QueueHandle:
    """A queue handle for the listener described by the state file *path*."""
    state = read_state(path)
    try:
        key = bytes.fromhex(state["authkey"])
    except ValueError:
        raise ValueError(f"{os.fspath(path)}: 'authkey' is not hex") from None
    counts = state.get("counts")
    return QueueHandle(state["address"], key, counts if isinstance(counts, str) else None)


def remove_state(path: str | os.PathLike[str], pid: int) -> None:
    """Remove the state file *path* if it is the one process *pid* wrote (not a successor's)."""
    try:
        if read_state(path).get("pid") != pid:
            return
        os.unlink(path)
    except (OSError, ValueError):
        pass
