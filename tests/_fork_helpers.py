"""Writers that run in forked children, and readers that check what the file handlers left on disk."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import multiprocessing
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORK = multiprocessing.get_context("fork")

FORMAT = "%(created)f %(process)d %(thread)d %(message)s"
LINE = re.compile(r"^(\d+\.\d+) (\d+) (\d+) w=([\w-]+) i=(\d+)$")


# --- building handlers and loggers ----------------------------------------------------------------


def make_handler(cls: type, path: Path | str, **kwargs: Any) -> logging.Handler:
    """A *cls* handler on *path* with the test line format."""
    handler = cls(str(path), **kwargs)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def own_logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger that writes to *handler* only (not to whatever the root logger holds under pytest)."""
    log = logging.getLogger(f"handlers-test.{name}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


# --- what the children run --------------------------------------------------------------------------


def write_lines(cls: type, path: str, kwargs: dict[str, Any], wid: str, count: int) -> None:
    """Child: its own *cls* handler on *path*; *count* numbered lines as writer *wid*; close."""
    handler = make_handler(cls, path, **kwargs)
    log = own_logger(wid, handler)
    for i in range(count):
        log.info("w=%s i=%d", wid, i)
    handler.close()


def write_until(
    cls: type, path: str, kwargs: dict[str, Any], wid: str, stop: Any, started: Any, results: Any
) -> None:
    """Child: write numbered lines until *stop* is set (or 30 s pass); report (wid, count) on *results*."""
    handler = make_handler(cls, path, **kwargs)
    log = own_logger(wid, handler)
    log.info("w=%s i=%d", wid, 0)
    handler.flush()
    started.set()
    count = 1
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        log.info("w=%s i=%d", wid, count)
        count += 1
        if count % 8 == 0:
            time.sleep(0.001)  # leave the 2-core machine some room; the lines stay dense
    handler.close()
    results.put((wid, count))


def write_for(cls: type, path: str, kwargs: dict[str, Any], wid: str, seconds: float, results: Any) -> None:
    """Child: write numbered lines for *seconds*; report (wid, count) on *results*."""
    handler = make_handler(cls, path, **kwargs)
    log = own_logger(wid, handler)
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log.info("w=%s i=%d", wid, count)
        count += 1
        if count % 8 == 0:
            time.sleep(0.001)
    handler.close()
    results.put((wid, count))


def run_processes(target: Any, arg_tuples: list[tuple[Any, ...]], timeout: float = 60) -> None:
    """Run one fork child per argument tuple; join them all, kill any left; each must exit 0."""
    processes = [FORK.Process(target=target, args=args) for args in arg_tuples]
    try:
        for p in processes:
            p.start()
        deadline = time.monotonic() + timeout
        for p in processes:
            p.join(max(0.1, deadline - time.monotonic()))
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in processes] == [0] * len(processes), "a writer failed or hung"


def collect_results(results: Any, count: int) -> dict[str, int]:
    """*count* (wid, lines written) reports from *results*."""
    return dict(results.get(timeout=30) for _ in range(count))


# --- holding a handler's lock from outside --------------------------------------------------------


class LockHolder:
    """Another process holding the lock file (flock and lockf both) until released."""

    def __init__(self, path: Path) -> None:
        self.held = FORK.Event()
        self.release = FORK.Event()
        self.gone = FORK.Event()  # set just before the lock is let go
        self.process = FORK.Process(target=_hold, args=(str(path), self.held, self.release, self.gone))

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release.set)
        timer.start()
        return timer


def _hold(path: str, held: Any, release: Any, gone: Any) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(10)  # a fallback: never hold a test up for longer
    gone.set()
    fcntl.lockf(fd, fcntl.LOCK_UN)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[LockHolder]:
    """Another process holds the lock file *path* inside the block (or until its .release is set)."""
    holder = LockHolder(path)
    holder.process.start()
    try:
        assert holder.held.wait(10), "the lock holder did not start"
        yield holder
    finally:
        holder.release.set()
        holder.process.join(10)
        if holder.process.is_alive():
            holder.process.kill()
            holder.process.join(5)


# --- reading what the handlers wrote ----------------------------------------------------------------


def read_text(path: Path) -> str:
    """The text of *path*, decompressed if it is a .gz file (which must then be a complete gzip file)."""
    if path.name.endswith(".gz"):
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b", f"{path.name} is not a gzip file"
        with gzip.open(path, "rt", encoding="utf-8") as f:  # reading to the end checks the CRC and size
            return f.read()
    return path.read_text(encoding="utf-8")


def parse_file(path: Path) -> list[tuple[float, str, int]]:
    """(created, writer id, line number) for every line of *path*; every line must be whole."""
    text = read_text(path)
    assert not text or text.endswith("\n"), f"{path.name} ends in a torn line: {text[-80:]!r}"
    parsed = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, f"torn or merged line in {path.name}: {line!r}"
        parsed.append((float(match.group(1)), match.group(4), int(match.group(5))))
    return parsed


def lines_by_writer(files: list[Path]) -> dict[str, list[int]]:
    """Each writer's line numbers, in the order read from *files* (oldest file first)."""
    seen: dict[str, list[int]] = defaultdict(list)
    for path in files:
        for _, wid, i in parse_file(path):
            seen[wid].append(i)
    return seen


def assert_every_line_once(files: list[Path], expected: dict[str, int]) -> None:
    """Read oldest file first: every writer's lines appear exactly once and in order; no one else wrote."""
    seen = lines_by_writer(files)
    for wid, count in expected.items():
        got = seen.get(wid, [])
        assert got == list(range(count)), (
            f"writer {wid}: {len(got)} lines of {count}, {len(set(got))} distinct, first gap/duplicate/"
            f"disorder near position {next((k for k, n in enumerate(got) if n != k), len(got))}"
        )
    extra = set(seen) - set(expected)
    assert not extra, f"lines from unexpected writers {extra}"


def assert_newest_kept(files: list[Path], expected: dict[str, int]) -> dict[str, list[int]]:
    """Every writer's kept lines are its last k lines (some k >= 0), exactly once and in order."""
    seen = lines_by_writer(files)
    for wid, count in expected.items():
        got = seen.get(wid, [])
        assert got == list(range(count - len(got), count)), (
            f"writer {wid}: the {len(got)} kept lines are not its newest, once each, in order "
            f"(first kept {got[:1]}, last kept {got[-1:]}, of {count})"
        )
    extra = set(seen) - set(expected)
    assert not extra, f"lines from unexpected writers {extra}"
    return seen


def lock_name(base: str) -> str:
    return f".{base}.lock"


def schedule_name(base: str) -> str:
    """Where a timed handler keeps the rollover schedule its processes share."""
    return f".{base}.schedule"


def numbered_files(directory: Path, base: str = "app.log", suffix: str = "") -> list[Path]:
    """The rotated file set, oldest first: base.N<suffix> ... base.1<suffix>, base.

    Fails on any other name in *directory* (the default lock file excepted), and on a gap in the numbers.
    """
    pattern = re.compile(rf"^{re.escape(base)}\.([1-9]\d*){re.escape(suffix)}$")
    numbers = []
    for path in directory.iterdir():
        if path.name in (base, lock_name(base), schedule_name(base)):
            continue
        match = pattern.match(path.name)
        assert match, f"unexpected file {path.name!r} next to {base}"
        numbers.append(int(match.group(1)))
    numbers.sort()
    assert numbers == list(range(1, len(numbers) + 1)), f"backup numbers have gaps: {numbers}"
    files = [directory / f"{base}.{n}{suffix}" for n in reversed(numbers)]
    if (directory / base).exists():
        files.append(directory / base)
    return files


def record_bytes(files: list[Path]) -> int:
    """The size in bytes of the longest record (line and newline) in *files*."""
    return max(len(line.encode()) + 1 for path in files for line in read_text(path).splitlines())


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
