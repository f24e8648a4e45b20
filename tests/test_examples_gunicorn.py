"""examples/gunicorn_app runs as its docstring says (``gunicorn -c gunicorn.conf.py app:app``).

A copy of the folder is run with a free port and a control socket of its own (given on the command
line, which gunicorn lets override the config file), so that runs in parallel do not collide.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from _gunicorn_run import Gunicorn
from _need import need_module

EXAMPLE = Path(__file__).parent.parent / "examples" / "gunicorn_app"
REQUESTS = 120  # more than 2 x 49: of 2 workers, at least one reaches max_requests (50) and is recycled


@pytest.mark.timeout(90)
def test_gunicorn_example_delivers_every_line_once(tmp_path):
    """Each request's app line and access line arrive once; gunicorn's own lines reach stderr once."""
    need_module("gunicorn", "gunicorn (the test extra)")
    for name in ("app.py", "gunicorn.conf.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    # gunicorn's own race: a replacement worker forked as SIGTERM arrives can miss the signal (it still
    # has the master's handlers), and the master then waits out graceful_timeout (30 s) for it.
    args = (
        "-b",
        "127.0.0.1:0",
        "--control-socket",
        str(tmp_path / "gunicorn.ctl"),
        "--graceful-timeout",
        "5",
    )
    server = Gunicorn(tmp_path, app="app:app", args=args, error_log="stderr.txt")
    try:
        server.start()
        for i in range(REQUESTS):
            assert server.get(f"/r{i}") == 200
        assert server.get("/error") == 200
        assert server.stop(timeout=60) == 0
        assert not server.alive()
    finally:
        server.cleanup()
    app = Counter(re.findall(r" app INFO handling /(r\d+)$", server.text("app.log"), re.M))
    assert app == {f"r{i}": 1 for i in range(REQUESTS)}
    assert "ZeroDivisionError: division by zero" in server.text("app.log")  # the traceback, whole
    access = server.lines("access.log")
    assert len(access) == REQUESTS + 1
    assert Counter(re.search(r'"GET /(\S+) HTTP', line).group(1) for line in access)["r7"] == 1
    stderr = server.text("stderr.txt")
    # How many are recycled depends on how the kernel spreads connections over the workers (one may
    # take 50 and its replacement and the other 71 between them): at least one always is.
    assert len(re.findall(r"\[INFO\] Autorestarting worker", stderr)) >= 1
    assert stderr.count("Shutting down: Master") == 1
    assert "--- logfunnel" not in stderr
