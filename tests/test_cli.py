"""The `logfunnel` command."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_demo_runs_and_accounts_for_every_record(tmp_path):
    """`logfunnel demo` logs from a pool into a rotating file and every record is accounted for."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "logfunnel.cli",
            "demo",
            "--seconds",
            "1",
            "--workers",
            "2",
            "--dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "check      produced = delivered + dropped + lost: yes" in out
    assert "lost                 0" in out
    assert (tmp_path / "d" / "demo.log").exists()
    produced = int(out.split("produced")[1].split()[0].replace(",", ""))
    lines = sum(p.read_text(encoding="utf-8").count("(request=") for p in (tmp_path / "d").glob("demo.log*"))
    assert lines == produced


def test_version():
    """`logfunnel --version` prints the version."""
    command = [sys.executable, "-m", "logfunnel.cli", "--version"]
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert result.stdout.startswith("logfunnel 0.")
