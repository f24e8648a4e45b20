"""Every block fenced as Python in README.md runs as written, each as a script of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), re.M | re.S)


def test_readme_has_python_blocks():
    """The README shows runnable code; if the fences change, this test must notice."""
    assert len(BLOCKS) >= 5


@pytest.mark.timeout(120)
@pytest.mark.parametrize("number", range(len(BLOCKS)), ids=[f"block{n + 1}" for n in range(len(BLOCKS))])
def test_readme_block_runs_as_written(number, tmp_path):
    """Block N of the README, saved as a script in an empty folder, exits 0 without a traceback."""
    script = tmp_path / f"readme_block_{number + 1}.py"
    script.write_text(BLOCKS[number], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=100, env=env
    )
    assert result.returncode == 0, f"block {number + 1} failed:\n{BLOCKS[number]}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
