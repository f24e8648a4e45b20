"""examples/host_funnel/: a TOML file, a cron-style job that starts or joins the host's funnel, and a
subprocess of it that joins through the environment; each run as a user would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "host_funnel"


@pytest.fixture
def copy() -> Iterator[tuple[Path, dict[str, str]]]:
    """The example in a short folder of its own, and an environment naming its state file there;
    at the end every serve started for it is killed."""
    folder = Path(tempfile.mkdtemp(prefix="lfx-"))
    for name in ("host.toml", "cron_job.py", "child.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    env = {**os.environ, "LOGFUNNEL_STATE_FILE": str(folder / "serve.json")}
    yield folder, env
    for proc in _serves(folder):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    shutil.rmtree(folder, ignore_errors=True)


def _serves(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and str(folder / "host.toml") in cmdline and proc.info["status"] != "zombie":
            found.append(proc)
    return found


def _job(folder: Path, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, str(folder / "cron_job.py")], env=env, check=True, timeout=90)


def _messages(path: Path) -> list[str]:
    return [line.split(" ", 3)[3] for line in path.read_text().splitlines() if line[:4].isdigit()]


JOB = [
    "jobs.backup INFO backup started",
    "jobs.backup.compress INFO compressed 3 files",
    "jobs.backup.compress ERROR one file could not be compressed",
    "jobs.backup INFO backup finished",
]


@pytest.mark.timeout(180)
def test_cron_jobs_start_then_join_one_funnel(copy):
    """The first job starts the serve, the second joins it; both jobs' and children's records arrive."""
    folder, env = copy
    _job(folder, env)
    (serve,) = _serves(folder)
    _job(folder, env)
    assert [proc.pid for proc in _serves(folder)] == [serve.pid]
    serve.send_signal(signal.SIGTERM)
    serve.wait(60)
    assert sorted(_messages(folder / "host.log")) == sorted(JOB * 2)
    errors = (folder / "errors.log").read_text()
    assert errors.count("ERROR one file could not be compressed") == 2
    assert errors.count("ValueError: invalid literal for int()") == 2


@pytest.mark.timeout(180)
def test_a_job_joins_a_serve_run_by_hand(copy):
    """`logfunnel serve --config host.toml` in the foreground; a job joins it and starts none."""
    folder, env = copy
    check = subprocess.run(
        [sys.executable, "-m", "logfunnel", "serve", "--config", str(folder / "host.toml"), "--check"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    serve = subprocess.Popen(
        [sys.executable, "-m", "logfunnel", "serve", "--config", str(folder / "host.toml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (folder / "serve.json").exists():
            assert serve.poll() is None and time.monotonic() < deadline, serve.stderr.read()
            time.sleep(0.02)
        _job(folder, env)
        assert [proc.pid for proc in _serves(folder)] == [serve.pid]
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    assert out.strip().splitlines()[-1].endswith(": 4 records received from 2 processes, 0 dropped, 0 lost")
    assert sorted(_messages(folder / "host.log")) == sorted(JOB)
