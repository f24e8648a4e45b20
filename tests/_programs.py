"""Run a small program as a user would: a script in its own session, importing the logfunnel under test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import logfunnel

SRC = str(Path(logfunnel.__file__).resolve().parents[1])


def program_env(**extra: str) -> dict[str, str]:
    """This environment, importing the logfunnel under test, without a listener's LOGFUNNEL_* names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_program(
    tmp_path: Path, program: str, *args: str, python: str = sys.executable, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run *program* (dedented) as tmp_path/program.py in its own session, from *tmp_path*; kill its
    process group if it outlives *timeout*."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(program))
    proc = subprocess.Popen(
        [python, str(script), *args], env=program_env(), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
