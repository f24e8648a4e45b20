"""`logfunnel stats` and `logfunnel tail` against a real `logfunnel serve`, found by its state file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG = """\
version = 1

[formatters.line]
format = "%(name)s %(levelname)s %(message)s"

[handlers.file]
class = "logging.FileHandler"
filename = "host.log"
formatter = "line"

[root]
level = "INFO"
handlers = ["file"]

[logfunnel]
state_file = "serve.json"
"""

# A cron job: joins the serve by its state file, logs, exits.
WORKER = """
import logging, sys, logfunnel
logfunnel.install_worker_logging(logfunnel.join_host_funnel(state_file=sys.argv[1], timeout=60))
for i in range(int(sys.argv[2])):
    logging.getLogger(sys.argv[3]).warning("job %d", i)
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}


@pytest.fixture
def served() -> Iterator[Path]:
    """A `python -m logfunnel serve` in a short folder of its own; yields its state file."""
    folder = Path(tempfile.mkdtemp(prefix="lfw-"))
    (folder / "host.toml").write_text(CONFIG)
    state = folder / "serve.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "logfunnel", "serve", "--config", str(folder / "host.toml")], env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not state.exists():
            assert proc.poll() is None, "serve exited before it wrote its state file"
            assert time.monotonic() < deadline, "did not hang: no state file"
            time.sleep(0.02)
        yield state
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(90)
def test_stats_and_tail_of_a_served_host_listener(served):
    """A tail and a stats request by state file see exactly what two cron jobs sent to the serve."""
    tail = subprocess.Popen(
        [sys.executable, "-m", "logfunnel", "tail", str(served), "--format", "%(name)s %(message)s"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert tail.stderr.readline().startswith("logfunnel tail: following unix:")
        for count, name in ((30, "jobs.a"), (20, "jobs.b")):
            subprocess.run([sys.executable, "-c", WORKER, str(served), str(count), name], env=_env(),
                           check=True, timeout=60)  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "logfunnel", "stats", str(served), "--json", "--interval", "0.1"],
            env=_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        assert sorted(p["received"] for p in stats["processes"]) == [20, 30]
        assert (stats["received"], stats["dropped"], stats["lost"]) == (50, 0, 0)
        assert stats["listener"]["pid"] == json.loads(served.read_text())["pid"]
        os.killpg(tail.pid, signal.SIGINT)
        out, _ = tail.communicate(timeout=30)
        assert tail.returncode == 0
    finally:
        if tail.poll() is None:
            os.killpg(tail.pid, signal.SIGKILL)
            tail.communicate()
    assert sorted(out.splitlines()) == sorted(
        [f"jobs.a job {i}" for i in range(30)] + [f"jobs.b job {i}" for i in range(20)]
    )
