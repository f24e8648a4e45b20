"""`logfunnel stats`, driven as a user runs it: in a subprocess, and on a pty for the live view."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

import pytest

from logfunnel import _host, start_listener

WORKER = """
import logging, sys, logfunnel
logfunnel.install_worker_logging()
for i in range(int(sys.argv[1])):
    logging.getLogger("app").warning("record %d", i)
"""
# Logs 100 records every 50 ms until its stdin closes: a worker that is connected and has a rate.
STEADY_WORKER = """
import logging, sys, threading, time, logfunnel
logfunnel.install_worker_logging()
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("started", flush=True)
while not done.wait(0.05):
    for i in range(100):
        logging.getLogger("app").warning("record %d", i)
"""


def _stats(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logfunnel", "stats", *args], capture_output=True, text=True,
        timeout=timeout, env=env, check=False,
    )  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}
    env.update(extra)
    return env


def _one_line_error(result: subprocess.CompletedProcess[str], status: int, pattern: str) -> None:
    assert result.returncode == status, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def funnel(tmp_path_factory):
    """One listener with two workers that have logged 300 and 500 records and exited."""
    directory = tmp_path_factory.mktemp("stats")
    handler = logging.FileHandler(directory / "funnel.log", encoding="utf-8")
    listener = start_listener([handler])
    env = _env(LOGFUNNEL_ADDRESS=listener.address, LOGFUNNEL_AUTHKEY=listener.queue.authkey.hex())
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(count)], env=env, start_new_session=True)
        for count in (300, 500)
    ]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while sum(p["state"] == "exited" for p in listener.stats()["processes"]) < 2:
            assert time.monotonic() < deadline, "did not hang"
            time.sleep(0.02)
        yield {"listener": listener, "env": env, "counts": {procs[0].pid: 300, procs[1].pid: 500}}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        listener.stop()
        handler.close()


@pytest.mark.timeout(60)
def test_json_gives_exact_figures_per_process(funnel):
    """`stats --json ADDRESS` prints one JSON document with each worker's exact figures and state."""
    listener = funnel["listener"]
    result = _stats(listener.address, "--json", "--interval", "0.1", env=funnel["env"])
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    got = {p["pid"]: (p["received"], p["dropped"], p["lost"]) for p in stats["processes"]}
    assert got == {pid: (count, 0, 0) for pid, count in funnel["counts"].items()}
    assert {p["state"] for p in stats["processes"]} == {"exited"}
    assert (stats["received"], stats["dropped"], stats["lost"]) == (800, 0, 0)
    assert stats["listener"]["pid"] == os.getpid()
    assert stats["listener"]["rss"] > 0
    assert stats["listener"]["cpu_percent"] >= 0 and stats["listener"]["thread_cpu_percent"] >= 0
    assert stats["listener"]["cpu"] >= stats["listener"]["thread_cpu"] > 0
    assert all(p["rate"] == 0 for p in stats["processes"])  # nobody logged during the interval


@pytest.mark.timeout(60)
def test_once_prints_one_table(funnel):
    """`stats --once` prints one table: a row per process with its pid, state and counts, then exits."""
    listener = funnel["listener"]
    result = _stats(listener.address, "--once", "--interval", "0.1", env=funnel["env"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("PID") == 1
    assert f"logfunnel listener {listener.address}  pid {os.getpid()}" in result.stdout
    assert "processes 2 (0 connected)  received 800  dropped 0  lost 0" in result.stdout
    for pid, count in funnel["counts"].items():
        assert re.search(rf"^ +{pid}  \S+ +exited +0 +{count} +0 +0$", result.stdout, re.M), result.stdout


@pytest.mark.timeout(60)
def test_address_from_the_environment(funnel):
    """With no ADDRESS, `stats` reads LOGFUNNEL_ADDRESS and LOGFUNNEL_AUTHKEY."""
    result = _stats("--json", "--interval", "0.1", env=funnel["env"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["received"] == 800


@pytest.mark.timeout(60)
def test_state_file_given_and_by_default(funnel, tmp_path):
    """A state file path works as ADDRESS, and the default state file is read when nothing is given."""
    listener = funnel["listener"]
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = _env(XDG_RUNTIME_DIR=str(runtime))
    state = runtime / "logfunnel" / _host.STATE_NAME
    _host.write_state(state, listener.queue, os.getpid())
    for args in ([str(state)], []):
        result = _stats(*args, "--json", "--interval", "0.1", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["received"] == 800


@pytest.mark.timeout(60)
def test_live_view_redraws_on_a_terminal_until_ctrl_c(tmp_path):
    """On a terminal, `stats` redraws the table in place every interval, with a live worker's
    growing count and its rate, and exits 0 on Ctrl-C, leaving the cursor visible."""
    handler = logging.FileHandler(tmp_path / "funnel.log", encoding="utf-8")
    listener = start_listener([handler])
    env = _env(LOGFUNNEL_ADDRESS=listener.address, LOGFUNNEL_AUTHKEY=listener.queue.authkey.hex())
    steady = subprocess.Popen(
        [sys.executable, "-c", STEADY_WORKER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert steady.stdout.readline() == "started\n"
        status, text = _live_view(listener.address, env)
    finally:
        steady.stdin.close()
        try:
            steady.wait(timeout=30)
        finally:
            if steady.poll() is None:
                os.killpg(steady.pid, signal.SIGKILL)
                steady.wait()
            steady.stdout.close()
            listener.stop()
            handler.close()
    assert status == 0, text[-2000:]
    screens = text.split("\x1b[H\x1b[J")[1:]
    assert len(screens) >= 3
    row = re.compile(rf"^ +{steady.pid}  \S+ +connected +([\d,]+|-) +([\d,]+) +0 +0\r?$", re.M)
    received = [int(row.search(screen)[2].replace(",", "")) for screen in screens if row.search(screen)]
    assert len(received) == len(screens) and received == sorted(received) and received[-1] > received[0]
    assert int(row.search(screens[-1])[1].replace(",", "")) > 0  # its rate
    assert "processes 1 (1 connected)" in screens[-1]
    assert "Traceback" not in text
    assert text.endswith("\x1b[?25h\r\n")  # the cursor is back, on a line of its own


# Makes its stdin (a pty) its controlling terminal, so that Ctrl-C typed there reaches it, then runs
# the command (a session leader of its own: start_new_session).
CONTROLLING = """
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _live_view(
    address: str, env: dict[str, str], then: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """Run `stats` on a pty of 40 x 120 until it has drawn 4 screens, then type Ctrl-C (or call
    *then* with the pty's master end); return its exit status and its output."""
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    argv = ["-m", "logfunnel", "stats", address, "--interval", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CONTROLLING, *argv], stdin=slave, stdout=slave, stderr=slave, env=env,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while output.count(b"\x1b[H\x1b[J") < 4 or not output.endswith(b"Ctrl-C to stop"):
            assert time.monotonic() < deadline, f"did not hang: {output[-2000:]!r}"
            output += _read(master, deadline)
        if then is None:
            os.write(master, b"\x03")  # Ctrl-C, typed on the terminal
        else:
            then(master)
        while chunk := _read(master, deadline + 10):
            output += chunk
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    return status, output.decode()


@pytest.mark.timeout(60)
def test_live_view_says_when_the_listener_goes_away(tmp_path):
    """A listener that stops under the live view ends it with status 1 and one line saying so."""
    handler = logging.FileHandler(tmp_path / "funnel.log")
    listener = start_listener([handler])
    env = _env(LOGFUNNEL_ADDRESS=listener.address, LOGFUNNEL_AUTHKEY=listener.queue.authkey.hex())
    try:
        status, text = _live_view(listener.address, env, then=lambda _: listener.stop())
    finally:
        listener.stop()
        handler.close()
    assert status == 1
    last = text.split("\x1b[?25h")[-1].strip()
    assert last == f"logfunnel stats: the listener at {listener.address} has gone away"


def _read(fd: int, deadline: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child has closed the terminal
        return b""


@pytest.mark.timeout(30)
def test_no_listener_named():
    """With no ADDRESS, no LOGFUNNEL_ADDRESS and no state file: status 2, one line saying what to do."""
    result = _stats(env=_env(XDG_RUNTIME_DIR="/nonexistent-for-logfunnel"))
    _one_line_error(
        result, 2, r"^logfunnel stats: no listener given: pass its address .* start `logfunnel serve`"
    )


@pytest.mark.timeout(30)
def test_address_without_key():
    """An address without LOGFUNNEL_AUTHKEY: status 2, one line naming the variable."""
    result = _stats("unix:/tmp/x.sock", env=_env())
    _one_line_error(
        result, 2, r"^logfunnel stats: unix:/tmp/x.sock needs the listener's auth key: set LOGFUNNEL_AUTHKEY"
    )


@pytest.mark.timeout(30)
def test_no_listener_at_the_address(short_dir):
    """A socket path with nothing there: status 1, one line."""
    address = f"unix:{short_dir}/none.sock"
    result = _stats(address, env=_env(LOGFUNNEL_AUTHKEY="ab" * 16))
    _one_line_error(
        result, 1, rf"^logfunnel stats: no listener at {address}: the socket file does not exist$"
    )


@pytest.mark.timeout(30)
def test_dead_socket(short_dir):
    """A socket file left by a listener that stopped: status 1, one line saying so."""
    path = os.path.join(short_dir, "dead.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens
    result = _stats(f"unix:{path}", env=_env(LOGFUNNEL_AUTHKEY="ab" * 16))
    _one_line_error(
        result, 1, r"^logfunnel stats: no listener at unix:\S+: connection refused \(a socket file left"
    )


@pytest.mark.timeout(30)
def test_wrong_key(funnel):
    """The wrong key: status 1, one line saying the key is wrong; the listener lists no new process."""
    listener = funnel["listener"]
    before = len(listener.stats()["processes"])
    result = _stats(listener.address, env=_env(LOGFUNNEL_AUTHKEY="ab" * 16))
    _one_line_error(
        result,
        1,
        r"^logfunnel stats: the listener at \S+ closed the connection during the handshake: "
        "the auth key is wrong",
    )
    assert len(listener.stats()["processes"]) == before


@pytest.mark.timeout(30)
def test_bad_state_file(tmp_path):
    """A state file that is not one: status 2, one line naming the file."""
    path = tmp_path / "serve.json"
    path.write_text("not json")
    result = _stats(str(path), env=_env())
    _one_line_error(result, 2, rf"^logfunnel stats: cannot read the state file {re.escape(str(path))}: ")


@pytest.mark.timeout(30)
def test_interval_below_a_tenth_is_refused():
    """`--interval 0` is refused by the option parser (status 2)."""
    result = _stats("--interval", "0", env=_env())
    assert result.returncode == 2
    assert "--interval must be a number of seconds from 0.1 up, got 0" in result.stderr


@pytest.mark.timeout(30)
def test_help_is_plain_english():
    """`python -m logfunnel --help` describes the tool and lists stats and tail; each option has help."""
    top = subprocess.run([sys.executable, "-m", "logfunnel", "--help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout  # fmt: skip
    assert "The ``logfunnel`` command" not in top
    assert re.search(r"stats +show a running listener's figures, live", top)
    assert re.search(r"tail +follow the records a running listener handles", top)
    for command, options in (
        ("stats", ["--interval", "--once", "--json"]),
        ("tail", ["--level", "--logger", "--format"]),
    ):
        text = subprocess.run([sys.executable, "-m", "logfunnel", command, "--help"], capture_output=True,
                              text=True, timeout=30, check=True).stdout  # fmt: skip
        assert "ADDRESS" in text and "LOGFUNNEL_AUTHKEY" in text
        for option in options:
            assert re.search(rf"^  {option}\b.*\S", text, re.M), (command, option)
