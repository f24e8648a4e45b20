"""`logfunnel serve` with a receiver: stdlib socket clients' records enter the listener as a worker's do,
so `logfunnel tail` and `stats` see them and the summary counts them once, as the clients'."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time

import pytest

from test_serve import Serve, _lines


def _send(serve: Serve, count: int, name: str = "stdlib.client") -> None:
    """A stdlib SocketHandler client, as in the cookbook, sends *count* INFO records and closes."""
    host, port = serve.state_data()["receiver"]["tcp"].rsplit(":", 1)
    handler = logging.handlers.SocketHandler(host, int(port))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        for i in range(count):
            logger.info("socket %d", i)
        logger.debug("debug %d: the serve's root is at INFO", count)
    finally:
        logger.removeHandler(handler)
        handler.close()


def _wait_lines(path, needle: str, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        got = [line for line in _lines(path) if needle in line]
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_tail_stats_and_summary_see_the_stdlib_clients(tmp_path):
    """tail shows every received record, stats counts them under the serve's own pid, the routing and
    levels of the file apply (DEBUG is not written), and the summary names them once."""
    serve = Serve(tmp_path)
    tail = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}
        tail = subprocess.Popen(
            [sys.executable, "-m", "logfunnel", "tail", str(serve.state), "--logger", "stdlib.client",
             "--format", "%(name)s %(levelname)s %(message)s"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert tail.stderr is not None
        assert "following" in tail.stderr.readline()
        _send(serve, 40)
        written = _wait_lines(tmp_path / "app.log", " stdlib.client INFO socket ", 40)
        assert len(written) == 40
        stats = subprocess.run(
            [sys.executable, "-m", "logfunnel", "stats", str(serve.state), "--once", "--json"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        figures = json.loads(stats.stdout)
        own = [p for p in figures["processes"] if p["pid"] == serve.pid]
        assert [p["received"] for p in own] == [40]  # the DEBUG one was never sent: the level applies
        serve.worker("w", 10)
        code, out, err = serve.stop()
        assert code == 0, err
        tail_out, _ = tail.communicate(timeout=30)
    finally:
        serve.kill()
        if tail is not None and tail.poll() is None:
            os.killpg(tail.pid, signal.SIGKILL)
            tail.wait()
    assert tail_out.splitlines() == [f"stdlib.client INFO socket {i}" for i in range(40)]
    summary = out.strip().splitlines()[-1]  # the receiver received the DEBUG one too: 41
    assert summary.endswith(
        ": 10 records received from 1 process, 0 dropped, 0 lost; 41 from stdlib socket clients"
    )
    assert not [line for line in _lines(tmp_path / "app.log") if "debug" in line]
