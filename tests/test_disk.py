"""Files when the disk or the data misbehaves: a full disk, an unencodable line, a raw fork child."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import logfunnel
from _fork_helpers import FORK, FORMAT, LINE, LockHolder, make_handler, own_logger
from _tmpfs import tiny_tmpfs
from _workers import wait_for
from logfunnel.handlers import LockedFileHandler, LockedRotatingFileHandler
from logfunnel.listener import LogListener

WARNING = re.compile(r"^\d+\.\d+ (\d+) \d+ (\d+) lines? (?:was|were) lost while the disk was full$")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of the test's own, unmounted afterwards."""
    with tiny_tmpfs(tmp_path) as mount:
        yield mount


class _Reporting(LockedRotatingFileHandler):
    """Counts its handleError calls (not one of the seams: the batched path stays)."""

    reports = 0

    def handleError(self, record: logging.LogRecord) -> None:
        type(self).reports += 1


def _fill_then_recover(
    path: str, wid: str, first: int, second: int, filled: Any, freed: Any, results: Any
) -> None:
    """Child: *first* lines (the disk fills up), wait until space is freed, *second* lines, report."""
    _Reporting.reports = 0
    handler = make_handler(_Reporting, path, maxBytes=200_000, backupCount=100)
    log = own_logger(wid, handler)
    for i in range(first):
        log.info("w=%s i=%d", wid, i)
    handler.flush()
    filled.put(wid)
    freed.wait(30)
    for i in range(first, first + second):
        log.info("w=%s i=%d", wid, i)
    handler.close()
    results.put(
        (wid, os.getpid(), first + second, handler.lines_lost, handler.losses.by_reason, _Reporting.reports)
    )


def _read_lines(folder: Path, prefix: str) -> list[str]:
    lines: list[str] = []
    for path in sorted(folder.glob(prefix + "*")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends inside a line"
        lines += data.decode().splitlines()
    return lines


@pytest.mark.timeout(120)
def test_disk_full_leaves_no_torn_line(tiny_disk):
    """4 processes filling a 1 MiB disk leave only whole lines; after space is freed, all counts add up.

    Every line is either whole in the files or counted lost by its process: produced = written + lost,
    exactly; each episode is reported once (handleError) and ended by one WARNING with its count.
    """
    filler = tiny_disk / "filler"
    filler.write_bytes(b"x" * 300_000)
    path = str(tiny_disk / "app.log")
    filled, results, freed = FORK.Queue(), FORK.Queue(), FORK.Event()
    args = [(path, f"w{n}", 6000, 300, filled, freed, results) for n in range(4)]
    processes = [FORK.Process(target=_fill_then_recover, args=a) for a in args]
    try:
        for p in processes:
            p.start()
        for _ in processes:
            filled.get(timeout=60)
        filler.unlink()
        freed.set()
        reports = [results.get(timeout=60) for _ in processes]
        for p in processes:
            p.join(30)
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in processes] == [0] * 4

    written: dict[str, list[int]] = defaultdict(list)
    warned: dict[int, list[int]] = defaultdict(list)
    for line in _read_lines(tiny_disk, "app.log"):
        match = LINE.match(line)
        if match:
            written[match.group(4)].append(int(match.group(5)))
            continue
        warning = WARNING.match(line)
        assert warning, f"torn or foreign line: {line!r}"
        warned[int(warning.group(1))].append(int(warning.group(2)))
    assert sum(lost for *_, lost, _, _ in reports) > 0, "the disk never filled up: the test proves nothing"
    for wid, pid, produced, lost, by_reason, episodes in reports:
        assert len(written[wid]) == len(set(written[wid])), f"{wid} has a line twice"
        assert produced == len(written[wid]) + lost, f"{wid}: {produced} != {len(written[wid])} + {lost}"
        assert sum(warned[pid]) == lost, f"{wid}: warnings say {warned[pid]}, counted {lost}"
        assert by_reason == ({"disk_full": lost} if lost else {})
        assert episodes == len(warned[pid]), "handleError once per episode, not once per line"
        # The lines after space returned are all there: recovery needs no restart.
        assert set(range(6000, 6300)) <= set(written[wid])


def _listener_fill(handler: logging.FileHandler, count: int, start: int) -> int:
    for base in range(start, start + count, 100):
        LogListener._write_lines(handler, [f"0.0 1 1 w=l i={i}" for i in range(base, base + 100)])
    return count


@pytest.mark.timeout(60)
def test_disk_full_losses_are_counted_and_reported(tiny_disk, capsys):
    """The listener's batched writer on a full disk: no torn line, losses counted for stats(), one
    handleError per episode, a WARNING once space returns, and the next batch written."""
    filler = tiny_disk / "filler"
    filler.write_bytes(b"x" * 600_000)
    handler = logging.FileHandler(tiny_disk / "listener.log")
    handler.setFormatter(logging.Formatter(FORMAT))
    listener = LogListener(None, handler)
    try:
        produced = _listener_fill(handler, 20_000, 0)  # ~400 KB into ~440 KB, and more
        produced += _listener_fill(handler, 10_000, 20_000)
        losses = listener._handler_losses()
        assert losses["lines_lost"] > 0
        assert losses["handler_failures"] == {"disk_full": losses["lines_lost"]}
        assert capsys.readouterr().err.count("--- Logging error ---") == 1
        filler.unlink()
        produced += _listener_fill(handler, 1000, 30_000)
    finally:
        handler.close()
        listener._cleanup()
    lines = _read_lines(tiny_disk, "listener.log")
    written = [int(m.group(5)) for m in map(LINE.match, lines) if m]
    warnings = [int(m.group(2)) for m in map(WARNING.match, lines) if m]
    assert len(written) + len(warnings) == len(lines), "a torn line"
    assert warnings == [losses["lines_lost"]]
    assert produced == len(written) + losses["lines_lost"]
    assert written[-1000:] == list(range(30_000, 31_000))


def _bad_batch() -> list[str]:
    lines = [f"good {i}" for i in range(200)]
    lines.insert(100, "bad \udc80")
    return lines


@pytest.mark.parametrize("via", ["locked", "listener"])
def test_unencodable_line_costs_only_itself(tmp_path, via, capsys):
    """A lone surrogate under utf-8, among 200 good lines queued with it, loses only itself."""
    path = tmp_path / "app.log"
    if via == "locked":
        handler: Any = LockedRotatingFileHandler(path, maxBytes=1_000_000, backupCount=2, encoding="utf-8")
        holder = LockHolder(Path(handler.lock_file))  # so that all 201 lines wait in one batch
        holder.process.start()
        try:
            assert holder.held.wait(10)
            log = own_logger("surrogate", handler)
            for line in _bad_batch():
                log.info(line)
            holder.release.set()
            handler.flush()
        finally:
            holder.release.set()
            holder.process.join(10)
    else:
        handler = logging.FileHandler(path, encoding="utf-8")
        LogListener._write_lines(handler, _bad_batch())
    handler.close()
    assert path.read_text().splitlines() == [f"good {i}" for i in range(200)]
    figures = handler.losses.as_dict() if via == "locked" else _losses_of(handler)
    assert figures == {"lines_lost": 1, "by_reason": {"unencodable": 1}}
    assert capsys.readouterr().err.count("--- Logging error ---") == 1


def _losses_of(handler: logging.Handler) -> dict[str, Any]:
    from logfunnel.handlers._disk import losses_of

    return losses_of(handler).as_dict()


def _raw_fork_child_writes(path: str, lock_file: str) -> None:
    """Run in a fresh interpreter: a handler, then a raw os.fork() child that logs while another
    process holds the lock, and leaves through os._exit()."""
    handler = make_handler(LockedFileHandler, path)
    log = own_logger("raw", handler)
    log.info("w=parent i=0")
    pid = os.fork()
    if pid == 0:
        log.info("w=child i=1")
        os._exit(0)
    os.waitpid(pid, 0)
    handler.close()


@pytest.mark.timeout(120)
def test_raw_fork_child_queued_line_survives_os_exit(tmp_path):
    """A raw fork child's line that met a held lock is in the file after os._exit(), 10 times of 10."""
    for attempt in range(10):
        path = tmp_path / f"raw{attempt}.log"
        lock = tmp_path / f".raw{attempt}.log.lock"
        lock.touch()
        holder = LockHolder(lock)
        holder.process.start()
        try:
            assert holder.held.wait(10)
            release = holder.release_after(0.3)
            child = FORK.Process(target=_raw_fork_child_writes, args=(str(path), str(lock)))
            child.start()
            child.join(30)
            release.join()
            assert child.exitcode == 0
        finally:
            holder.release.set()
            holder.process.join(10)
        messages = sorted(line.split(" ", 3)[3] for line in path.read_text().splitlines())
        assert messages == ["w=child i=1", "w=parent i=0"], f"attempt {attempt}"


class _PerRecord(LockedRotatingFileHandler):
    """Overrides a seam: the standard library's emit, record by record, under the lock."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return super().shouldRollover(record)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [LockedFileHandler, LockedRotatingFileHandler, _PerRecord])
def test_disk_full_leaves_no_torn_line_in_one_process(tiny_disk, cls, capsys):
    """One process, batched or record by record: whole lines only, losses counted, recovery by itself."""
    filler = tiny_disk / "filler"
    filler.write_bytes(b"x" * 900_000)
    handler = make_handler(
        cls,
        tiny_disk / "app.log",
        **({} if cls is LockedFileHandler else {"maxBytes": 50_000, "backupCount": 50}),
    )
    log = own_logger("one", handler)
    for i in range(3000):
        log.info("w=one i=%d", i)
    lost_while_full = handler.lines_lost
    filler.unlink()
    for i in range(3000, 3100):
        log.info("w=one i=%d", i)
    handler.close()
    lines = _read_lines(tiny_disk, "app.log")
    written = [int(m.group(5)) for m in map(LINE.match, lines) if m]
    warnings = [int(m.group(2)) for m in map(WARNING.match, lines) if m]
    assert len(written) + len(warnings) == len(lines), "a torn line"
    assert lost_while_full > 0 and handler.lines_lost == lost_while_full == sum(warnings)
    assert len(written) + handler.lines_lost == 3100 and len(set(written)) == len(written)
    assert set(range(3000, 3100)) <= set(written)
    assert capsys.readouterr().err.count("--- Logging error ---") == len(warnings)


def _worker_lines(handle: Any, wid: str, count: int) -> None:
    """Child: *count* numbered lines through worker logging to the listener."""
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger(f"disk.{wid}")
    log.setLevel(logging.INFO)
    for i in range(count):
        log.warning("w=%s i=%d", wid, i)
    logfunnel.flush_worker_logging(30)


def _run_workers(handle: Any, specs: list[tuple[str, int]]) -> None:
    processes = [FORK.Process(target=_worker_lines, args=(handle, wid, n)) for wid, n in specs]
    try:
        for p in processes:
            p.start()
        for p in processes:
            p.join(60)
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in processes] == [0] * len(processes)


@pytest.mark.timeout(120)
def test_listener_file_handler_on_a_full_disk_tears_no_line(tiny_disk):
    """4 workers into a listener's plain FileHandler on a full disk, then space: no torn line, and
    received = written + lines_lost, exactly; the listener reports the loss in the file."""
    filler = tiny_disk / "filler"
    filler.write_bytes(b"x" * 700_000)
    handler = logging.FileHandler(tiny_disk / "listener.log")
    handler.setFormatter(logging.Formatter(FORMAT))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        _run_workers(listener.queue, [(f"w{n}", 4000) for n in range(4)])
        assert wait_for(lambda: listener.stats()["received"] == 16_000, timeout=30)
        filler.unlink()
        _run_workers(listener.queue, [("after", 100)])
        assert wait_for(lambda: listener.stats()["received"] == 16_100, timeout=30)
        stats = listener.stats()
        losses = listener._handler_losses()
    handler.close()
    lines = _read_lines(tiny_disk, "listener.log")
    written = [m.group(4, 5) for m in map(LINE.match, lines) if m]
    warnings = [int(m.group(2)) for m in map(WARNING.match, lines) if m]
    assert len(written) + len(warnings) == len(lines), "a torn line"
    assert len(set(written)) == len(written)
    assert losses["lines_lost"] > 0, "the disk never filled up: the test proves nothing"
    assert stats["dropped"] == stats["lost"] == 0
    assert stats["received"] == len(written) + losses["lines_lost"]
    assert sum(warnings) == losses["lines_lost"]
    assert {("after", str(i)) for i in range(100)} <= set(written)
