"""Run a real ``celery worker`` in its own process group, and always take the whole group down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

SRC = str(Path(__file__).resolve().parent.parent / "src")


def group_members(pgid: int) -> list[int]:
    """The pids of the processes still in process group *pgid*."""
    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


@contextmanager
def celery_worker(
    module: str, cwd: str, folder: str, env: dict[str, str], *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m celery -A module worker -P prefork -c 2 --max-tasks-per-child=2 -l INFO *args``,
    with stdout and stderr in *folder*; on leaving, warm shutdown (SIGTERM) and then SIGKILL for
    whatever is left of its process group."""
    command = [
        sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", "2",
        "--max-tasks-per-child=2", "-l", "INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-n", f"lf{os.getpid()}@%h", *args,
    ]  # fmt: skip
    environment = dict(os.environ, **env)
    environment["PYTHONPATH"] = os.pathsep.join([SRC, cwd, environment.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    with (
        open(os.path.join(folder, "stdout.txt"), "wb") as out,
        open(os.path.join(folder, "stderr.txt"), "wb") as err,
    ):
        process = subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=out, stderr=err, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None or group_members(process.pid):
            stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> list[int]:
    """Warm shutdown (SIGTERM to the main process), then SIGKILL to anything left in its group;
    return the pids that were still there 5 s after the main process exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 5  # the manager drains and exits on its own once its parent is gone
    while (left := group_members(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(5)
    return left


def wait_for_line(path: Path, text: str, timeout: float, process: subprocess.Popen[bytes]) -> bool:
    """Wait until the file at *path* has a line containing *text*; False on timeout or worker exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(text in line for line in path.read_text(errors="replace").splitlines()):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False
