"""start_receiver: stdlib SocketHandler and DatagramHandler clients, from other interpreters too."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import logfunnel
from _need import missing
from logfunnel._receiver import LogReceiver

CLIENT = os.path.join(os.path.dirname(__file__), "_receiver_clients.py")
PYTHONS = {
    "3.10": "/root/.pyenv/versions/3.10.13/bin/python",
    "3.13": "/root/.pyenv/versions/3.13.0/bin/python",
}
FIELDS = ("created", "process", "name", "levelno", "msg", "exc_text", "seq", "tags", "nested")


class JsonLines(logging.Formatter):
    """One JSON object per record with the fields the client wrote down."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: getattr(record, key, None) for key in FIELDS}
        fields["msg"] = record.getMessage()
        return json.dumps(fields)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll *condition* until true; fail after *timeout* seconds (a hang guard, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {condition}")
        time.sleep(0.02)


def json_file_handler(path: Path) -> logging.FileHandler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonLines())
    return handler


def run_client(python: str, transport: str, address: tuple[str, int], count: int, out: Path) -> list[Any]:
    if not os.path.exists(python):
        missing(f"{python} is not installed (install that Python with pyenv)")
    host, port = address
    subprocess.run(
        [python, CLIENT, transport, host, str(port), str(count), str(out)],
        check=True, timeout=60, capture_output=True, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    return json.loads(out.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def read_json_lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Collect(logging.Handler):
    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- separate interpreters ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_socket_handler_in_another_interpreter_arrives_whole(tmp_path: Path, version: str) -> None:
    """Every record of a stdlib SocketHandler in another interpreter arrives with the same fields."""
    handler = json_file_handler(tmp_path / "got.log")
    with logfunnel.start_receiver([handler], tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None
        sent = run_client(PYTHONS[version], "tcp", receiver.tcp_address, 40, tmp_path / "sent.json")
        wait_for(lambda: receiver.stats()["received"] >= 40)
    handler.close()
    assert read_json_lines(tmp_path / "got.log") == sent
    assert sent[-1]["exc_text"].startswith("Traceback") and "KeyError: 'missing'" in sent[-1]["exc_text"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_datagram_handler_in_another_interpreter_arrives_whole(tmp_path: Path, version: str) -> None:
    """Every record of a stdlib DatagramHandler in another interpreter arrives with the same fields."""
    handler = json_file_handler(tmp_path / "got.log")
    with logfunnel.start_receiver([handler], udp="127.0.0.1:0") as receiver:
        assert receiver.udp_address is not None
        sent = run_client(PYTHONS[version], "udp", receiver.udp_address, 30, tmp_path / "sent.json")
        wait_for(lambda: receiver.stats()["received"] >= 30)
    handler.close()
    assert read_json_lines(tmp_path / "got.log") == sent


# -- delivery ---------------------------------------------------------------------------------------------


def send_records(address: tuple[str, int], *records: logging.LogRecord) -> None:
    """What a stdlib SocketHandler sends for *records*, over one connection."""
    handler = logging.handlers.SocketHandler(*address)
    for record in records:
        handler.handle(record)
    handler.close()


def make(name: str, level: int, msg: str = "hello", **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.timeout(60)
def test_none_handlers_route_through_this_process_logging_configuration() -> None:
    """With handlers=None, records go to their logger's handlers, by the logger's level."""
    app, other = Collect(), Collect()
    app_logger, other_logger = logging.getLogger("remote.app"), logging.getLogger("remote.other")
    app_logger.addHandler(app)
    app_logger.setLevel(logging.WARNING)
    other_logger.addHandler(other)
    other_logger.setLevel(logging.INFO)
    other_logger.propagate = False
    try:
        with logfunnel.start_receiver(tcp="127.0.0.1:0") as receiver:
            assert receiver.tcp_address is not None
            send_records(
                receiver.tcp_address,
                make("remote.app", logging.INFO, "below the level"),
                make("remote.app.child", logging.ERROR, "to the parent's handler"),
                make("remote.other", logging.INFO, "to the other"),
            )  # fmt: skip
            wait_for(lambda: receiver.stats()["received"] == 3)
    finally:
        app_logger.removeHandler(app)
        other_logger.removeHandler(other)
        app_logger.setLevel(logging.NOTSET)
        other_logger.setLevel(logging.NOTSET)
        other_logger.propagate = True
    assert [r.getMessage() for r in app.records] == ["to the parent's handler"]
    assert [r.getMessage() for r in other.records] == ["to the other"]


@pytest.mark.timeout(60)
def test_bytes_and_sets_in_extras_arrive_with_their_types() -> None:
    """A stdlib SocketHandler pickles bytes and sets as calls (protocol 1): they arrive as such."""
    got = Collect()
    extra = {"raw": b"\x00\xffid", "empty": b"", "tags": {"a", 1}, "frozen": frozenset({2.5})}
    with logfunnel.start_receiver([got], tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None
        send_records(receiver.tcp_address, make("remote.app", logging.INFO, "with bytes", **extra))
        wait_for(lambda: receiver.stats()["received"] == 1)
    assert receiver.stats()["rejected"] == 0
    (record,) = got.records
    assert {key: getattr(record, key) for key in extra} == extra
    assert type(record.tags) is set and type(record.frozen) is frozenset


@pytest.mark.timeout(60)
def test_peer_logger_names_create_no_loggers() -> None:
    """Logger names a peer makes up are handled by their nearest logger, and create none."""
    root = Collect()
    logging.getLogger().addHandler(root)
    before = set(logging.Logger.manager.loggerDict)
    with logfunnel.start_receiver(tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None
        names = [f"made.up.name{n}" for n in range(50)]
        send_records(receiver.tcp_address, *(make(name, logging.WARNING) for name in names))
        wait_for(lambda: receiver.stats()["received"] == 50)
    assert [r.name for r in root.records] == names
    assert set(logging.Logger.manager.loggerDict) == before


@pytest.mark.timeout(60)
def test_handler_levels_are_respected() -> None:
    """Each handler gets only the records at or above its level."""
    everything, errors = Collect(), Collect(logging.ERROR)
    with logfunnel.start_receiver([everything, errors], tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None
        send_records(receiver.tcp_address, make("a", logging.INFO), make("a", logging.ERROR))
        wait_for(lambda: receiver.stats()["received"] == 2)
    assert [r.levelno for r in everything.records] == [logging.INFO, logging.ERROR]
    assert [r.levelno for r in errors.records] == [logging.ERROR]


class Failing(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.errors = 0

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        raise RuntimeError("broken filter")

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors += 1


@pytest.mark.timeout(60)
def test_a_failing_handler_goes_to_its_handle_error_and_others_still_get_records() -> None:
    """An exception from one handler goes to its handleError; the next handler still gets the record."""
    failing, good = Failing(), Collect()
    with logfunnel.start_receiver([failing, good], tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None
        send_records(receiver.tcp_address, make("a", logging.INFO), make("a", logging.INFO))
        wait_for(lambda: receiver.stats()["received"] == 2)
    assert failing.errors == 2
    assert len(good.records) == 2


@pytest.mark.timeout(60)
def test_stop_handles_what_was_already_sent() -> None:
    """Records already in the receiver's socket buffers when stop() is called are still handled."""
    got = Collect()
    receiver = logfunnel.start_receiver([got], tcp="127.0.0.1:0", udp="127.0.0.1:0")
    assert receiver.tcp_address is not None and receiver.udp_address is not None
    tcp = logging.handlers.SocketHandler(*receiver.tcp_address)
    udp = logging.handlers.DatagramHandler(*receiver.udp_address)
    for n in range(50):  # well within a loopback socket's buffer: all of it has arrived
        tcp.handle(make("tcp", logging.INFO, f"t{n}"))
    for n in range(20):
        udp.handle(make("udp", logging.INFO, f"u{n}"))
    tcp.close()
    udp.close()
    receiver.stop()
    assert sorted(r.getMessage() for r in got.records) == sorted(
        [f"t{n}" for n in range(50)] + [f"u{n}" for n in range(20)]
    )


# -- many peers, and the peer table ----------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_many_peers_at_once_each_counted() -> None:
    """Twenty TCP and twenty UDP clients at once: every record arrives, each peer is listed."""
    got = Collect()
    with logfunnel.start_receiver([got], tcp="127.0.0.1:0", udp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None and receiver.udp_address is not None
        tcp_at, udp_at = receiver.tcp_address, receiver.udp_address
        # Every UDP socket stays open until all have sent: one closed early could free its port for
        # another client, and two clients on one address are one peer (seen once as [.., 10]).
        all_sent = threading.Barrier(20)

        def client(n: int) -> None:
            send_records(tcp_at, *(make(f"tcp{n}", logging.INFO, str(i)) for i in range(50)))
            handler = logging.handlers.DatagramHandler(*udp_at)
            for i in range(5):
                handler.handle(make(f"udp{n}", logging.INFO, str(i)))
            all_sent.wait(60)
            handler.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        wait_for(lambda: receiver.stats()["received"] == 20 * 55)
        stats = receiver.stats()
    peers = stats["peers"]
    assert sorted(p["received"] for p in peers if p["peer"].startswith("tcp:")) == [50] * 20
    assert sorted(p["received"] for p in peers if p["peer"].startswith("udp:")) == [5] * 20
    assert stats["rejected"] == 0


@pytest.mark.timeout(60)
def test_peer_table_is_bounded_and_folds_the_oldest() -> None:
    """With max_peers=5, thirty UDP sources leave five listed and the rest folded into the totals."""
    with logfunnel.start_receiver([Collect()], udp="127.0.0.1:0", max_peers=5) as receiver:
        assert receiver.udp_address is not None
        # All open at once, so that each has a source port of its own (a closed one's may be reused).
        handlers = [logging.handlers.DatagramHandler(*receiver.udp_address) for _ in range(30)]
        for handler in handlers:
            handler.handle(make("u", logging.INFO))
        wait_for(lambda: receiver.stats()["received"] == 30)
        stats = receiver.stats()
        for handler in handlers:
            handler.close()
    assert len(stats["peers"]) == 5
    assert stats["peers_folded"] == 25


# -- the API -----------------------------------------------------------------------------------------------


def test_addresses_are_none_for_what_was_not_asked() -> None:
    """tcp_address is set and udp_address None when only tcp is asked for."""
    with logfunnel.start_receiver(tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None and receiver.tcp_address[1] > 0
        assert receiver.udp_address is None
        assert isinstance(receiver, LogReceiver)


def test_stop_is_safe_to_repeat() -> None:
    """stop() twice, then leaving the with block, is harmless; stats() says stopped."""
    with logfunnel.start_receiver(udp="127.0.0.1:0") as receiver:
        receiver.stop()
        receiver.stop()
    assert receiver.stats()["state"] == "stopped"


def test_stop_closes_the_port() -> None:
    """After stop(), nothing listens at tcp_address."""
    receiver = logfunnel.start_receiver(tcp="127.0.0.1:0")
    address = receiver.tcp_address
    assert address is not None
    receiver.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)


def test_non_loopback_address_is_refused_without_allow_remote() -> None:
    """tcp='0.0.0.0:0' is refused, saying why and naming allow_remote."""
    with pytest.raises(
        ValueError,
        match=r"^start_receiver\(\) got tcp='0\.0\.0\.0:0', which is not loopback .*allow_remote=True",
    ):
        logfunnel.start_receiver(tcp="0.0.0.0:0")


def test_non_loopback_address_is_accepted_with_allow_remote() -> None:
    """udp='0.0.0.0:0' with allow_remote=True binds every interface."""
    with logfunnel.start_receiver(udp="0.0.0.0:0", allow_remote=True) as receiver:
        assert receiver.udp_address is not None and receiver.udp_address[0] == "0.0.0.0"


def test_malformed_address_is_refused() -> None:
    """An address without a port says what was expected."""
    with pytest.raises(ValueError, match=r"^start_receiver\(\) expected tcp like '127\.0\.0\.1:9020'"):
        logfunnel.start_receiver(tcp="localhost")


def test_neither_tcp_nor_udp_is_refused() -> None:
    """start_receiver() with no address says to pass one."""
    with pytest.raises(ValueError, match=r"^start_receiver\(\) got neither tcp nor udp"):
        logfunnel.start_receiver([])


def test_a_single_handler_instead_of_a_list_is_refused() -> None:
    """A handler passed bare (not in a list) says to pass [handler]."""
    with pytest.raises(TypeError, match=r"pass \[handler\]$"):
        logfunnel.start_receiver(logging.NullHandler(), tcp="127.0.0.1:0")  # type: ignore[arg-type]


def test_ipv6_loopback_is_accepted() -> None:
    """tcp='[::1]:0' binds IPv6 loopback."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        receiver = logfunnel.start_receiver(tcp="[::1]:0")
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    with receiver:
        assert receiver.tcp_address is not None and receiver.tcp_address[0] == "::1"


@pytest.mark.timeout(60)
def test_import_logfunnel_does_not_load_the_receiver() -> None:
    """import logfunnel leaves _receiver and _pickles unloaded until start_receiver is first used."""
    code = (
        "import sys, logfunnel; loaded = {'logfunnel._receiver', 'logfunnel._pickles'} & set(sys.modules); "
        "logfunnel.start_receiver; print(sorted(loaded), 'logfunnel._receiver' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout.split() == ["[]", "True"], result.stderr
