"""Failures found by a review from outside (as a user and as an adversary), one test each, named
after the failure it prevents.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import logfunnel
from _workers import Collect


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll *predicate* until it holds; fail (not hang) if it does not within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not hold within the time allowed"
        time.sleep(0.02)


def _send_from_a_stdlib_client(address: tuple[str, int], name: str) -> None:
    """Log one WARNING, "from a real client", through a stdlib SocketHandler to *address*."""
    sender = logging.handlers.SocketHandler(*address)
    log = logging.getLogger(name)
    log.propagate = False
    log.addHandler(sender)
    try:
        log.warning("from a real client")
    finally:
        log.removeHandler(sender)
        sender.close()


def _log_then_fork_and_exit(handle: object) -> None:
    """A worker that logs, then forks a child that logs once and leaves through sys.exit(0)."""
    logfunnel.install_worker_logging(handle)
    logging.getLogger("review.worker").info("from the worker")
    pid = os.fork()
    if pid == 0:
        logging.getLogger("review.grandchild").info("from the grandchild")
        sys.exit(0)
    os.waitpid(pid, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_grandchild_forked_by_a_worker_loses_its_records_at_sys_exit(method):
    """A child forked by a multiprocessing worker that leaves by sys.exit(0) delivers its records."""
    collect = Collect()
    with logfunnel.start_listener(handlers=[collect]) as listener:
        process = multiprocessing.get_context(method).Process(
            target=_log_then_fork_and_exit, args=(listener.queue,)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    messages = sorted(r.getMessage() for r in collect.records if r.name.startswith("review."))
    stats = listener.stats()
    assert (stats["lost"], stats["dropped"]) == (0, 0)
    assert messages == ["from the grandchild", "from the worker"]


@pytest.mark.timeout(60)
def test_idle_connections_at_the_limit_lock_real_socket_handlers_out_of_the_receiver():
    """With max_connections idle sockets open, a stdlib SocketHandler's record still arrives."""
    collect = Collect()
    with logfunnel.start_receiver([collect], tcp="127.0.0.1:0", udp=None, max_connections=8) as receiver:
        host, port = receiver.tcp_address
        idle = [socket.create_connection((host, port)) for _ in range(8)]
        try:
            _wait_until(lambda: receiver.stats()["connections"] == 8)
            _send_from_a_stdlib_client((host, port), "review.receiver.idle")
            _wait_until(lambda: len(collect.records) >= 1)  # through Collect's lane
            assert [r.getMessage() for r in collect.records] == ["from a real client"]
            # The oldest silent connection made room, and says so in the figures.
            assert receiver.stats()["reasons"] == {"connections": 1}
        finally:
            for sock in idle:
                sock.close()


_RECONFIGURE_THEN_FORK = """
import logging, logging.config, multiprocessing, os, sys
import logfunnel

def config(folder, name):
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": os.path.join(folder, name)},
            "funnel": {"()": "logfunnel.config.funnel", "handlers": ["file"]},
        },
        "root": {"level": "INFO", "handlers": ["funnel"]},
    }

def child():
    logging.getLogger("app").info("from the child")

if __name__ == "__main__":
    folder = sys.argv[1]
    logging.config.dictConfig(config(folder, "first.log"))
    logging.config.dictConfig(config(folder, "second.log"))   # replaces the first funnel, stops it
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(30)
    logging.shutdown()
    print(open(os.path.join(folder, "second.log")).read(), end="")
"""


@pytest.mark.timeout(60)
def test_fork_child_after_a_second_funnel_dictconfig_complains_about_the_first_listeners_folder(tmp_path):
    """After a dictConfig replaced a funnel, a fork child logs into the new one and says nothing on stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for name in ("LOGFUNNEL_ADDRESS", "LOGFUNNEL_AUTHKEY", "LOGFUNNEL_COUNTS"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", _RECONFIGURE_THEN_FORK, str(tmp_path)],
        capture_output=True, text=True, timeout=45, env=env, start_new_session=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the child\n"
    assert done.stderr == ""


class _RaisingEmit(logging.Handler):
    """A handler whose emit raises instead of calling handleError (a bug in a user's handler)."""

    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("emit failed")


class _RaisingFilter(logging.Filter):
    """A filter that raises (a bug in a user's filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("filter failed")


def _log_twenty(handle: object) -> None:
    logfunnel.install_worker_logging(handle)
    for i in range(20):
        logging.getLogger("review.batch").info("record %d", i)


def _run_one_worker(handlers: list[object]) -> dict[str, object]:
    with logfunnel.start_listener(handlers=handlers) as listener:  # type: ignore[arg-type]
        process = multiprocessing.get_context("fork").Process(target=_log_twenty, args=(listener.queue,))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    return listener.stats()


@pytest.mark.timeout(60)
def test_an_inline_handler_that_raises_costs_the_next_inline_handler_the_whole_batch():
    """An inline handler whose emit raises leaves the inline handler after it all 20 records."""
    collect = Collect()
    stats = _run_one_worker([logfunnel.inline(_RaisingEmit()), logfunnel.inline(collect)])
    assert stats["received"] == 20
    assert len([r for r in collect.records if r.name == "review.batch"]) == 20
    # The raising handler's 20 are counted lost to it, not silently gone.
    assert (stats["lines_lost"], stats["handler_failures"]) == (20, {"raised": 20})


@pytest.mark.timeout(60)
def test_a_raising_filter_on_a_stream_handler_costs_every_lane_the_whole_batch():
    """A raising filter on one StreamHandler leaves another handler (on its lane) all 20 records."""
    stream = logging.StreamHandler(io.StringIO())
    stream.addFilter(_RaisingFilter())
    collect = Collect()
    stats = _run_one_worker([stream, collect])
    assert stats["received"] == 20
    assert len([r for r in collect.records if r.name == "review.batch"]) == 20


class _Formatted(logging.Handler):
    """A listener-side handler that formats every record with *fmt* and keeps the lines; a record it
    cannot format is a formatting error for that record alone (handleError), as in one process."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s %(message)s") -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(fmt))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "field, value", [("created", float("nan")), ("created", 1e300), ("msecs", float("inf"))]
)
def test_one_peer_record_with_a_non_finite_time_stalls_the_receivers_handler(field, value):
    """A peer's record with a non-finite time is refused and counted; the next client's record arrives."""
    formatted = _Formatted()
    state = logging.makeLogRecord(
        {"name": "review.peer", "msg": "poison", "levelno": 30, "levelname": "WARNING"}
    )
    data = pickle.dumps(dict(state.__dict__, **{field: value}), 1)
    lane = logfunnel.Lane(formatted, drain_timeout=1.0)
    with logfunnel.start_receiver([lane], tcp="127.0.0.1:0", udp=None) as receiver:
        with socket.create_connection(receiver.tcp_address) as peer:
            peer.sendall(struct.pack(">L", len(data)) + data)
        _wait_until(lambda: receiver.stats()["received"] + receiver.stats()["rejected"] == 1)
        _send_from_a_stdlib_client(receiver.tcp_address, "review.receiver.client")
        _wait_until(lambda: receiver.stats()["received"] + receiver.stats()["rejected"] == 2)
    stats = receiver.stats()
    assert [line.split(" ", 2)[2] for line in formatted.lines] == [
        "WARNING review.receiver.client from a real client"
    ]
    assert (stats["received"], stats["rejected"]) == (1, 1)


def _log_one_without_user_then_five_with(handle: object) -> None:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("review.lane")
    log.warning("no user on this one")
    for i in range(5):
        log.warning("record %d", i, extra={"user": "bob"})


@pytest.mark.timeout(60)
def test_one_record_that_fails_to_format_blocks_every_later_record_on_its_lane():
    """One record whose format fails (a missing extra) costs only itself: the 5 after it arrive."""
    needs_user = _Formatted("%(user)s %(message)s")
    with logfunnel.start_listener(handlers=[logfunnel.Lane(needs_user, drain_timeout=1.0)]) as listener:
        process = multiprocessing.get_context("fork").Process(
            target=_log_one_without_user_then_five_with, args=(listener.queue,)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    assert needs_user.lines == [f"bob record {i}" for i in range(5)]
    (lane,) = listener.stats()["lanes"]
    assert lane["undelivered"] == 0


class _SeeAfter(Collect):
    """Collects, and sets *seen* once an "after" record arrives."""

    def __init__(self, seen: Any, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.getMessage() == "after":
            self.seen.set()


def _log_info_after_the_level_is_lowered(handle: object, connected: Any, lowered: Any, seen: Any) -> None:
    logfunnel.install_worker_logging(handle)
    logging.getLogger("review.levels").warning("connected")
    logfunnel.flush_worker_logging(10)
    connected.set()
    lowered.wait(10)
    deadline = time.monotonic() + 20  # a generous bound: the listener looks about every second
    while not seen.is_set() and time.monotonic() < deadline:
        logging.getLogger("review.levels").info("after")
        logfunnel.flush_worker_logging(1)
        time.sleep(0.05)


def _lower_while_connected(handlers: list[Any] | None, lower: Callable[[], None], seen: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    connected, lowered = ctx.Event(), ctx.Event()
    with logfunnel.start_listener(handlers=handlers) as listener:
        process = ctx.Process(
            target=_log_info_after_the_level_is_lowered, args=(listener.queue, connected, lowered, seen)
        )
        process.start()
        assert connected.wait(20)
        lower()
        lowered.set()
        process.join(30)
        assert process.exitcode == 0


@pytest.mark.timeout(60)
def test_lowering_the_root_level_after_workers_connected_never_reaches_them():
    """Routed: root.setLevel(INFO) in the parent makes a connected worker's INFO records arrive."""
    seen = multiprocessing.get_context("fork").Event()
    collect = _SeeAfter(seen)
    root = logging.getLogger()
    root.handlers[:] = [collect]
    root.setLevel(logging.WARNING)
    _lower_while_connected(None, lambda: root.setLevel(logging.INFO), seen)
    assert "after" in [r.getMessage() for r in collect.records]


@pytest.mark.timeout(60)
def test_lowering_a_handlers_level_after_workers_connected_never_reaches_them():
    """Explicit handlers: handler.setLevel(INFO) in the parent makes a connected worker's INFO arrive."""
    seen = multiprocessing.get_context("fork").Event()
    collect = _SeeAfter(seen, logging.WARNING)
    _lower_while_connected([collect], lambda: collect.setLevel(logging.INFO), seen)
    assert "after" in [r.getMessage() for r in collect.records]
