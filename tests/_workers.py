"""Functions that run inside worker processes (importable by spawn and forkserver children)."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import defaultdict
from pathlib import Path

import logfunnel

LINE = re.compile(r"^(\d+) (\S+) (\w+) w=(\S+) i=(\d+)$")


class Collect(logging.Handler):
    """A listener-side handler that keeps every record it is given, in .records."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def log_records(worker_id: object, count: int, handle: object = None) -> int:
    """Log *count* numbered records as worker *worker_id*; join *handle* first if given."""
    if handle is not None:
        logfunnel.install_worker_logging(handle)
    log = logging.getLogger("test.worker")
    for i in range(count):
        log.info("w=%s i=%d", worker_id, i)
    return os.getpid()


def log_forever(worker_id: object, handle: object, started: object) -> None:
    """Log as fast as possible until killed; set *started* once the first record is out."""
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("test.victim")
    log.info("w=%s i=%d", worker_id, 0)
    logfunnel.flush_worker_logging(10)
    started.set()  # type: ignore[attr-defined]
    i = 1
    while True:
        log.info("w=%s i=%d", worker_id, i)
        i += 1


def parse(path: Path) -> dict[str, list[int]]:
    """Map each worker id in a LINE_FORMAT log to the record numbers it delivered, in file order."""
    seen: dict[str, list[int]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = LINE.match(line.rstrip("\n"))
            assert match, f"torn or foreign line: {line!r}"
            seen[match.group(4)].append(int(match.group(5)))
    return seen


def assert_exactly_once(path: Path, expected: dict[str, int]) -> None:
    """Every worker's records arrived exactly once and in order; no other worker wrote."""
    seen = parse(path)
    for worker_id, count in expected.items():
        got = seen.get(str(worker_id), [])
        assert got == list(range(count)), (
            f"worker {worker_id}: {len(got)} of {count} records, first gap/duplicate near "
            f"{next((i for i, n in enumerate(got) if n != i), len(got))}"
        )
    extra = set(seen) - {str(w) for w in expected}
    assert not extra, f"records from unexpected workers {extra}"


def closed_by_listener(sock: socket.socket) -> bool:
    """Read until end of stream; True once the listener has closed its side, False on a timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
