"""examples/celery_app runs: a real prefork worker whose records all arrive in celery's own formats."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from _need import need_module

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "celery_app" / "run.py"
SRC = str(Path(__file__).resolve().parent.parent / "src")
# celery's worker_task_log_format and worker_log_format, as the manager wrote them
TASK_LINE = re.compile(
    r"^\[[\d\- :,]+: INFO/ForkPoolWorker-\d+\] proj\.add\[([0-9a-f-]{36})\]: adding (\d) \+ \2$"
)
MAIN_READY = re.compile(r"^\[[\d\- :,]+: INFO/MainProcess\] celery@\S+ ready\.$")
PLAIN_LINE = re.compile(r"^\[[\d\- :,]+: INFO/ForkPoolWorker-\d+\] stored (\d+)$")


def _left_behind(data: Path) -> list[int]:
    """Processes of this run's worker (they have its CELERY_DATA) that are still there."""
    left = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("CELERY_DATA") == str(data) and process.pid != os.getpid():
                left.append(process.pid)
        except psutil.Error:
            continue
    return left


@pytest.mark.timeout(120)
def test_celery_example_writes_celery_formats_through_the_manager(tmp_path):
    """run.py exits 0; each of its 6 tasks has one line in celery's task format with its own id, and
    one in the worker format from a plain logger; nothing is left running."""
    need_module("celery", "celery (the test extra)")
    data = tmp_path / "celery-data"
    env = dict(os.environ, CELERY_DATA=str(data), PYTHONPATH=SRC)
    try:
        result = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=100, check=False)  # fmt: skip
    finally:
        left = _left_behind(data)
        for pid in left:
            psutil.Process(pid).kill()
    log = (data / "worker.log").read_text() if (data / "worker.log").exists() else ""
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n--- worker.log:\n{log[-5000:]}"
    assert result.stdout.splitlines()[-1] == f"6 task records in {data / 'worker.log'}"
    lines = (data / "worker.log").read_text().splitlines()
    tasks = [m.groups() for m in map(TASK_LINE.match, lines) if m]
    assert sorted(int(x) for _, x in tasks) == list(range(6))
    assert len({task_id for task_id, _ in tasks}) == 6
    assert sorted(int(m.group(1)) for m in map(PLAIN_LINE.match, lines) if m) == [0, 2, 4, 6, 8, 10]
    assert any(MAIN_READY.match(line) for line in lines)
    assert left == []
