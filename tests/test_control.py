"""The listener's side of the control protocol: stats and tail for authorised clients, at bounded cost."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from logfunnel import LogManager, _control, _wire, start_listener
from logfunnel._cli_watch import Control, WatchError
from logfunnel._transport import GREETING, AuthenticationError, QueueHandle, answer, connect, recv_frame

WORKER = """
import logging, sys, logfunnel
logfunnel.install_worker_logging()
logging.getLogger().setLevel(logging.DEBUG)
for i in range(int(sys.argv[1])):
    logging.getLogger(sys.argv[2]).warning("record %d of %s", i, sys.argv[2])
"""
# A worker that logs, flushes, then waits on stdin before it exits: still connected meanwhile.
WAITING_WORKER = """
import logging, sys, logfunnel
logfunnel.install_worker_logging()
for i in range(int(sys.argv[1])):
    logging.getLogger("app").warning("record %d", i)
logfunnel.flush_worker_logging(10)
print("flushed", flush=True)
sys.stdin.read()
"""


def _workers(*runs: tuple[int, str]) -> list[int]:
    """Run one worker program per (count, logger) at once, until each exits; return their pids."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(count), name], start_new_session=True)
        for count, name in runs
    ]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return [proc.pid for proc in procs]


def _wait_received(listener, total: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = listener.stats()
        if stats["received"] >= total and all(p["state"] != "connected" for p in stats["processes"]):
            return stats
        assert time.monotonic() < deadline, f"did not hang: {stats}"
        time.sleep(0.02)


@pytest.fixture
def listener(tmp_path: Path):
    handler = logging.FileHandler(tmp_path / "funnel.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    running = start_listener([handler])
    yield running
    running.stop()
    handler.close()


def _lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "funnel.log").read_text(encoding="utf-8").splitlines()


def _wait_rejected(listener, count: int) -> None:
    """Wait until the listener has counted *count* refused connections (it counts after closing)."""
    deadline = time.monotonic() + 10
    while listener.stats()["rejected"] < count:
        assert time.monotonic() < deadline, "did not hang"
        time.sleep(0.01)
    assert listener.stats()["rejected"] == count


def _raw_control(handle: QueueHandle) -> socket.socket:
    sock, welcome = connect(handle, _control.CONTROL_HELLO)
    assert welcome["control"] == 1
    sock.settimeout(10)
    return sock


def _ask(sock: socket.socket, request: object) -> tuple:
    sock.sendall(_wire.frame(_wire.encode(request)))
    return _wire.decode(recv_frame(sock, _wire.MAX_FRAME))


def _closed(sock: socket.socket) -> bool:
    """Whether the listener closed *sock* (what it sent before is read and discarded)."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.timeout(60)
def test_stats_request_gives_exact_figures_of_real_workers(listener):
    """A stats answer holds each worker's exact received count and the listener's pid, CPU and memory."""
    pids = _workers((300, "a"), (500, "b"))
    _wait_received(listener, 800)
    control = Control(listener.queue)
    try:
        stats = control.stats()
    finally:
        control.close()
    by_pid = {p["pid"]: p for p in stats["processes"]}
    assert sorted(by_pid) == sorted(pids)
    assert [by_pid[pid]["received"] for pid in pids] == [300, 500]
    assert {p["state"] for p in stats["processes"]} == {"exited"}
    assert (stats["received"], stats["dropped"], stats["lost"]) == (800, 0, 0)
    assert stats["listener"]["pid"] == os.getpid()
    assert stats["listener"]["rss"] > 0
    assert stats["listener"]["cpu"] > 0


@pytest.mark.timeout(30)
def test_control_client_is_never_a_process(listener):
    """Control clients, however many requests they make, never appear among the processes."""
    controls = [Control(listener.queue) for _ in range(3)]
    try:
        for control in controls:
            assert control.stats()["processes"] == []
        assert listener.stats()["processes"] == []
        assert listener.stats()["rejected"] == 0
    finally:
        for control in controls:
            control.close()


@pytest.mark.timeout(30)
def test_control_client_gets_no_level_plan(listener):
    """The welcome of a control client is the control answer, not the plan a worker gets."""
    sock, welcome = connect(listener.queue, _control.CONTROL_HELLO)
    sock.close()
    assert welcome == {"control": 1, "pid": os.getpid()}


@pytest.mark.timeout(60)
def test_connected_worker_beside_control_client_keeps_its_state(listener):
    """A worker still connected is listed as connected with its exact count; the control client is not."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITING_WORKER, "250"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "flushed\n"
        control = Control(listener.queue)
        try:
            stats = control.stats()
        finally:
            control.close()
        assert [(p["pid"], p["state"], p["received"]) for p in stats["processes"]] == [
            (proc.pid, "connected", 250)
        ]
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
            proc.stdout.close()


@pytest.mark.timeout(30)
def test_wrong_key_control_client_is_refused_before_its_hello(listener):
    """A control client with the wrong key is refused by the HMAC check, as a worker would be."""
    wrong = QueueHandle(listener.address, b"not the key")
    with pytest.raises(ConnectionError):
        connect(wrong, _control.CONTROL_HELLO)
    _wait_rejected(listener, 1)


@pytest.mark.timeout(30)
def test_hello_that_is_neither_worker_nor_control_is_refused(listener):
    """A hello like the control one but of another version is neither: the connection is closed."""
    with pytest.raises(ConnectionError):
        connect(listener.queue, ("control", 2))
    with pytest.raises(ConnectionError):
        connect(listener.queue, ("control", 1, "extra"))
    _wait_rejected(listener, 2)
    assert listener.stats()["processes"] == []


@pytest.mark.timeout(60)
def test_garbage_request_closes_only_that_connection(listener, tmp_path):
    """An undecodable request, or an unknown one, closes that control connection; workers lose nothing."""
    for payload in (b"\xc1\xc1\xc1", _wire.encode(("delete", "everything"))):
        sock = _raw_control(listener.queue)
        sock.sendall(_wire.frame(payload))
        assert _closed(sock)
        sock.close()
    _workers((400, "a"))
    assert _wait_received(listener, 400)["received"] == 400
    assert len(_lines(tmp_path)) == 400
    control = Control(listener.queue)
    try:
        assert control.stats()["received"] == 400
    finally:
        control.close()


@pytest.mark.timeout(30)
def test_huge_request_is_refused_from_its_header(listener):
    """A request frame announced past MAX_REQUEST is refused at its header, before its bytes are read."""
    sock = _raw_control(listener.queue)
    sock.sendall(_wire.HEADER.pack(512 * 1024 * 1024) + b"x" * 65536)
    assert _closed(sock)
    sock.close()
    _wait_rejected(listener, 1)
    assert listener.backlog_bytes() == 0


@pytest.mark.timeout(30)
def test_request_before_reading_the_answer_is_refused(listener, monkeypatch):
    """A client that asks again while its last answer is unread is closed: answers never pile up."""
    monkeypatch.setattr(_control, "MIN_STATS_INTERVAL", 0.0)
    sock = _raw_control(listener.queue)
    request = _wire.frame(_wire.encode(("stats",)))
    deadline = time.monotonic() + 20
    try:
        while not listener.stats()["rejected"]:
            assert time.monotonic() < deadline, "did not hang"
            sock.sendall(request * 64)
    except OSError:
        pass  # closed by the listener
    _wait_rejected(listener, 1)
    assert listener._control_hub.clients == {}
    sock.close()


@pytest.mark.timeout(30)
def test_stats_asked_often_by_many_is_computed_once_per_interval(listener, monkeypatch):
    """Many clients asking many times within one MIN_STATS_INTERVAL cost the listener one stats()."""
    monkeypatch.setattr(_control, "MIN_STATS_INTERVAL", 3600.0)
    calls = []
    real = listener.stats
    monkeypatch.setattr(listener, "stats", lambda: calls.append(1) or real())
    controls = [Control(listener.queue) for _ in range(3)]
    try:
        answers = [control.stats() for _ in range(50) for control in controls]
    finally:
        for control in controls:
            control.close()
    assert len(calls) == 1
    assert all(answer == answers[0] for answer in answers)


@pytest.mark.timeout(30)
def test_too_many_control_clients_refuses_the_newcomer(listener):
    """Beyond MAX_CONTROL_CLIENTS at once, a new control client is refused and the others still work."""
    controls = [Control(listener.queue) for _ in range(_control.MAX_CONTROL_CLIENTS)]
    try:
        with pytest.raises(WatchError, match="closed the connection during the handshake"):
            Control(listener.queue)
        assert all(control.stats()["processes"] == [] for control in controls)
    finally:
        for control in controls:
            control.close()


def _tail(handle: QueueHandle, level: int = 0, prefix: str = "") -> socket.socket:
    sock = _raw_control(handle)
    assert _ask(sock, ("tail", level, prefix)) == ("tailing",)
    return sock


def _read_tail(sock: socket.socket, total: int, timeout: float = 30.0) -> tuple[list[list], int]:
    """Read tail frames until entries + dropped account for *total* records."""
    entries: list[list] = []
    dropped = 0
    deadline = time.monotonic() + timeout
    while len(entries) + dropped < total:
        assert time.monotonic() < deadline, f"did not hang: {len(entries)} + {dropped} of {total}"
        kind, dropped, chunk = _wire.decode(recv_frame(sock, _wire.MAX_FRAME))
        assert kind == "records"
        entries.extend(chunk)
    return entries, dropped


@pytest.mark.timeout(60)
def test_tail_gets_records_filtered_by_level_and_logger_prefix(listener):
    """A tail gets exactly the records at or above its level from its logger and the loggers below it."""
    sock = _tail(listener.queue, logging.WARNING, "app")
    try:
        _workers((120, "app"), (80, "app.db"), (50, "apple"), (70, "other"))
        _wait_received(listener, 320)
        entries, dropped = _read_tail(sock, 200)
    finally:
        sock.close()
    names = [entry[_control.TAIL_FIELDS.index("name")] for entry in entries]
    assert dropped == 0
    assert (names.count("app"), names.count("app.db"), len(names)) == (120, 80, 200)
    messages = {entry[_control.TAIL_FIELDS.index("msg")] for entry in entries}
    assert "record 79 of app.db" in messages


@pytest.mark.timeout(60)
def test_tail_that_never_reads_costs_its_buffer_and_nothing_else(listener, tmp_path, monkeypatch):
    """A tail that never reads gets a bounded buffer: every record still reaches the file, the
    buffer stays under its limit, and what it missed is counted: shown + dropped = produced."""
    monkeypatch.setattr(_control, "TAIL_BUFFER_BYTES", 64 * 1024)
    sock = _tail(listener.queue)
    try:
        _workers((10_000, "a"), (10_000, "b"))
        _wait_received(listener, 20_000)
        assert len(_lines(tmp_path)) == 20_000
        hub = listener._control_hub
        (client,) = hub.tails
        assert client.buffered <= 64 * 1024
        assert client.dropped > 0
        entries, dropped = _read_tail(sock, 20_000)
    finally:
        sock.close()
    assert len(entries) + dropped == 20_000
    assert dropped == client.dropped


@pytest.mark.timeout(60)
def test_tail_after_plain_file_handler_still_gets_whole_records(listener):
    """With only a plain FileHandler (workers render lines), a tail still gets named records."""
    assert listener._plan["full"] is False
    sock = _tail(listener.queue, 0, "b")
    try:
        _workers((150, "a"), (150, "b"))
        entries, dropped = _read_tail(sock, 150)
    finally:
        sock.close()
    assert (len(entries), dropped) == (150, 0)
    assert {entry[_control.TAIL_FIELDS.index("name")] for entry in entries} == {"b"}


@pytest.mark.timeout(30)
def test_request_on_a_tailing_connection_is_refused(listener):
    """A tailing connection only listens: a request on it closes it."""
    sock = _tail(listener.queue)
    sock.sendall(_wire.frame(_wire.encode(("stats",))))
    assert _closed(sock)
    sock.close()
    assert listener._control_hub.tails == []


@pytest.mark.timeout(60)
def test_log_manager_answers_stats_over_its_socket(tmp_path):
    """A LogManager's listener (in the manager process) answers stats with exact figures."""
    handler = logging.FileHandler(tmp_path / "funnel.log", encoding="utf-8")
    manager = LogManager([handler]).start()
    try:
        os.environ["LOGFUNNEL_ADDRESS"] = manager.queue.address
        os.environ["LOGFUNNEL_AUTHKEY"] = manager.queue.authkey.hex()
        _workers((200, "a"))
        deadline = time.monotonic() + 30
        while manager.stats()["received"] < 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        control = Control(manager.queue)
        try:
            stats = control.stats()
        finally:
            control.close()
    finally:
        manager.stop()
        handler.close()
    assert stats["listener"]["pid"] == manager.pid != os.getpid()
    assert [p["received"] for p in stats["processes"]] == [200]


@pytest.mark.timeout(30)
def test_control_handshake_proves_the_listener_knows_the_key(short_dir):
    """A fake listener that cannot answer the client's challenge is caught before anything is asked."""
    path = os.path.join(short_dir, "fake.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve() -> None:
        peer, _ = server.accept()
        with peer:
            peer.sendall(_wire.frame(GREETING + b"c" * 32))
            recv_frame(peer)
            peer.sendall(_wire.frame(answer(b"other key", b"x" * 32) + _wire.encode({"control": 1})))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(AuthenticationError):
            connect(QueueHandle(f"unix:{path}", b"k" * 32), _control.CONTROL_HELLO, timeout=10)
    finally:
        thread.join(10)
        server.close()
