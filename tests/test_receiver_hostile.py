"""start_receiver against hostile peers: each is refused and counted, and an honest peer sending at the
same time loses nothing."""

from __future__ import annotations

import logging
import logging.handlers
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import logfunnel
from logfunnel._receiver import LogReceiver

HONEST = 300


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll *condition* until true; fail after *timeout* seconds (a hang guard, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {condition}")
        time.sleep(0.02)


def frame(payload: bytes) -> bytes:
    return struct.pack(">L", len(payload)) + payload


def record_dict(msg: str = "hostile", **fields: Any) -> dict[str, Any]:
    state = logging.LogRecord("hostile", logging.WARNING, __file__, 1, msg, None, None).__dict__.copy()
    state.update(fields)
    return state


class Setup:
    def __init__(self, receiver: LogReceiver, got: Collect) -> None:
        self.receiver, self.got = receiver, got
        assert receiver.tcp_address is not None and receiver.udp_address is not None
        self.tcp, self.udp = receiver.tcp_address, receiver.udp_address
        self.honest = threading.Thread(target=self._send_honestly)

    def _send_honestly(self) -> None:
        tcp, udp = logging.handlers.SocketHandler(*self.tcp), logging.handlers.DatagramHandler(*self.udp)
        for n in range(HONEST):
            record = logging.LogRecord("honest", logging.INFO, __file__, 1, "honest %d", (n,), None)
            (udp if n % 10 == 0 else tcp).handle(record)
            if n % 20 == 0:
                time.sleep(0.01)  # spread over the hostile peer's visit
        tcp.close()
        udp.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(self.tcp, timeout=10)

    def peer(self, sock: socket.socket, transport: str = "tcp") -> dict[str, Any]:
        host, port = sock.getsockname()[:2]
        name = f"{transport}:{host}:{port}"
        found: list[dict[str, Any]] = []

        def listed() -> bool:
            found[:] = [peer for peer in self.receiver.stats()["peers"] if peer["peer"] == name]
            return bool(found)

        wait_for(listed)  # accepted (or its first datagram read) a moment after it connected
        return found[0]

    def honest_all_arrived(self) -> None:
        self.honest.join(60)
        wait_for(lambda: sum(r.name == "honest" for r in self.got.records) == HONEST)
        messages = sorted(r.getMessage() for r in self.got.records if r.name == "honest")
        assert messages == sorted(f"honest {n}" for n in range(HONEST))


@pytest.fixture
def setup() -> Iterator[Setup]:
    got = Collect()
    with logfunnel.start_receiver([got], tcp="127.0.0.1:0", udp="127.0.0.1:0", frame_timeout=0.5) as receiver:
        state = Setup(receiver, got)
        state.honest.start()
        yield state
        state.honest.join(60)


def closed_by_receiver(sock: socket.socket) -> bool:
    """Whether the receiver closed *sock* (EOF or reset), waiting up to its timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class MakesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


@pytest.mark.timeout(90)
def test_crafted_pickle_is_refused_counted_and_never_executed(setup: Setup, tmp_path: Path) -> None:
    """A record pickle whose __reduce__ creates a file is refused and counted; the file never exists."""
    target = tmp_path / "pwned"
    with setup.connect() as sock:
        sock.sendall(frame(pickle.dumps(record_dict(evil=MakesAFile(str(target))), 1)))
        wait_for(lambda: setup.peer(sock)["reasons"].get("pickle") == 1)
        assert "GLOBAL" in setup.peer(sock)["last_refusal"]
    setup.honest_all_arrived()
    assert not target.exists()
    assert not any(r.name == "hostile" for r in setup.got.records)


@pytest.mark.timeout(90)
def test_a_refused_pickle_leaves_the_connection_open(setup: Setup) -> None:
    """After a refused pickle, the same connection's next record still arrives (its framing holds)."""
    with setup.connect() as sock:
        sock.sendall(frame(b"\x80\x02cos\nsystem\n.") + frame(pickle.dumps(record_dict("after"), 1)))
        wait_for(lambda: any(r.getMessage() == "after" for r in setup.got.records))
        assert setup.peer(sock)["rejected"] == 1 and setup.peer(sock)["received"] == 1
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
def test_frame_length_of_2_31_closes_that_peer_only(setup: Setup) -> None:
    """A frame header of 2**31 bytes closes that connection, counted as oversized."""
    with setup.connect() as sock:
        sock.sendall(struct.pack(">L", 2**31))
        assert closed_by_receiver(sock)
        peer = setup.peer(sock)
    assert peer["reasons"] == {"oversized": 1} and peer["state"] == "closed"
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
def test_slow_loris_is_timed_out_and_closed_while_others_are_served(setup: Setup) -> None:
    """A frame begun and never finished is timed out (frame_timeout) and its connection closed."""
    with setup.connect() as sock:
        sock.sendall(struct.pack(">L", 1000) + b"\x80\x02")
        assert closed_by_receiver(sock)
        assert setup.peer(sock)["reasons"] == {"timeout": 1}
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
def test_random_bytes_are_refused_and_counted(setup: Setup) -> None:
    """64 KiB of random bytes cost that peer its frames (or its connection), nobody else anything."""
    with setup.connect() as sock:
        try:
            sock.sendall(os.urandom(64 * 1024))
        except OSError:
            pass  # closed by the receiver in the middle: fine
        wait_for(lambda: setup.peer(sock)["rejected"] >= 1)
    setup.honest_all_arrived()
    assert not any(r.name == "hostile" for r in setup.got.records)


def nested(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def laughs() -> bytes:
    value: Any = "lol" * 100
    for _ in range(25):
        value = [value] * 10
    return pickle.dumps(record_dict(laughs=value), 1)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (nested(100_000), "nested deeper than 32"),
        (laughs(), "with shared references expanded"),
        (b"(I" + b"9" * 200_000 + b"\nl.", "more than 640 digits"),
        (b"\x80\x02\x8b" + struct.pack("<i", 500_000) + b"\x7f" * 500_000 + b".", "500000 bytes"),
    ],
    ids=["deep-nesting", "memo-blow-up", "huge-text-int", "huge-long4"],
)
def test_pickles_that_would_cost_too_much_are_refused(setup: Setup, payload: bytes, why: str) -> None:
    """Deep nesting, memo sharing blow-ups and huge ints are refused as pickles, counted, saying why."""
    with setup.connect() as sock:
        sock.sendall(frame(payload))
        wait_for(lambda: setup.peer(sock)["reasons"].get("pickle") == 1)
        assert why in setup.peer(sock)["last_refusal"]
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
def test_hostile_format_width_with_args_is_refused(setup: Setup) -> None:
    """msg='%0999999999d' with args=(1,) is refused as a record: no handler ever formats it."""
    with setup.connect() as sock:
        sock.sendall(frame(pickle.dumps(record_dict("%0999999999d", args=(1,)), 1)))
        wait_for(lambda: setup.peer(sock)["reasons"].get("record") == 1)
        assert "wider than 100" in setup.peer(sock)["last_refusal"]
    setup.honest_all_arrived()
    assert not any(r.name == "hostile" for r in setup.got.records)


@pytest.mark.timeout(90)
def test_a_width_of_a_million_digits_is_refused_without_converting_it(setup: Setup) -> None:
    """A conversion whose width has a million digits is refused by its length (int() of it is slow)."""
    with setup.connect() as sock:
        sock.sendall(frame(pickle.dumps(record_dict("%" + "9" * 1_000_000 + "d", args=(1,)), 1)))
        wait_for(lambda: setup.peer(sock)["reasons"].get("record") == 1)
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
def test_cheap_args_are_merged_into_the_message(setup: Setup) -> None:
    """A record with plain args and narrow conversions arrives merged, with args None."""
    with setup.connect() as sock:
        sock.sendall(frame(pickle.dumps(record_dict("%s has %5.1f%%", args=("disk", 93.25)), 1)))
        wait_for(lambda: any(r.name == "hostile" for r in setup.got.records))
    (record,) = [r for r in setup.got.records if r.name == "hostile"]
    assert record.msg == "disk has  93.2%" and record.args is None
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("state", "why"),
    [
        (record_dict(getMessage="x"), "would shadow a LogRecord method"),
        (record_dict(levelno="20"), "expected levelno as an int"),
        (record_dict(created="yesterday"), "expected created as float, got a str"),
        (record_dict(args={"a": 1}, msg="%(a)s"), "args is a dict"),
        ([1, 2, 3], "expected a dict of record attributes, got a list"),
    ],
    ids=["shadow", "levelno", "created", "mapping", "not-a-dict"],
)
def test_malformed_records_are_refused_and_counted(setup: Setup, state: Any, why: str) -> None:
    """A record dict with a wrong type, a shadowing key or mapping args is refused, saying why."""
    with setup.connect() as sock:
        sock.sendall(frame(pickle.dumps(state, 1)))
        wait_for(lambda: setup.peer(sock)["reasons"].get("record") == 1)
        assert why in setup.peer(sock)["last_refusal"]
    setup.honest_all_arrived()


@pytest.mark.timeout(90)
def test_bad_datagrams_are_counted_and_dropped(setup: Setup) -> None:
    """A garbage datagram, one with a wrong length and one with a crafted pickle are each counted."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(setup.udp)
        sock.send(os.urandom(100))
        sock.send(struct.pack(">L", 5000) + b"\x80\x02N.")
        sock.send(frame(b"\x80\x02cos\nsystem\n."))
        wait_for(lambda: setup.peer(sock, "udp")["rejected"] == 3)
        assert setup.peer(sock, "udp")["reasons"] == {"datagram": 2, "pickle": 1}
    setup.honest_all_arrived()


@pytest.mark.timeout(60)
def test_connections_beyond_the_limit_are_closed_and_counted() -> None:
    """With max_connections=3, a fourth and fifth idle connection are closed at once, counted."""
    with logfunnel.start_receiver([Collect()], tcp="127.0.0.1:0", max_connections=3) as receiver:
        assert receiver.tcp_address is not None
        socks = [socket.create_connection(receiver.tcp_address, timeout=10) for _ in range(5)]
        try:
            wait_for(lambda: receiver.stats()["reasons"].get("connections") == 2)
            assert receiver.stats()["connections"] == 3
        finally:
            for sock in socks:
                sock.close()
