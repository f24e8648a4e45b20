"""CPython's own file-handler tests (Lib/test/test_logging.py), run with the Locked* classes swapped in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import logfunnel

HELPER = Path(__file__).with_name("_stdlib_files.py")
SRC = Path(logfunnel.__file__).resolve().parents[1]  # the logfunnel under test, in the child too


@pytest.mark.timeout(300)
def test_stdlib_file_handler_tests_pass_with_locked_handlers_swapped_in(tmp_path):
    """CPython's own FileHandler, RotatingFileHandler, TimedRotatingFileHandler and HandlerTest tests pass."""
    pytest.importorskip("test.test_logging", reason="this interpreter ships without its test package")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        TMPDIR=str(tmp_path),
    )
    done = subprocess.run(
        [sys.executable, str(HELPER)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"the helper printed no report; stderr:\n{done.stderr[-4000:]}"
    report = json.loads(lines[-1])
    assert report["failed"] == [], (
        f"failed with the Locked* classes: {report['failed']}\n{done.stderr[-8000:]}"
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert report["run"] >= 20, report
