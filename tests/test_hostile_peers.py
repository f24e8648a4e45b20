"""A listener faced with peers that are broken or malicious: each is closed and counted in
``stats()["rejected"]``, nothing it sends is executed, and well-behaved workers connected at the same
time are neither stalled nor short of a single record."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import logfunnel
import logfunnel._serving
import logfunnel.listener
from _funnel import FileFunnel
from _workers import closed_by_listener
from logfunnel import _render, _transport, _wire

pytestmark = pytest.mark.timeout(30)  # every test here starts a listener thread

FORMAT = "%(levelname)s %(name)s %(message)s"
N = 200  # records per good batch


# -- a listener writing to a file -----------------------------------------------------------------------


@pytest.fixture(params=[None, "tcp://127.0.0.1:0"], ids=["unix", "tcp"])
def start_funnel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], FileFunnel]]:
    """Start a listener (on the default private Unix socket, or on loopback TCP); stopped at teardown."""
    started: list[FileFunnel] = []

    def start() -> FileFunnel:
        started.append(FileFunnel(tmp_path / "out.log", FORMAT, address=request.param))
        return started[-1]

    try:
        yield start
    finally:
        for funnel in started:
            funnel.stop()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- a well-behaved worker, speaking the protocol from this thread ----------------------------------------


class GoodWorker:
    """Sends batches as worker.py's sender thread does: lines for each planned format, records if asked."""

    def __init__(self, handle: _transport.QueueHandle, name: str) -> None:
        self.name = name
        self.sock, self.plan = _transport.connect(handle, (os.getpid(), name, os.urandom(8), os.getppid()))
        self.renderers = [_render.Renderer(spec) for spec in self.plan["formats"]]
        self.sent = 0

    def send(self, count: int) -> None:
        batch = []
        for seq in range(self.sent + 1, self.sent + count + 1):
            record = logging.LogRecord(
                "good", logging.INFO, __file__, 1, "%s record %d", (self.name, seq), None
            )
            record.message = record.getMessage()
            batch.append(record)
        lines = [[renderer.format(record) for record in batch] for renderer in self.renderers]
        states = None
        if self.plan["full"]:
            states = [{**record.__dict__, "msg": record.message, "args": None} for record in batch]
        message = (
            _wire.BATCH,
            self.sent + 1,
            self.sent + count,
            0,
            0,
            [r.levelno for r in batch],
            lines,
            states,
        )
        self.sock.sendall(_wire.frame(_wire.encode(message)))
        self.sent += count

    def bye(self) -> None:
        self.sock.sendall(_wire.frame(_wire.encode((_wire.BYE, self.sent, 0, 0))))
        self.sock.close()

    def expected(self) -> list[str]:
        return [f"INFO good {self.name} record {seq}" for seq in range(1, self.sent + 1)]


# -- hostile peers --------------------------------------------------------------------------------------


def _raw(funnel: FileFunnel) -> socket.socket:
    family, sockaddr = _transport.parse_address(funnel.queue.address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(sockaddr)
    return sock


def _greeted(funnel: FileFunnel) -> tuple[socket.socket, bytes]:
    sock = _raw(funnel)
    greeting = _transport.recv_frame(sock)
    assert greeting.startswith(_transport.GREETING)
    return sock, greeting[len(_transport.GREETING) :]


def _hello(pid: int = 4_000_001) -> bytes:
    return _wire.encode((pid, "hostile", os.urandom(8), 1))


class _System:
    """Unpickles as os.system(command): the classic remote-code-execution pickle."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _authenticated(funnel: FileFunnel, *frames: bytes) -> socket.socket:
    sock, _ = _transport.connect(funnel.queue, (4_000_002, "hostile", os.urandom(8), 1))
    sock.settimeout(15)
    sock.sendall(b"".join(frames))
    return sock


def _batch(*fields: Any) -> bytes:
    return _wire.frame(_wire.encode((_wire.BATCH, *fields)))


def _raw_pickle(obj: Any) -> bytes:
    return _wire.frame(pickle.dumps(obj))


# Each attack returns the socket the listener must close, and what the listener must say about it.
# A pickle is not MessagePack: refused at its second byte, before anything in it is looked at.
_GLOBAL_REFUSED = (
    r"undecodable frame \(DecodeError: MessagePack data is malformed: trailing characters \(byte 1\)\)"
)
# After authentication, a frame that does not start as a message is refused before it is decoded.
_NOT_A_MESSAGE = r"not a message: expected an array that starts with its kind"
_PRE_AUTH = "a peer"
_POST_AUTH = "process 4000002"

Attack = Callable[[FileFunnel, Path], socket.socket]


def _garbage(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock = _raw(funnel)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    return sock


def _wrong_key(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock, challenge = _greeted(funnel)
    sock.sendall(_wire.frame(_transport.answer(b"a guessed key", challenge) + os.urandom(32) + _hello()))
    return sock


def _replayed_digest(funnel: FileFunnel, marker: Path) -> socket.socket:
    # A digest that was right for another connection's challenge is worthless for this one.
    other, other_challenge = _greeted(funnel)
    other.close()
    sock, _ = _greeted(funnel)
    sock.sendall(
        _wire.frame(_transport.answer(funnel.queue.authkey, other_challenge) + os.urandom(32) + _hello())
    )
    return sock


def _huge_prefix(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock = _raw(funnel)
    sock.sendall(b"\xff\xff\xff\xff")
    return sock


def _oversized_handshake(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock = _raw(funnel)
    sock.sendall(_wire.HEADER.pack(64 * 1024 + 1) + b"x" * 1000)
    return sock


def _short_reply(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock, _ = _greeted(funnel)
    sock.sendall(_wire.frame(b"hello?"))
    return sock


def _malformed_hello(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock, challenge = _greeted(funnel)
    hello = _wire.encode(("pid", "name", b"x", 1))
    sock.sendall(_wire.frame(_transport.answer(funnel.queue.authkey, challenge) + os.urandom(32) + hello))
    return sock


def _global_in_hello(funnel: FileFunnel, marker: Path) -> socket.socket:
    sock, challenge = _greeted(funnel)
    evil = pickle.dumps(_System(f"touch {marker}"))
    sock.sendall(_wire.frame(_transport.answer(funnel.queue.authkey, challenge) + os.urandom(32) + evil))
    return sock


def _global_after_auth(funnel: FileFunnel, marker: Path) -> socket.socket:
    return _authenticated(funnel, _raw_pickle(_System(f"touch {marker}")))


def _global_inside_a_batch(funnel: FileFunnel, marker: Path) -> socket.socket:
    evil = (
        _wire.BATCH,
        1,
        1,
        0,
        0,
        [20],
        [["line"]],
        [{"levelno": 20, "name": "x", "extra": _System(f"touch {marker}")}],
    )
    return _authenticated(funnel, _raw_pickle(evil))


def _huge_prefix_after_auth(funnel: FileFunnel, marker: Path) -> socket.socket:
    return _authenticated(funnel, b"\xff\xff\xff\xff")


def _garbage_after_auth(funnel: FileFunnel, marker: Path) -> socket.socket:
    return _authenticated(funnel, _wire.frame(b'{"json": true}'))


# (attack, who, reason): the banner line is "closed the connection of WHO: REASON".
ATTACKS: dict[str, tuple[Attack, str, str]] = {
    "http-garbage": (_garbage, _PRE_AUTH, r"a frame of 1195725856 bytes exceeds the limit of 65536 bytes"),
    "wrong-key": (_wrong_key, _PRE_AUTH, r"authentication failed: the peer does not know the auth key"),
    "replayed-digest": (
        _replayed_digest,
        _PRE_AUTH,
        r"authentication failed: the peer does not know the auth key",
    ),
    "4GiB-prefix": (_huge_prefix, _PRE_AUTH, r"a frame of 4294967295 bytes exceeds the limit of 65536 bytes"),
    "oversized-handshake": (
        _oversized_handshake,
        _PRE_AUTH,
        r"a frame of 65537 bytes exceeds the limit of 65536 bytes",
    ),
    "short-reply": (_short_reply, _PRE_AUTH, r"short handshake reply: not a logfunnel worker"),
    "malformed-hello": (_malformed_hello, _PRE_AUTH, r"malformed hello \('pid', 'name', b'x', 1\)"),
    "global-in-hello": (_global_in_hello, _PRE_AUTH, _GLOBAL_REFUSED),
    "global-after-auth": (_global_after_auth, _POST_AUTH, _NOT_A_MESSAGE),
    "global-inside-a-batch": (_global_inside_a_batch, _POST_AUTH, _NOT_A_MESSAGE),
    "4GiB-prefix-after-auth": (
        _huge_prefix_after_auth,
        _POST_AUTH,
        r"a frame of 4294967295 bytes exceeds the limit of 16777216 bytes",
    ),
    "garbage-after-auth": (_garbage_after_auth, _POST_AUTH, _NOT_A_MESSAGE),
}

# Well-formed pickles of plain values that are not a valid message: the listener checks every field
# before it uses any. The plan has one format (the FileHandler's), so a batch carries one list of lines.
MALFORMED: dict[str, tuple[list[bytes], str]] = {
    "empty-tuple": (
        [_wire.frame(_wire.encode(()))],
        r"not a message: expected an array that starts with its kind",
    ),
    "not-a-container": (
        [_wire.frame(_wire.encode("BATCH"))],
        r"not a message: expected an array that starts with its kind",
    ),
    "unknown-kind": ([_wire.frame(_wire.encode((99, "x")))], r"unknown message kind 99"),
    "batch-too-short": (
        [_batch(1, 1, 0, 0, [20])],
        r"malformed batch: Expected `array` of at least length 8, got 6",
    ),
    "bye-with-text": (
        [_wire.frame(_wire.encode((_wire.BYE, "many", 0, 0)))],
        r"malformed goodbye: Expected `int`, got `str` - at `\$\[1\]`",
    ),
    "sequence-zero": (
        [_batch(0, 1, 0, 0, [20], [["x"]], None)],
        r"malformed batch: Expected `int` >= 1 - at `\$\[1\]`",
    ),
    "sequence-text": (
        [_batch("1", 1, 0, 0, [20], [["x"]], None)],
        r"malformed batch: Expected `int`, got `str` - at `\$\[1\]`",
    ),
    "sequence-bool": (
        [_batch(True, 1, 0, 0, [20], [["x"]], None)],
        r"malformed batch: Expected `int`, got `bool` - at `\$\[1\]`",
    ),
    "level-text": (
        [_batch(1, 1, 0, 0, ["INFO"], [["x"]], None)],
        r"malformed batch: Expected `int`, got `str` - at `\$\[5\]\[0\]`",
    ),
    "no-lines": ([_batch(1, 1, 0, 0, [20], [], None)], r"malformed batch: expected 1 lists of lines"),
    "lines-not-list": (
        [_batch(1, 1, 0, 0, [20], "x", None)],
        r"malformed batch: Expected `array`, got `str` - at `\$\[6\]`",
    ),
    "too-few-lines": (
        [_batch(1, 2, 0, 0, [20, 20], [["x"]], None)],
        r"malformed batch: a list of lines does not match the levels",
    ),
    "records-too-short": (
        [_batch(1, 1, 0, 0, [20], [["x"]], [])],
        r"malformed batch: records do not match the levels",
    ),
    "record-not-dict": (
        [_batch(1, 1, 0, 0, [20], [["x"]], ["x"])],
        r"malformed batch: Expected `object`, got `str` - at `\$\[7\]\[0\]`",
    ),
    "record-level-text": (
        [_batch(1, 1, 0, 0, [20], [["x"]], [{"levelno": "20", "name": "x"}])],
        r"malformed batch: a record is not an attribute dict",
    ),
    "sequence-went-back": (
        [_batch(5, 4, 0, 0, [], [[]], None), _batch(2, 4, 0, 0, [], [[]], None)],
        r"sequence number 2 went back \(expected 5\)",
    ),
}


def _closing_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("closed the connection of ")]


def _check_survives(
    start_funnel: Callable[[], FileFunnel],
    capfd: pytest.CaptureFixture[str],
    attack: Callable[[FileFunnel], socket.socket],
    who: str,
    reason: str,
) -> None:
    funnel = start_funnel()
    good = GoodWorker(funnel.queue, "steady")
    good.send(N)
    bad = attack(funnel)
    try:
        assert closed_by_listener(bad), "the listener did not close the hostile peer"
    finally:
        bad.close()
    _wait_for(lambda: funnel.listener.stats()["rejected"] == 1, "the rejection to be counted")

    good.send(N)  # the connection that was open during the attack is still served
    late = GoodWorker(funnel.queue, "late")  # and new workers are still let in
    late.send(N)
    late.bye()
    good.bye()
    _wait_for(
        lambda: funnel.process("steady").get("state") == funnel.process("late").get("state") == "exited",
        "both good workers to say goodbye",
    )
    funnel.stop()

    lines = funnel.lines()
    assert [line for line in lines if "steady" in line] == good.expected()
    assert [line for line in lines if "late" in line] == late.expected()
    assert len(lines) == 3 * N
    stats = funnel.listener.stats()
    assert stats["rejected"] == 1
    assert (stats["received"], stats["lost"], stats["dropped"]) == (3 * N, 0, 0)
    assert (funnel.process("steady")["received"], funnel.process("steady")["lost"]) == (2 * N, 0)
    closing = _closing_lines(capfd.readouterr().err)
    assert len(closing) == 1
    assert re.fullmatch(rf"closed the connection of {who}: {reason}", closing[0]), closing[0]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_peer_is_closed_without_harming_a_good_worker(
    start_funnel: Callable[[], FileFunnel], capfd: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    """The hostile peer is closed, counted and named; nothing runs; no good record is lost or delayed."""
    attack, who, reason = ATTACKS[name]
    marker = tmp_path / "pwned"
    _check_survives(start_funnel, capfd, lambda funnel: attack(funnel, marker), who, reason)
    assert not marker.exists(), "a pickle from a peer was executed"


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_message_after_auth_closes_only_that_peer(
    start_funnel: Callable[[], FileFunnel], capfd: pytest.CaptureFixture[str], name: str
) -> None:
    """An authenticated peer that sends a well-pickled but malformed message is closed, nobody else."""
    frames, reason = MALFORMED[name]
    _check_survives(start_funnel, capfd, lambda funnel: _authenticated(funnel, *frames), _POST_AUTH, reason)


def _still_open(sock: socket.socket) -> bool:
    """Whether the listener still holds the connection open (nothing to read, and no end of stream)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout set, recv would wait for data instead of saying there is none
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(timeout)


def _silent(funnel: FileFunnel) -> socket.socket:
    return _raw(funnel)


def _greeted_then_silent(funnel: FileFunnel) -> socket.socket:
    return _greeted(funnel)[0]


def _half_a_header(funnel: FileFunnel) -> socket.socket:
    sock = _raw(funnel)
    sock.sendall(b"\x00\x00")
    return sock


def _half_a_handshake(funnel: FileFunnel) -> socket.socket:
    sock, challenge = _greeted(funnel)
    reply = _wire.frame(_transport.answer(funnel.queue.authkey, challenge) + os.urandom(32) + _hello())
    sock.sendall(reply[:-5])  # all but the last bytes: the listener must not wait for them
    return sock


STALLERS = {
    "silent": _silent,
    "greeted-then-silent": _greeted_then_silent,
    "half-a-header": _half_a_header,
    "half-a-handshake": _half_a_handshake,
}


@pytest.mark.parametrize("name", list(STALLERS))
def test_a_stalled_peer_does_not_stall_the_others(
    start_funnel: Callable[[], FileFunnel], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """While a peer sits mid-handshake, other workers connect and deliver everything."""
    monkeypatch.setattr(logfunnel._serving, "HANDSHAKE_TIMEOUT", 3600.0)  # the staller outlives the test
    funnel = start_funnel()
    stalled = STALLERS[name](funnel)
    try:
        first = GoodWorker(funnel.queue, "first")
        first.send(N)
        second = GoodWorker(funnel.queue, "second")
        second.send(N)
        first.send(N)
        first.bye()
        second.bye()
        _wait_for(lambda: funnel.listener.stats()["received"] == 3 * N, "every good record to arrive")
        assert _still_open(stalled)
        assert funnel.listener.stats()["rejected"] == 0
        funnel.stop()
        assert closed_by_listener(stalled), "stop() left a connection open"
    finally:
        stalled.close()
    lines = funnel.lines()
    assert [line for line in lines if line.startswith("INFO good first ")] == first.expected()
    assert [line for line in lines if line.startswith("INFO good second ")] == second.expected()
    assert len(lines) == 3 * N


@pytest.mark.parametrize("name", list(STALLERS))
def test_a_stalled_peer_is_closed_after_the_handshake_timeout(
    start_funnel: Callable[[], FileFunnel],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    name: str,
) -> None:
    """A peer that never completes the handshake is closed and counted once the timeout passes."""
    monkeypatch.setattr(logfunnel._serving, "HANDSHAKE_TIMEOUT", 0.5)
    _check_survives(start_funnel, capfd, STALLERS[name], _PRE_AUTH, r"no handshake within 0\.5 s")


def test_an_authenticated_peer_is_not_timed_out(
    start_funnel: Callable[[], FileFunnel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handshake timeout applies to the handshake only: an idle worker keeps its connection."""
    monkeypatch.setattr(logfunnel._serving, "HANDSHAKE_TIMEOUT", 0.5)
    funnel = start_funnel()
    idle = GoodWorker(funnel.queue, "idle")
    # A silent peer accepted after "idle" is the clock: once the listener has closed it for its
    # timeout, it has also passed the deadline that "idle" had for its handshake.
    clock = _silent(funnel)
    try:
        assert closed_by_listener(clock)
    finally:
        clock.close()
    _wait_for(lambda: funnel.listener.stats()["rejected"] == 1, "the silent peer's rejection")
    assert _still_open(idle.sock)
    idle.send(N)
    idle.bye()
    _wait_for(lambda: funnel.process("idle").get("state") == "exited", "the idle worker's goodbye")
    funnel.stop()
    assert funnel.listener.stats()["rejected"] == 1
    assert funnel.lines() == idle.expected()


def test_a_peer_that_hangs_up_before_the_handshake_is_not_a_rejection(
    start_funnel: Callable[[], FileFunnel],
) -> None:
    """A peer that connects and closes (a port probe, a dead worker) ends quietly, not as a rejection."""
    funnel = start_funnel()
    for make in (_silent, _greeted_then_silent):
        make(funnel).close()
    good = GoodWorker(funnel.queue, "after-probes")  # its handshake comes after both hang-ups
    good.send(N)
    good.bye()
    _wait_for(lambda: funnel.process("after-probes").get("state") == "exited", "the worker's goodbye")
    funnel.stop()
    assert funnel.listener.stats()["rejected"] == 0
    assert funnel.lines() == good.expected()


# -- a real worker process alongside every kind of hostile peer at once -----------------------------------


def _child(handle: _transport.QueueHandle, count: int) -> None:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("child")
    for seq in range(1, count + 1):
        log.info("real worker record %d", seq)
    logfunnel.uninstall_worker_logging()


def test_a_real_worker_delivers_everything_while_under_attack(
    start_funnel: Callable[[], FileFunnel], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A forked worker using install_worker_logging loses nothing while hostile peers come and go."""
    monkeypatch.setattr(logfunnel._serving, "HANDSHAKE_TIMEOUT", 3600.0)
    funnel = start_funnel()
    marker = tmp_path / "pwned"
    stalled = [make(funnel) for make in STALLERS.values()]
    closed = [attack(funnel, marker) for attack, _, _ in ATTACKS.values()]
    closed += [_authenticated(funnel, *frames) for frames, _ in MALFORMED.values()]
    try:
        # Fork only once the listener has closed them: a child inherits the listener's descriptors,
        # and a peer would not see its connection end while the child holds a copy.
        assert all(closed_by_listener(sock) for sock in closed)
        _wait_for(lambda: funnel.listener.stats()["rejected"] == len(closed), "every rejection to be counted")
        child = multiprocessing.get_context("fork").Process(
            target=_child, args=(funnel.queue, 5 * N), name="real-worker"
        )
        child.start()
        child.join(20)
        assert child.exitcode == 0
        _wait_for(lambda: funnel.process("real-worker").get("state") == "exited", "the worker's goodbye")
        assert all(_still_open(sock) for sock in stalled)
        funnel.stop()
    finally:
        for sock in stalled + closed:
            sock.close()
    real = funnel.process("real-worker")
    assert real["pid"] == child.pid
    assert (real["received"], real["lost"], real["dropped"]) == (5 * N, 0, 0)
    assert funnel.lines() == [f"INFO child real worker record {seq}" for seq in range(1, 5 * N + 1)]
    assert funnel.listener.stats()["rejected"] == len(closed)
    assert not marker.exists()
