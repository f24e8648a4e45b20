"""Where a host-wide listener (``logfunnel serve``) says how to join it: its state file.

The state file is JSON, mode 0600 in a 0700 folder of the listener's user:
``{"address": "unix:/…/listener.sock", "authkey": "<hex>", "counts": "/…" or null, "pid": 1234}``.
Anyone who can read it can join the listener (and read its stats), so only its user can read it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ._transport import QueueHandle

__all__ = ["default_state_file", "handle_from_state", "read_state", "write_state"]

STATE_NAME = "serve.json"


def runtime_dir() -> Path:
    """This user's folder for logfunnel's host files: ``$XDG_RUNTIME_DIR/logfunnel``, else
    ``<tmp>/logfunnel-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "logfunnel"
    return Path(tempfile.gettempdir()) / f"logfunnel-{os.getuid()}"


def default_state_file() -> Path:
    """The well-known state file of this user's host funnel."""
    return runtime_dir() / STATE_NAME


def write_state(path: str | os.PathLike[str], handle: QueueHandle, pid: int) -> None:
    """Write *handle* and *pid* to *path* atomically, readable by this user only."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = {"address": handle.address, "authkey": handle.authkey.hex(), "counts": handle.counts, "pid": pid}
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
