"""Functions that run inside the worker processes of test_accounting (importable by spawn children)."""

from __future__ import annotations

import logging
import os
import signal
import time

import logfunnel
from logfunnel import _sink


class Tally(logging.Handler):
    """A listener-side handler that counts the records of each pid and keeps the listener's own."""

    def __init__(self, stall: float = 0.0) -> None:
        super().__init__()
        logfunnel.inline(self)  # its stall must stall the listener itself, not a lane of its own
        self.stall = stall  # seconds to sleep on the first record named "stall"
        self.per_pid: dict[int, int] = {}
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "logfunnel":
            self.warnings.append(record.getMessage())
            return
        if record.name == "stall" and self.stall:
            stall, self.stall = self.stall, 0.0
            time.sleep(stall)
            return
        self.per_pid[record.process] = self.per_pid.get(record.process, 0) + 1


def log_until_killed(handle, counter, phase) -> None:
    """Log as fast as possible; *counter* is incremented after each logging call has returned."""
    phase.value = 1
    logfunnel.install_worker_logging(handle, capacity=1_000)
    phase.value = 2
    log = logging.getLogger("victim")
    while True:
        log.info("record %d", counter.value)
        counter.value += 1


def log_then_kill_self(handle, count, connect) -> None:
    """Log *count* records while the sender cannot take any (it waits for the sink's lock), then die
    of SIGKILL: no batch ever leaves. Without *connect*, the process never reaches the listener."""
    if not connect:
        _sink.SocketSink._connect = lambda self, timeout=None: False  # type: ignore[method-assign]
    handler = logfunnel.install_worker_logging(handle)
    log = logging.getLogger("early")
    with handler._sink._lock:
        for i in range(count):
            log.info("record %d", i)
        os.kill(os.getpid(), signal.SIGKILL)


def stall_listener(handle) -> None:
    """Send one record named "stall", on which the listener's Tally sleeps."""
    logfunnel.install_worker_logging(handle)
    logging.getLogger("stall").warning("stall")
    logfunnel.flush_worker_logging(10)


def flood_and_exit(handle, count, results) -> None:
    """Log *count* records (capacity 1000, drop) and return normally; report own drop count first."""
    handler = logfunnel.install_worker_logging(handle, on_full="drop", capacity=1_000)
    log = logging.getLogger("flood")
    for i in range(count):
        log.info("record %d with some padding to make it a realistic size ..........", i)
    results.put((os.getpid(), handler.dropped))


def errors_during_stall(handle, results) -> None:
    """Stall the listener, fill the socket (not the buffer: an ERROR call that finds the buffer full
    is dropped at once), then time five ERROR calls."""
    logfunnel.install_worker_logging(handle, on_full="drop", capacity=10_000, block_timeout=3.0)
    logging.getLogger("stall").warning("stall")
    logfunnel.flush_worker_logging(10)
    log = logging.getLogger("busy")
    for i in range(3_000):
        log.info("record %d %s", i, "x" * 1_000)  # 3 MB: more than the socket holds
    start = time.monotonic()
    for i in range(5):
        log.error("error %d", i)
    results.put(time.monotonic() - start)


def flush_then_os_exit(handle, count) -> None:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("flushed")
    for i in range(count):
        log.info("record %d", i)
    assert logfunnel.flush_worker_logging(10)
    os._exit(0)


def log_and_wait(handle, count, done) -> None:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("short")
    for i in range(count):
        log.info("record %d", i)
    if done is not None:
        logfunnel.flush_worker_logging(10)
        done.wait(60)
