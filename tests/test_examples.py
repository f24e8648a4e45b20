"""The scripts in examples/ run and deliver their records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    """Each example exits 0 and reports the records it sent."""
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=80, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "records" in result.stdout.splitlines()[-1]
    assert " 0 records" not in result.stdout
