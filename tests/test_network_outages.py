"""The network handlers behind the funnel when their server is down, slow or refusing.

Each handler runs on a ``logfunnel.Lane`` beside a local file handler (inline) while 3 workers log.
Whatever the server does: the workers never block or drop, the file gets every line, ``stop()``
returns, and the lane's figures in ``listener.stats()["lanes"]`` say what happened, exactly:
produced = handled + dropped + failed + undelivered, and handled is what the server accepted.

These tests need the lanes (issue 9); on code without them they fail at ``logfunnel.Lane``.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

import logfunnel
from _netservers import DatagramServer, HTTPServer, RecordServer, SMTPServer, free_port
from _network_workers import log_numbered, make_handler, run_workers
from _workers import assert_exactly_once

WORKERS = 3
COUNT = 10
TOTAL = WORKERS * COUNT
LINE_FORMAT = "%(process)d %(processName)s %(levelname)s %(message)s"  # what _workers.parse reads


class Outcome:
    """What a run left: the listener's stats, the lane's figures, and the file's lines when the
    listener had received every record (before stop() drained the lane)."""

    def __init__(self, stats, lane, file_lines_when_received):
        self.stats = stats
        self.lane = lane
        self.file_lines_when_received = file_lines_when_received


def _count_lines(path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def _run(tmp_path, handler, *, retry=None, drain_timeout=3.0, name="net") -> Outcome:
    """3 workers log COUNT records each through a listener with *handler* on a lane and a file."""
    path = tmp_path / "beside.log"
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LINE_FORMAT))
    lane = logfunnel.Lane(handler, retry=retry, drain_timeout=drain_timeout, name=name)
    listener = logfunnel.start_listener(handlers=[lane, file_handler])
    try:
        run_workers("fork", log_numbered, [(listener.queue, w, COUNT) for w in range(WORKERS)], timeout=30)
        deadline = time.monotonic() + 30
        while listener.stats()["received"] < TOTAL and time.monotonic() < deadline:
            time.sleep(0.01)
        while _count_lines(path) < TOTAL and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = _count_lines(path)
    finally:
        stopper = threading.Thread(target=listener.stop, daemon=True)
        stopper.start()
        stopper.join(drain_timeout + 30)
        assert not stopper.is_alive(), "listener.stop() did not return"
        file_handler.close()
    stats = listener.stats()
    (figures,) = [entry for entry in stats["lanes"] if entry["name"] == name]
    assert_exactly_once(path, {w: COUNT for w in range(WORKERS)})
    return Outcome(stats, figures, lines)


def _check(outcome: Outcome, stuck: bool = False) -> dict:
    """What holds whatever the server did; return the lane's figures."""
    stats, lane = outcome.stats, outcome.lane
    assert (stats["received"], stats["dropped"], stats["lost"]) == (TOTAL, 0, 0), (
        "a worker blocked or dropped"
    )
    assert outcome.file_lines_when_received == TOTAL, "the file beside the lane stalled"
    assert lane["handled"] + lane["dropped"] + lane["failed"] + lane["undelivered"] == TOTAL, lane
    if not stuck:  # (a record stuck inside the target may still be shown as waiting)
        assert lane["backlog"] == 0, lane
    # stop() drains a lane and leaves it to its owner; one stuck in its target is abandoned
    assert (lane["state"] == "abandoned") == stuck, lane
    return lane


def _down() -> tuple[str, int]:
    return ("127.0.0.1", free_port())


# -- SocketHandler -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_socket_handler_lane_counts_every_record_failed_when_nothing_listens(tmp_path):
    """Nothing listening: SocketHandler drops silently (no handleError); the lane counts them failed."""
    lane = _check(_run(tmp_path, make_handler("socket", _down())))
    assert (lane["handled"], lane["failed"]) == (0, TOTAL), lane


@pytest.mark.timeout(120)
def test_socket_handler_lane_delivers_everything_to_a_slow_reader(tmp_path):
    """A server that reads a frame every 0.1 s: every record is handled and arrives."""
    with RecordServer(delay=0.1) as server:
        lane = _check(_run(tmp_path, make_handler("socket", server.address), drain_timeout=10))
        assert lane["handled"] == TOTAL, lane
        assert len(server.wait_for(TOTAL)) == TOTAL


@pytest.mark.timeout(120)
def test_socket_handler_lane_counts_records_a_resetting_server_never_took(tmp_path):
    """A server that resets each connection: the records whose send failed are counted failed. Those
    the kernel accepted before the reset arrived (the server accepts 50 ms late, and its kernel takes
    what comes meanwhile) count as handled: plain TCP cannot tell them apart, and SocketHandler has no
    acknowledgement. This is the stdlib protocol's limit; RFC5424Handler over RELP has none."""
    with RecordServer(mode="reset") as server:
        lane = _check(_run(tmp_path, make_handler("socket", server.address)))
        assert server.received == []
        assert lane["handled"] + lane["failed"] == TOTAL, lane
        assert server.connections >= 1


@pytest.mark.timeout(120)
def test_socket_handler_lane_loses_nothing_while_the_server_is_down_for_a_while(tmp_path):
    """gh-84532: SocketHandler drops records during its reconnect back-off; on a lane with retry, a
    server that comes up after the workers logged still gets every record."""
    address = _down()
    server = RecordServer(port=address[1])
    handler = make_handler("socket", address)
    timer = threading.Timer(1.0, server.start)
    timer.start()
    try:
        lane = _check(_run(tmp_path, handler, retry=30.0, drain_timeout=30))
        got = server.wait_for(TOTAL)
    finally:
        timer.join()
        server.stop()
    assert lane["handled"] == TOTAL and lane["failed"] == 0, lane
    assert sorted(d["msg"] for d in got) == sorted(
        f"w={w} i={i}" for w in range(WORKERS) for i in range(COUNT)
    )


# -- DatagramHandler -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_datagram_handler_lane_to_a_closed_port_neither_hangs_nor_blocks(tmp_path):
    """Nothing listening (down, or refusing: UDP has no other refusal): the kernel takes every datagram
    and no error ever comes back to an unconnected socket, so the lane counts them handled; UDP loss
    cannot be seen by the sender."""
    lane = _check(_run(tmp_path, make_handler("datagram", _down())))
    assert lane["handled"] == TOTAL, lane


@pytest.mark.timeout(120)
def test_datagram_handler_lane_delivers_everything_to_a_slow_reader(tmp_path):
    """A server that reads a datagram every 0.05 s: its socket buffer holds the rest; all arrive."""
    with DatagramServer(delay=0.05) as server:
        lane = _check(_run(tmp_path, make_handler("datagram", server.address)))
        assert lane["handled"] == TOTAL, lane
        assert len(server.wait_for(TOTAL)) == TOTAL


# -- SMTPHandler ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_smtp_handler_lane_counts_every_record_failed_when_nothing_listens(tmp_path):
    """Nothing listening: each record's connection is refused; the lane counts them failed."""
    lane = _check(_run(tmp_path, make_handler("smtp", _down())))
    assert (lane["handled"], lane["failed"]) == (0, TOTAL), lane


@pytest.mark.timeout(120)
def test_smtp_handler_lane_delivers_everything_to_a_slow_server(tmp_path):
    """A server that answers DATA after 0.1 s: every record is handled, one message each."""
    with SMTPServer(delay=0.1) as server:
        lane = _check(_run(tmp_path, make_handler("smtp", server.address), drain_timeout=60))
        assert lane["handled"] == TOTAL == len(server.wait_for(TOTAL)), lane


@pytest.mark.timeout(120)
def test_smtp_handler_lane_counts_records_refused_with_554(tmp_path):
    """A server that answers DATA with 554: the lane counts every record failed, none handled."""
    with SMTPServer(mode="refuse") as server:
        lane = _check(_run(tmp_path, make_handler("smtp", server.address)))
        assert server.received == [] and server.attempts == TOTAL
        assert (lane["handled"], lane["failed"]) == (0, TOTAL), lane


@pytest.mark.timeout(120)
def test_smtp_handler_lane_stuck_in_a_server_that_never_answers_lets_stop_return(tmp_path):
    """A server that never answers DATA (and a handler timeout longer than the drain): stop() returns
    after the lane's drain deadline, the lane is abandoned and what it held is counted undelivered."""
    with SMTPServer(mode="hang") as server:
        handler = make_handler("smtp", server.address, timeout=60.0)
        lane = _check(_run(tmp_path, handler, drain_timeout=2.0), stuck=True)
        assert lane["handled"] == 0 and lane["undelivered"] >= TOTAL - lane["failed"] - lane["dropped"], lane


# -- HTTPHandler ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_http_handler_lane_counts_every_record_failed_when_nothing_listens(tmp_path):
    """Nothing listening: each request's connection is refused; the lane counts them failed."""
    lane = _check(_run(tmp_path, make_handler("http", _down())))
    assert (lane["handled"], lane["failed"]) == (0, TOTAL), lane


@pytest.mark.timeout(120)
def test_http_handler_lane_delivers_everything_to_a_slow_server(tmp_path):
    """A server that answers after 0.1 s: every record is handled, one request each."""
    with HTTPServer(delay=0.1) as server:
        lane = _check(_run(tmp_path, make_handler("http", server.address, method="POST"), drain_timeout=60))
        assert lane["handled"] == TOTAL == len(server.wait_for(TOTAL)), lane


@pytest.mark.timeout(120)
def test_http_handler_lane_counts_records_answered_with_500(tmp_path):
    """A server that answers 500: HTTPHandler ignores the status, the lane must not count them handled."""
    with HTTPServer(mode="error") as server:
        lane = _check(_run(tmp_path, make_handler("http", server.address)))
        assert server.received == [] and server.attempts == TOTAL
        assert (lane["handled"], lane["failed"]) == (0, TOTAL), lane


@pytest.mark.timeout(120)
def test_http_handler_lane_counts_records_whose_connection_was_reset(tmp_path):
    """A server that resets the connection after reading the request: every record failed."""
    with HTTPServer(mode="reset") as server:
        lane = _check(_run(tmp_path, make_handler("http", server.address)))
        assert server.received == []
        assert (lane["handled"], lane["failed"]) == (0, TOTAL), lane


@pytest.mark.timeout(120)
def test_http_handler_lane_stuck_in_a_server_that_never_answers_lets_stop_return(tmp_path):
    """A server that reads the request and never answers (HTTPHandler has no timeout): stop() returns
    after the drain deadline, the lane is abandoned and every record is counted undelivered."""
    with HTTPServer(mode="hang") as server:
        lane = _check(_run(tmp_path, make_handler("http", server.address), drain_timeout=2.0), stuck=True)
        assert (lane["handled"], lane["failed"], lane["undelivered"]) == (0, 0, TOTAL), lane
