"""`logfunnel tail` and `stats` on a terminal: what workers put in records or names cannot drive it."""

from __future__ import annotations

import logging
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from logfunnel import start_listener
from logfunnel._cli_watch import printable, render_table

HOSTILE = "pay\x1b]0;retitled\x07load\x1b[2J\x9b31m\x7f"
WORKER = f"""
import logging, logfunnel
logfunnel.install_worker_logging()
log = logging.getLogger("app")
log.warning({HOSTILE!r})
log.warning("first line\\n\\tsecond line")
log.warning("done")
"""


def _env(listener) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}
    env.update(LOGFUNNEL_ADDRESS=listener.address, LOGFUNNEL_AUTHKEY=listener.queue.authkey.hex())
    return env


def _tail_output(listener, stdout: int | None) -> str:
    """Run `tail --format %(message)s` (stdout a terminal or a pipe), one worker, stop: what it wrote."""
    master = None
    if stdout is None:
        master, slave = pty.openpty()
        stdout = slave
    proc = subprocess.Popen(
        [sys.executable, "-m", "logfunnel", "tail", "--format", "%(message)s"], env=_env(listener),
        stdout=stdout, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        proc.stderr.readline()  # "following …": it has subscribed
        worker = subprocess.run([sys.executable, "-c", WORKER], env=_env(listener), timeout=60, check=False)
        assert worker.returncode == 0
        deadline = time.monotonic() + 30
        while listener.stats()["received"] < 3:
            assert time.monotonic() < deadline, "did not hang"
            time.sleep(0.02)
        listener.stop()
        if master is None:
            out, _ = proc.communicate(timeout=30)
            return out.decode()
        os.close(stdout)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, "did not hang"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the tail exited and closed its terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(30)
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if master is not None:
            os.close(master)


@pytest.fixture
def listener():
    running = start_listener([logging.NullHandler()])
    yield running
    running.stop()


@pytest.mark.timeout(90)
def test_tail_on_a_terminal_writes_control_characters_out(listener):
    """On a terminal a record's ESC, BEL, CSI and DEL arrive as text (\\x1b); its newlines and tabs stay."""
    text = _tail_output(listener, None)
    assert text == "pay\\x1b]0;retitled\\x07load\\x1b[2J\\x9b31m\\x7f\nfirst line\n\tsecond line\ndone\n"


@pytest.mark.timeout(90)
def test_tail_into_a_pipe_keeps_the_text_as_it_is(listener):
    """Piped (to a file, to grep), a record's text is written as it is, like tail -f."""
    assert _tail_output(listener, subprocess.PIPE) == f"{HOSTILE}\nfirst line\n\tsecond line\ndone\n"


def test_stats_table_writes_names_out_on_one_line():
    """A process or lane name with control characters or newlines keeps the table's rows whole."""
    stats = {
        "listener": {"address": "/tmp/x\x1b[2J", "pid": 1},
        "processes": [{"pid": 7, "name": "w\x1b[H\nrow", "state": "connected", "received": 1}],
        "lanes": [{"name": "lane\r\x1b[31m", "state": "ok"}],
    }
    lines = render_table(stats)
    assert all(not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line) for line in lines)
    assert any("w\\x1b[H\\nrow"[:24] in line for line in lines)
    assert any("lane\\x0d\\x1b[31m" in line for line in lines)
    assert len(render_table({**stats, "processes": [{**stats["processes"][0], "name": "plain"}]})) == len(
        lines
    )


def test_printable_is_linear_and_keeps_printable_text():
    """Printable text (any script) passes unchanged; only control characters are written out."""
    assert printable("héllo wörld ✓ 日本") == "héllo wörld ✓ 日本"
    assert printable("\x00\x1f\x7f\x80\x9f\xa0") == "\\x00\\x1f\\x7f\\x80\\x9f\xa0"
    assert printable("a\nb", newlines=False) == "a\\nb"
    assert len(printable("\x1b" * 1_000_000)) == 4_000_000
