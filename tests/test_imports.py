"""What ``import logfunnel`` costs: no multiprocess, dill or psutil until a LogManager starts.

Each test runs a fresh interpreter, since this one has imported everything long ago.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

IMPORTS = "import logfunnel, logfunnel.handlers"


def _loaded_after_import(module: str) -> bool:
    code = f"import sys; {IMPORTS}; print({module!r} in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip() == "True"


@pytest.mark.timeout(60)
def test_import_logfunnel_does_not_load_multiprocess() -> None:
    """import logfunnel (and logfunnel.handlers) leaves multiprocess out of sys.modules."""
    assert not _loaded_after_import("multiprocess")


@pytest.mark.timeout(60)
def test_import_logfunnel_does_not_load_dill() -> None:
    """import logfunnel (and logfunnel.handlers) leaves dill out of sys.modules."""
    assert not _loaded_after_import("dill")


@pytest.mark.timeout(60)
def test_import_logfunnel_does_not_load_psutil() -> None:
    """import logfunnel (and logfunnel.handlers) leaves psutil out of sys.modules."""
    assert not _loaded_after_import("psutil")


EXIT_DEL = textwrap.dedent(
    """
    import logging, sys
    {imports}

    handler = logging.FileHandler(sys.argv[1], encoding="utf-8")
    logging.getLogger().addHandler(handler)


    class Resource:
        def __del__(self):
            logging.getLogger("app").warning("resource closed at exit")


    resource = Resource()  # a global of __main__: deleted while the interpreter shuts down
    """
)


@pytest.mark.timeout(60)
def test_del_that_logs_at_exit_is_written_after_import_logfunnel(tmp_path: Path) -> None:
    """A __del__ that logs at exit still writes its line (dill kept __main__ alive past logging)."""
    script, log = tmp_path / "app.py", tmp_path / "app.log"
    script.write_text(EXIT_DEL.format(imports=IMPORTS), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Exception ignored" not in result.stderr, result.stderr
    assert log.read_text(encoding="utf-8") == "resource closed at exit\n"
