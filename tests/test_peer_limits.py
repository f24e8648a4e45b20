"""Bounded cost per peer (DESIGN rule 11): descriptors, connections waiting to authenticate, frames
left half sent, the listener's own stderr, and where it agrees to listen. Each test is named after
the failure from the field that it prevents."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import logfunnel
from _funnel import FileFunnel
from _workers import closed_by_listener
from logfunnel import _checks, _handling, _serving, _transport, _wire

pytestmark = pytest.mark.timeout(60)  # every test here starts a listener, some start processes

SRC = str(Path(logfunnel.__file__).resolve().parent.parent)

# A listener in a process of its own, with few descriptors. Commands on stdin: "fill" opens
# /dev/null until the process is out of descriptors (the application's own use of them), "release"
# closes those again; end of input stops the listener and prints its rejected count.
LISTENER = """
import json, logging, os, resource, sys
import logfunnel
handler = logging.FileHandler(sys.argv[2], encoding="utf-8")
handler.setFormatter(logging.Formatter("%(message)s"))
listener = logfunnel.start_listener(handlers=[handler])
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(json.dumps([listener.queue.address, listener.queue.authkey.hex()]), flush=True)
held = []
for line in sys.stdin:
    if line.strip() == "fill":
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print("filled", len(held), flush=True)
    elif line.strip() == "release":
        for fd in held:
            os.close(fd)
        held.clear()
        print("released", flush=True)
listener.stop()
handler.close()
print(json.dumps(listener.stats()["rejected"]), flush=True)
"""

# A well-behaved worker process: joins the listener named in LOGFUNNEL_ADDRESS, logs, leaves.
WORKER = """
import logging, sys
import logfunnel
logfunnel.install_worker_logging()
log = logging.getLogger("worker")
for i in range(int(sys.argv[1])):
    log.info("record %d", i)
logfunnel.uninstall_worker_logging()
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_worker(handle: _transport.QueueHandle, count: int) -> None:
    env = _env(LOGFUNNEL_ADDRESS=handle.address, LOGFUNNEL_AUTHKEY=handle.authkey.hex())
    done = subprocess.run([sys.executable, "-c", WORKER, str(count)], env=env, timeout=30, check=False)
    assert done.returncode == 0


def _expected(count: int) -> list[str]:
    return [f"record {i}" for i in range(count)]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _raw(address: str) -> socket.socket:
    family, sockaddr = _transport.parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(sockaddr)
    return sock


def _still_open(sock: socket.socket) -> bool:
    """Whether the listener still holds the connection open (nothing more to read, no end of stream)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return False
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(timeout)


def _banners(err: str) -> list[str]:
    """The messages of logfunnel's stderr banners (the line after each '--- logfunnel' line)."""
    lines = err.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("--- logfunnel (pid ")]


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# -- a listener in this process, writing to a file ------------------------------------------------------


@pytest.fixture
def start_funnel(tmp_path: Path) -> Iterator[Callable[..., FileFunnel]]:
    started: list[FileFunnel] = []

    def start(**options: Any) -> FileFunnel:
        started.append(FileFunnel(tmp_path / f"out{len(started)}.log", **options))
        return started[-1]

    try:
        yield start
    finally:
        for funnel in started:
            funnel.stop()


# -- descriptors ------------------------------------------------------------------------------------------


class ListenerProcess:
    """The LISTENER script in a child process with RLIMIT_NOFILE *limit*."""

    def __init__(self, tmp_path: Path, limit: int) -> None:
        self.log = tmp_path / "child.log"
        self.err_path = tmp_path / "child.err"
        self._err = open(self.err_path, "w", encoding="utf-8")  # noqa: SIM115  (closed in close())
        self.child = subprocess.Popen(
            [sys.executable, "-c", LISTENER, str(limit), str(self.log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=_env(),
            text=True,
        )
        address, key = json.loads(self._line())
        self.handle = _transport.QueueHandle(address, bytes.fromhex(key))
        self.process = psutil.Process(self.child.pid)

    def _line(self) -> str:
        assert self.child.stdout is not None
        line = self.child.stdout.readline()
        assert line, f"the listener process ended: {self.err_path.read_text(encoding='utf-8')}"
        return line

    def command(self, text: str) -> str:
        assert self.child.stdin is not None
        self.child.stdin.write(text + "\n")
        self.child.stdin.flush()
        return self._line()

    def cpu_share(self, seconds: float) -> float:
        """The share of one core that the listener process used over the next *seconds*."""
        before, started = _cpu(self.process), time.monotonic()
        time.sleep(seconds)
        return (_cpu(self.process) - before) / (time.monotonic() - started)

    def stop(self) -> int:
        """Stop the listener; return its rejected count."""
        assert self.child.stdin is not None
        self.child.stdin.close()
        rejected = int(json.loads(self._line()))
        assert self.child.wait(30) == 0
        return rejected

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(10)
        for stream in (self.child.stdin, self.child.stdout):
            if stream is not None:
                stream.close()
        self._err.close()

    def stderr_lines(self) -> list[str]:
        return self.err_path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def listener_process(tmp_path: Path) -> Iterator[Callable[[int], ListenerProcess]]:
    started: list[ListenerProcess] = []

    def start(limit: int) -> ListenerProcess:
        started.append(ListenerProcess(tmp_path, limit))
        return started[-1]

    try:
        yield start
    finally:
        for listener in started:
            listener.close()


def test_emfile_does_not_spin_the_listener(listener_process: Callable[[int], ListenerProcess]) -> None:
    """More idle peers than the listener has descriptors: no busy loop, no stderr flood, and a
    worker still gets in (the oldest peers waiting to authenticate make room)."""
    child = listener_process(64)
    idle = [_raw(child.handle.address) for _ in range(150)]  # the backlog holds what is not accepted
    try:
        time.sleep(0.5)
        share = child.cpu_share(3.0)
        assert share < 0.5, f"the listener used {share:.0%} of a core while out of descriptors"
        _run_worker(child.handle, 100)
        assert child.cpu_share(1.0) < 0.5
    finally:
        for sock in idle:
            sock.close()
    rejected = child.stop()
    assert rejected >= 150 - 64  # closed to make room, each counted
    assert child.log.read_text(encoding="utf-8").splitlines() == _expected(100)
    err = child.stderr_lines()
    assert len(err) < 200, f"{len(err)} lines on stderr"  # 422k in 10 s before the fix
    assert any(
        re.fullmatch(
            r"closed the connection of a peer: out of file descriptors \(Too many open files\): "
            r"closed the oldest connection waiting to authenticate",
            line,
        )
        for line in err
    ), err[:10]
    assert any(re.match(r"… \(and [\d,]+ more like it in the last \d+ s\): closed the", line) for line in err)


def test_emfile_with_nothing_to_give_up_backs_off(
    listener_process: Callable[[int], ListenerProcess],
) -> None:
    """Out of descriptors that the listener does not hold (the application's): it stops accepting
    for a moment instead of retrying in a loop, and accepts again once descriptors are free."""
    child = listener_process(64)
    assert child.command("fill").startswith("filled ")
    waiting = [_raw(child.handle.address) for _ in range(20)]
    try:
        share = child.cpu_share(3.0)
        assert share < 0.5, f"the listener used {share:.0%} of a core while out of descriptors"
        assert child.command("release") == "released\n"
        # Accepting again: each waiting connection gets its greeting (the pause ends within
        # ACCEPT_BACKOFF); only then does the worker, whose exit gives up at its first failed
        # connect, try to join.
        for sock in waiting:
            ready, _, _ = select.select([sock], [], [], 15)
            assert ready, "the listener did not accept again after descriptors were freed"
        _run_worker(child.handle, 100)
    finally:
        for sock in waiting:
            sock.close()
    child.stop()
    assert child.log.read_text(encoding="utf-8").splitlines() == _expected(100)
    err = child.stderr_lines()
    assert len(err) < 100, f"{len(err)} lines on stderr"
    pause = (
        r"accept\(\) failed: Too many open files; not accepting connections for 0\.5 s \(0 connections open\)"
    )
    assert any(re.fullmatch(pause + r" \(raise the limit: ulimit -n\)", line) for line in err), err[:10]


# -- connections that do not authenticate -----------------------------------------------------------------


def test_idle_unauthenticated_connections_are_capped(
    start_funnel: Callable[..., FileFunnel],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Beyond MAX_PENDING connections waiting to authenticate, the oldest is closed and counted; the
    newest stay, and a worker still connects and delivers everything."""
    monkeypatch.setattr(_serving, "MAX_PENDING", 8)
    monkeypatch.setattr(_serving, "HANDSHAKE_TIMEOUT", 3600.0)  # only the cap closes them here
    funnel = start_funnel()
    idle = []
    try:
        for _ in range(20):
            sock = _raw(funnel.listener.queue.address)
            _transport.recv_frame(sock)  # greeted: accepted, in this order
            idle.append(sock)
        _wait_for(lambda: funnel.rejected() == 12, "12 rejections")
        assert all(closed_by_listener(sock) for sock in idle[:12])
        assert all(_still_open(sock) for sock in idle[12:])
        _run_worker(funnel.listener.queue, 100)  # its connection, the 21st, closes the 13th
        _wait_for(lambda: funnel.rejected() == 13, "the 13th rejection")
        assert closed_by_listener(idle[12])
        assert all(_still_open(sock) for sock in idle[13:])
        funnel.stop()
    finally:
        for sock in idle:
            sock.close()
    assert funnel.lines() == _expected(100)
    assert funnel.rejected() == 13
    banners = _banners(capfd.readouterr().err)
    closing = [b for b in banners if b.startswith("closed the connection of ")]
    reason = r"more than 8 connections are waiting to authenticate: closed the oldest"
    assert closing and all(re.fullmatch(rf"closed the connection of a peer: {reason}", b) for b in closing)
    assert len(closing) <= 2 * _handling.BANNER_BURST
    summaries = [b for b in banners if b.startswith("… (and ")]
    counted = sum(int(re.match(r"… \(and ([\d,]+) more", b).group(1).replace(",", "")) for b in summaries)  # type: ignore[union-attr]
    assert len(closing) + counted == 13


# -- a frame begun and never finished ---------------------------------------------------------------------


def _authenticated(funnel: FileFunnel, pid: int) -> tuple[socket.socket, dict[str, Any]]:
    sock, plan = _transport.connect(funnel.listener.queue, (pid, f"peer-{pid}", os.urandom(8), 1))
    sock.settimeout(15)
    return sock, plan


def _empty_batch(plan: dict[str, Any]) -> bytes:
    return _wire.frame(_wire.encode((_wire.BATCH, 1, 0, 0, 0, [], [[] for _ in plan["formats"]], None)))


def test_peer_stalled_mid_frame_is_dropped_after_deadline(
    start_funnel: Callable[..., FileFunnel],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """An authenticated peer that begins a frame and stalls is closed once FRAME_TIMEOUT has passed,
    counted, and its process marked vanished; an idle authenticated worker is not."""
    monkeypatch.setattr(_serving, "FRAME_TIMEOUT", 0.5)
    funnel = start_funnel()
    quiet, plan = _authenticated(funnel, 4_000_010)
    quiet.sendall(_empty_batch(plan))  # a whole frame, then nothing: not a stall
    stalled, _ = _authenticated(funnel, 4_000_011)
    try:
        stalled.sendall(_wire.HEADER.pack(1000) + b"x" * 10)  # 10 bytes of 1000, then silence
        assert closed_by_listener(stalled), "the stalled peer was not closed"
        _wait_for(lambda: funnel.rejected() == 1, "the rejection to be counted")
        assert _still_open(quiet)
        states = {p["pid"]: p["state"] for p in funnel.listener.stats()["processes"]}
        assert states == {4_000_010: "connected", 4_000_011: "vanished"}
    finally:
        quiet.close()
        stalled.close()
    closing = [b for b in _banners(capfd.readouterr().err) if b.startswith("closed the connection of ")]
    assert closing == [
        "closed the connection of process 4000011: "
        "a frame begun 0.5 s ago is still incomplete (14 bytes buffered)"
    ]


def test_a_peer_that_keeps_finishing_its_frames_is_not_dropped(
    start_funnel: Callable[..., FileFunnel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline is per frame: a peer whose buffer always holds the start of its next frame, but
    that finishes each one in time, keeps its connection however long it goes on."""
    monkeypatch.setattr(_serving, "FRAME_TIMEOUT", 2.0)
    funnel = start_funnel()
    peer, plan = _authenticated(funnel, 4_000_012)
    frame = _empty_batch(plan)
    try:
        peer.sendall(frame[:3])
        for _ in range(6):  # 3 s in all, longer than the deadline; 0.5 s for each frame
            time.sleep(0.5)
            peer.sendall(frame[3:] + frame[:3])
        assert _still_open(peer)
        assert funnel.rejected() == 0
    finally:
        peer.close()


# -- the listener's own stderr ----------------------------------------------------------------------------


def test_banner_flood_is_rate_limited(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """10,000 messages of one kind: a few are written, the rest summed up in one line later."""
    monkeypatch.setattr(_handling, "BANNER_WINDOW", 3600.0)  # one window for the whole flood
    monkeypatch.setattr(_handling, "BANNER_SUMMARY", 3600.0)
    for i in range(10_000):
        _handling.banner(f"closed the connection of a peer: a frame of {i} bytes exceeds the limit")
    _handling.banner("another kind of message")  # not held back by the flood of the first kind
    first = _banners(capfd.readouterr().err)
    assert first == [
        *(f"closed the connection of a peer: a frame of {i} bytes exceeds the limit" for i in range(5)),
        "another kind of message",
    ]
    _handling.flush_banners()  # too early: nothing yet
    assert _banners(capfd.readouterr().err) == []
    monkeypatch.setattr(_handling, "BANNER_SUMMARY", 0.0)  # as if the summary interval had passed
    _handling.flush_banners()
    (summary,) = _banners(capfd.readouterr().err)
    assert re.fullmatch(
        r"… \(and 9,995 more like it in the last \d+ s\): "
        r"closed the connection of a peer: a frame of 9999 bytes exceeds the limit",
        summary,
    )
    _handling.flush_banners(force=True)  # once summed up, gone
    assert _banners(capfd.readouterr().err) == []


# -- where the listener agrees to listen ------------------------------------------------------------------


CALLERS: dict[str, Callable[..., Any]] = {
    "start_listener()": logfunnel.start_listener,
    "LogListener()": lambda **kw: logfunnel.LogListener(None, **kw),
    "LogManager()": logfunnel.LogManager,
}
EVERYWHERE = {"tcp://0.0.0.0:0": "0.0.0.0, every interface", "tcp://[::]:0": "::, every interface"}


@pytest.mark.parametrize("address", list(EVERYWHERE))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_non_loopback_bind_is_refused_without_opt_in(caller: str, address: str) -> None:
    """An address beyond loopback is a ValueError in the caller, saying why and how to opt in."""
    what = EVERYWHERE[address]
    pattern = (
        rf"^{re.escape(caller)} got address={re.escape(repr(address))}, which is not loopback "
        rf"\({re.escape(what)}\): records and the handshake would travel unencrypted, and anyone who "
        r"can reach the port could try the auth key; listen on 'tcp://127\.0\.0\.1:PORT' or a Unix "
        r"socket, or pass allow_remote=True to listen there anyway$"
    )
    with pytest.raises(ValueError, match=pattern):
        CALLERS[caller](address=address)


def test_loopback_names_are_resolved_and_accepted() -> None:
    """localhost, all of 127.0.0.0/8 and ::1 are loopback; a name that does not resolve is refused."""
    for address in ("tcp://localhost:0", "tcp://127.0.0.2:0", "tcp://[::1]:0", "tcp://[::ffff:127.0.0.1]:0"):
        assert _checks.check_address(address, "start_listener()") == address
    with pytest.raises(
        ValueError, match=r"^start_listener\(\) got address='tcp://nowhere\.invalid:0', whose host"
    ):
        _checks.check_address("tcp://nowhere.invalid:0", "start_listener()")
    with pytest.raises(
        TypeError, match=r"^start_listener\(\) expected allow_remote as True or False, got 'str'$"
    ):
        logfunnel.start_listener(address="tcp://127.0.0.1:0", allow_remote="yes")  # type: ignore[arg-type]


def test_create_server_checks_what_it_bound() -> None:
    """The bind itself is checked too (a name can resolve differently after the caller's check)."""
    with pytest.raises(ValueError, match=r"^refused to listen at tcp://0\.0\.0\.0:0: it is not a loopback"):
        _transport.create_server("tcp://0.0.0.0:0")


_WARNING = (
    r"listening at tcp://0\.0\.0\.0:\d+, beyond loopback \(allow_remote=True\): records and the handshake "
    r"travel unencrypted, and anyone who can reach the port can try the auth key; keep the port behind a "
    r"firewall, or listen on 'tcp://127\.0\.0\.1:PORT' or a Unix socket"
)


def test_remote_bind_with_opt_in_warns(
    start_funnel: Callable[..., FileFunnel], capfd: pytest.CaptureFixture[str]
) -> None:
    """With allow_remote=True the listener binds every interface, says so on stderr, and serves."""
    funnel = start_funnel(address="tcp://0.0.0.0:0", allow_remote=True)
    assert funnel.listener.address.startswith("tcp://0.0.0.0:")  # type: ignore[union-attr]
    warnings = [b for b in _banners(capfd.readouterr().err) if re.fullmatch(_WARNING, b)]
    assert len(warnings) == 1
    _run_worker(funnel.listener.queue, 50)
    funnel.stop()
    assert funnel.lines() == _expected(50)


def test_remote_bind_with_opt_in_reaches_the_manager_process(capfd: pytest.CaptureFixture[str]) -> None:
    """LogManager(allow_remote=True) passes the opt-in to its process, which warns in the same words."""
    with logfunnel.LogManager(address="tcp://0.0.0.0:0", allow_remote=True) as manager:
        assert manager.address is not None and manager.address.startswith("tcp://0.0.0.0:")
    warnings = [b for b in _banners(capfd.readouterr().err) if re.fullmatch(_WARNING, b)]
    assert len(warnings) == 1
