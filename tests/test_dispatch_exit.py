"""A handler stuck in a hung server must not hang stop() or the interpreter's exit (issue 9)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import logfunnel
from _blackholes import http_blackhole, smtp_stall
from _workers import log_records, wait_for
from logfunnel import Lane

SRC = str(Path(logfunnel.__file__).resolve().parent.parent)

LISTENER_NEVER_STOPPED = """
import logging, logging.handlers, sys, time
import psutil
import logfunnel

def connected_to(port):
    me = psutil.Process()
    connections = getattr(me, "net_connections", None) or me.connections
    return any(c.raddr and c.raddr.port == port for c in connections(kind="tcp"))

def main():
    http = logging.handlers.HTTPHandler(sys.argv[1], "/log", method="POST")
    listener = logfunnel.start_listener(handlers=[http])
    logfunnel.install_worker_logging(listener.queue)
    for i in range(20):
        logging.getLogger("app").warning("record %d", i)
    assert logfunnel.flush_worker_logging(10)
    # Return only once the lane's HTTPHandler is inside the black hole (a loaded machine may not
    # have scheduled its first emit yet): the exit must then get past a handler really stuck.
    deadline = time.monotonic() + 30
    while not connected_to(int(sys.argv[1].rsplit(":", 1)[1])) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("main returns", flush=True)

main()  # and returns without stopping anything
"""

LANE_ON_A_LOGGER = """
import logging, logging.handlers, sys
import logfunnel

def main():
    http = logging.handlers.HTTPHandler(sys.argv[1], "/log")
    log = logging.getLogger("app")
    log.addHandler(logfunnel.Lane(http, drain_timeout=1.0))
    for i in range(5):
        log.warning("record %d", i)
    print("main returns", flush=True)

main()
"""


def _run(script: str, address: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), address],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        pytest.fail(f"the program did not exit within {timeout} s; stderr: {exc.stderr!r}")


@pytest.mark.timeout(120)
def test_listener_with_a_black_holed_http_handler_does_not_hang_exit():
    """main() returns without stop(): the program exits and says on stderr what it could not deliver."""
    with http_blackhole() as hole:
        done = _run(LISTENER_NEVER_STOPPED, f"{hole.host}:{hole.port}")
        # the handler really was stuck in the server (the kernel took the connection; the black
        # hole's accepting thread may count it a moment later)
        assert wait_for(lambda: hole.accepted >= 1, 10)
    assert done.stdout == "main returns\n"
    assert done.returncode == 0, done.stderr
    assert "lane lane-HTTPHandler could not deliver 20 records" in done.stderr
    assert "counted as undelivered" in done.stderr


@pytest.mark.timeout(120)
def test_lane_on_a_logger_stuck_in_a_black_hole_does_not_hang_exit():
    """A Lane used on its own (no listener) at a server that never answers: the program still exits."""
    with http_blackhole() as hole:
        done = _run(LANE_ON_A_LOGGER, f"{hole.host}:{hole.port}")
    assert done.returncode == 0, done.stderr
    assert "could not deliver 5 records" in done.stderr


@pytest.mark.timeout(90)
def test_stop_with_a_stuck_lane_returns_and_reports(capfd):
    """stop() with an HTTPHandler lane stuck in a hung server returns, abandons it and counts the records."""
    with http_blackhole() as hole:
        http = logging.handlers.HTTPHandler(f"{hole.host}:{hole.port}", "/log")
        listener = logfunnel.start_listener(handlers=[Lane(http, drain_timeout=0.5)])
        try:
            log_records(0, 10, listener.queue)
            logfunnel.flush_worker_logging(10)
            assert wait_for(lambda: hole.accepted == 1, 30)
        finally:
            logfunnel.uninstall_worker_logging()
            stopper = threading.Thread(target=listener.stop, daemon=True)
            stopper.start()
            stopper.join(60)
        assert not stopper.is_alive(), "stop() hung on the stuck lane"
    (figures,) = listener.stats()["lanes"]
    assert (figures["state"], figures["undelivered"], figures["handled"]) == ("abandoned", 10, 0)
    refs = logging._handlerList  # type: ignore[attr-defined]
    assert all(ref() is not http for ref in refs), "logging.shutdown would wait on the stuck handler"
    assert "could not deliver 10 records" in capfd.readouterr().err


@pytest.mark.timeout(90)
def test_smtp_handler_stalled_after_ehlo_does_not_delay_the_file(tmp_path):
    """An SMTPHandler whose server stalls after EHLO holds back its own lane only."""
    path = tmp_path / "app.log"
    file_handler = logging.FileHandler(path, encoding="utf-8")
    with smtp_stall() as stall:
        smtp = logging.handlers.SMTPHandler(
            (stall.host, stall.port), "app@example.invalid", ["ops@example.invalid"], "log", timeout=30
        )
        listener = logfunnel.start_listener(handlers=[file_handler, Lane(smtp, drain_timeout=0.5)])
        try:
            log_records(0, 1, listener.queue)
            assert logfunnel.flush_worker_logging(10)
            assert wait_for(lambda: stall.accepted == 1, 30)
            log_records(0, 100, listener.queue)
            assert logfunnel.flush_worker_logging(10)
            assert wait_for(lambda: path.read_text().count("\n") == 101, 30)
            assert wait_for(lambda: listener.stats()["lanes"][0]["backlog"] == 101, 30)
            assert stall.accepted == 1
        finally:
            logfunnel.uninstall_worker_logging()
            listener.stop()
            file_handler.close()
    assert listener.stats()["lanes"][0]["undelivered"] == 101
