"""Failures found by the sixth review (as a user and as an adversary), one test each, named after the
failure it prevents. Each is marked ``xfail(strict=True)`` until it is fixed: the fix turns it into
an XPASS, which fails the run, so the mark comes off with the fix.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

import logfunnel
from _programs import program_env, run_program
from logfunnel.handlers import RFC5424Handler

_env = program_env
_run = run_program


# -- exit ordering ------------------------------------------------------------------------------------

ATEXIT_PROGRAM = """
import atexit, logging, logging.config, sys
atexit.register(lambda: logging.getLogger("app").warning("from an atexit hook"))  # a library's, say
logging.config.dictConfig({
    "version": 1,
    "handlers": {"file": {"class": "logging.FileHandler", "filename": sys.argv[1]},
                 "funnel": {"()": "logfunnel.config.funnel", "handlers": ["file"]}},
    "root": {"level": "INFO", "handlers": ["funnel"]},
})
logging.getLogger("app").info("from main")
"""


@pytest.mark.timeout(60)
def test_record_logged_by_an_earlier_atexit_hook_is_not_lost(tmp_path):
    """A record logged by an atexit hook registered before the funnel's dictConfig is written."""
    path = tmp_path / "app.log"
    result = _run(tmp_path, ATEXIT_PROGRAM, str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_text().splitlines() == ["from main", "from an atexit hook"], result.stderr


SHORT_PROGRAM = """
import logging, logging.config, sys
logging.config.dictConfig({
    "version": 1,
    "handlers": {
        "file": {"class": "logging.FileHandler", "filename": sys.argv[1]},
        "funnel": {"class": "logging.handlers.QueueHandler", "listener": "logfunnel.config.FunnelListener",
                   "handlers": ["file"], "respect_handler_level": True},
    },
    "root": {"level": "INFO", "handlers": ["funnel"]},
})
logging.getLogger("app").info("the only line")
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the QueueHandler 'listener' form is 3.12+")
@pytest.mark.timeout(60)
def test_queue_handler_form_keeps_the_last_line_of_a_short_program(tmp_path):
    """Through the 3.12+ QueueHandler form, a program that logs one line and returns has it in the file."""
    path = tmp_path / "app.log"
    result = _run(tmp_path, SHORT_PROGRAM, str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_text().splitlines() == ["the only line"], result.stderr


# -- the network side ---------------------------------------------------------------------------------


class _RefusingRelpServer:
    """A RELP server that acknowledges every message except those holding b"POISON" (status 500)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.sessions = 0
        self.accepted: list[bytes] = []
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                # a frame is "TXNR COMMAND LEN DATA\n", or "TXNR COMMAND 0\n" without data
                while (m := re.match(rb"(\d+) (\w+) (\d+)[ \n]", buf)) and len(buf) >= m.end() + (
                    int(m[3]) + 1 if int(m[3]) else 0
                ):
                    txnr, command, body = m[1], m[2], buf[m.end() : m.end() + int(m[3])]
                    buf = buf[m.end() + int(m[3]) + 1 :] if int(m[3]) else buf[m.end() :]
                    if command == b"open":
                        self.sessions += 1
                        answer = b"200 OK\nrelp_version=0\nrelp_software=test\ncommands=syslog"
                    elif command == b"close":
                        conn.sendall(txnr + b" rsp 0\n0 serverclose 0\n")
                        return
                    elif b"POISON" in body:
                        answer = b"500 message refused"
                    else:
                        self.accepted.append(body)
                        answer = b"200 OK"
                    conn.sendall(txnr + b" rsp %d " % len(answer) + answer + b"\n")

    def close(self) -> None:
        self._closing = True
        self.sock.close()


@pytest.mark.timeout(60)
def test_relp_message_refused_by_the_server_is_not_resent_in_a_tight_loop():
    """A message the RELP server refuses (500) is retried with back-off, not in a reconnect loop."""
    server = _RefusingRelpServer()
    handler = RFC5424Handler(server.address, transport="relp", drain_timeout=1.0)
    log = logging.getLogger("review6.relp")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("before")
        log.warning("POISON")
        log.warning("after")
        deadline = time.monotonic() + 10
        while len(server.accepted) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.accepted) == 2  # the others got through
        time.sleep(2.0)  # the window the back-off is counted over (0.1 s doubling: about 5 tries)
        sessions = server.sessions
    finally:
        log.removeHandler(handler)
        handler.close()
        server.close()
    assert sessions <= 20, f"{sessions} RELP sessions opened in about 2 s to resend one refused message"
    stats = handler.lane_stats()
    assert (stats["handled"], stats["refused"], stats["undelivered"]) == (2, 1, 0)  # each message once


# -- gunicorn -----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_gunicorn_exits_0_after_its_log_manager_was_killed(tmp_path):
    """A gunicorn whose LogManager was SIGKILLed stops with status 0 (its on_exit as the README has it)."""
    from _gunicorn_run import Gunicorn
    from _need import need_module

    need_module("gunicorn", "gunicorn (the test extra)")
    import psutil

    server = Gunicorn(tmp_path, worker_class="sync", preload=False, max_requests=0)
    try:
        server.start()
        assert server.get("/log/a?n=3") == 200
        group = os.getpgid(server.pid)
        (manager,) = [p for p in psutil.Process(server.pid).children() if os.getpgid(p.pid) != group]
        manager.kill()
        manager.wait(10)
        assert server.get("/log/b?n=3") == 200  # the workers go on serving
        code = server.stop(60)
    finally:
        server.cleanup()
    assert code == 0, server.text("stderr.txt")[-2000:]


# -- configuration files ------------------------------------------------------------------------------

CFG_TOML = """
version = 1
[paths]
log = "host.log"
[handlers.file]
class = "logging.FileHandler"
filename = "cfg://paths.log"
[root]
level = "INFO"
handlers = ["file"]
"""


@pytest.mark.timeout(60)
def test_serve_check_keeps_a_cfg_reference_in_a_filename(tmp_path):
    """`logfunnel serve --check` resolves a ``cfg://`` filename as dictConfig does, not as a path."""
    (tmp_path / "host.toml").write_text(CFG_TOML)
    result = subprocess.run(
        [sys.executable, "-m", "logfunnel", "serve", "--config", str(tmp_path / "host.toml"), "--check"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "host.toml: OK" in result.stdout


# -- the CLI ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_tail_with_a_huge_level_number_is_a_one_line_usage_error():
    """`logfunnel tail --level 99999999999999999999` is refused in one line with status 2, no traceback."""
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as listener:
        env = _env(LOGFUNNEL_ADDRESS=listener.address, LOGFUNNEL_AUTHKEY=listener.queue.authkey.hex())
        result = subprocess.run(
            [sys.executable, "-m", "logfunnel", "tail", "--level", "99999999999999999999"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
