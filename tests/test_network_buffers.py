"""The standard library's buffering and local handlers behind the funnel: MemoryHandler, QueueHandler,
BufferingHandler, NullHandler, WatchedFileHandler. Each is compared with the same handler configured in
the worker itself, as the network handlers are in ``test_network_handlers.py``."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue
import re
import time
from collections import defaultdict

import pytest

import logfunnel
from _network_workers import (
    entry_formatter,
    log_around_a_move,
    log_levels,
    log_with_local,
    run_workers,
)
from _workers import Collect

WORKERS = 3
PER_WORKER = 7  # records emit_every_kind() logs
TOTAL = WORKERS * PER_WORKER
ENTRY = re.compile(r"^(\d+) \d+\.\d{6} rec ")


def entries(text: str) -> dict[int, list[str]]:
    """Split a file in ENTRY_FORMAT into each process's records (a record's continuation lines with it)."""
    found: dict[int, list[str]] = defaultdict(list)
    pid = None
    for line in text.splitlines(keepends=True):
        match = ENTRY.match(line)
        if match:
            pid = int(match.group(1))
            found[pid].append(line)
        else:
            assert pid is not None, f"a continuation line before any record: {line!r}"
            found[pid][-1] += line
    return dict(found)


def wait_handled(collect: Collect, count: int, timeout: float = 30.0) -> None:
    """Wait until the listener has handed *count* records to the handlers before *collect*."""
    deadline = time.monotonic() + timeout
    while len(collect.records) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(collect.records) >= count, f"the listener handled {len(collect.records)} of {count}"


def _file_target(path) -> logging.FileHandler:
    target = logging.FileHandler(path, encoding="utf-8")
    target.setFormatter(entry_formatter())
    return target


def _compare_per_process(remote_text: str, local_paths) -> None:
    remote = entries(remote_text)
    assert len(remote) == len(local_paths)
    for path in local_paths:
        local = entries(path.read_text(encoding="utf-8"))
        ((pid, lines),) = local.items()
        assert remote[pid] == lines, f"process {pid}: the listener's file differs from {path.name}"


# -- MemoryHandler -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_memory_handler_writes_what_it_writes_from_the_worker(method, tmp_path):
    """MemoryHandler(capacity=3, flushLevel=ERROR, target=a file): each process's lines are the same."""
    remote = tmp_path / "remote.log"
    target = _file_target(remote)
    memory = logging.handlers.MemoryHandler(3, logging.ERROR, target)
    local_paths = [tmp_path / f"local-{w}.log" for w in range(WORKERS)]
    with logfunnel.start_listener(handlers=[memory]) as listener:
        specs = [("memory", str(path), 3, logging.ERROR, True) for path in local_paths]
        run_workers(method, log_with_local, [(listener.queue, spec, w) for w, spec in enumerate(specs)])
    memory.close()  # flushOnClose: what is still buffered is written now
    target.close()
    _compare_per_process(remote.read_text(encoding="utf-8"), local_paths)


def _memory_case(tmp_path, levels_per_worker, *, flush_on_close=True):
    """A listener's MemoryHandler(capacity=5, flushLevel=ERROR) to a file; one worker after another
    logs *levels*; returns the handler, its target and the file, with the listener stopped."""
    path = tmp_path / "memory.log"
    target = _file_target(path)
    memory = logging.handlers.MemoryHandler(5, logging.ERROR, target, flushOnClose=flush_on_close)
    collect = Collect()
    with logfunnel.start_listener(handlers=[memory, collect]) as listener:
        handled = 0
        for worker, levels in enumerate(levels_per_worker):
            run_workers("fork", log_levels, [(listener.queue, levels, worker)])
            handled += len(levels)
            wait_handled(collect, handled)
    return memory, target, path


def _lines(path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


@pytest.mark.timeout(60)
def test_memory_handler_holds_records_until_its_capacity(tmp_path):
    """Behind the funnel, 4 INFO records stay in the MemoryHandler; the 5th (its capacity) flushes all."""
    memory, target, path = _memory_case(tmp_path, [[logging.INFO] * 4])
    assert _lines(path) == 0 and len(memory.buffer) == 4
    memory.setTarget(None)  # keep close() from flushing into a closed file
    target.close()
    second = tmp_path / "second"
    second.mkdir()
    memory, target, path = _memory_case(second, [[logging.INFO] * 4, [logging.INFO]])
    assert _lines(path) == 5 and memory.buffer == []
    memory.close()
    target.close()


@pytest.mark.timeout(60)
def test_memory_handler_flushes_at_its_flush_level(tmp_path):
    """Two INFO records wait; an ERROR record (the flushLevel) writes all three, in order."""
    memory, target, path = _memory_case(tmp_path, [[logging.INFO, logging.INFO, logging.ERROR]])
    text = path.read_text(encoding="utf-8")
    assert [line.split(" rec ")[1].split()[0] for line in text.splitlines()] == ["INFO", "INFO", "ERROR"]
    memory.close()
    target.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flush_on_close", [True, False])
def test_memory_handler_flush_on_close(tmp_path, flush_on_close):
    """After the listener stops, closing the MemoryHandler writes its buffer only with flushOnClose."""
    memory, target, path = _memory_case(tmp_path, [[logging.INFO] * 3], flush_on_close=flush_on_close)
    assert _lines(path) == 0
    memory.close()
    target.close()
    assert _lines(path) == (3 if flush_on_close else 0)


# -- QueueHandler and BufferingHandler -----------------------------------------------------------------


def _by_record(states):
    return sorted(states, key=lambda d: (d["process"], d["created"], str(d["msg"])))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_queue_handler_puts_what_it_puts_from_the_worker(method):
    """QueueHandler to a queue.Queue in the listener's process: the records read there have the same
    attributes as those a worker's own QueueHandler puts on a multiprocessing queue."""
    inner: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = logging.handlers.QueueHandler(inner)
    back = multiprocessing.get_context(method).Queue()
    with logfunnel.start_listener(handlers=[handler]) as listener:
        run_workers(method, log_with_local, [(listener.queue, ("queue", back), w) for w in range(WORKERS)])
    got = _by_record(inner.get(timeout=10).__dict__ for _ in range(TOTAL))
    expected = _by_record(back.get(timeout=10).__dict__ for _ in range(TOTAL))
    assert inner.empty()
    assert got == expected


@pytest.mark.timeout(120)
def test_buffering_handler_keeps_what_it_keeps_in_the_worker():
    """BufferingHandler(capacity=1000) in the listener: its buffered records have the worker's fields
    (msg is the merged message and args None, as QueueHandler.prepare makes them; exc_info travels
    rendered, as exc_text)."""
    buffering = logging.handlers.BufferingHandler(1000)
    back = multiprocessing.get_context("fork").Queue()
    with logfunnel.start_listener(handlers=[buffering]) as listener:
        run_workers(
            "fork", log_with_local, [(listener.queue, ("buffering", 1000), w, back) for w in range(WORKERS)]
        )
    expected = [state for _ in range(WORKERS) for state in back.get(timeout=10)]
    got = [dict(record.__dict__) for record in buffering.buffer]
    assert len(got) == TOTAL and len(expected) == TOTAL
    for state in expected:
        assert state["message"] == state["msg"] % state["args"]
        assert (state["exc_info"] is None) == (state["exc_text"] is None)
    for state in got:
        assert state["msg"] == state["message"] and state["args"] is None and state["exc_info"] is None
    for state in got + expected:
        for key in ("msg", "args", "exc_info"):
            state.pop(key)
        state["msg"] = state["message"]
    assert _by_record(got) == _by_record(expected)


# -- NullHandler and WatchedFileHandler ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_null_handler_takes_every_record_and_writes_nothing(capfd):
    """A listener whose only handler is a NullHandler receives and accounts every record, silently."""
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as listener:
        run_workers("fork", log_with_local, [(listener.queue, ("buffering", 100), w) for w in range(WORKERS)])
    stats = listener.stats()
    assert (stats["received"], stats["dropped"], stats["lost"]) == (TOTAL, 0, 0)
    _out, err = capfd.readouterr()
    assert "Logging error" not in err and "logfunnel" not in err


@pytest.mark.timeout(120)
def test_watched_file_handler_reopens_a_file_moved_away_as_the_worker_does(tmp_path):
    """WatchedFileHandler: with the files moved away between two rounds (as logrotate does), the moved
    file and the new one hold, per process, what the worker's own WatchedFileHandler wrote in each."""
    remote = tmp_path / "remote.log"
    watched = logging.handlers.WatchedFileHandler(remote, encoding="utf-8")
    watched.setFormatter(entry_formatter())
    collect = Collect()
    context = multiprocessing.get_context("fork")
    local_paths = [tmp_path / f"local-{w}.log" for w in range(2)]
    logged = [context.Event() for _ in local_paths]
    moved = context.Event()
    with logfunnel.start_listener(handlers=[watched, collect]) as listener:
        processes = [
            context.Process(target=log_around_a_move, args=(listener.queue, str(path), w, logged[w], moved))
            for w, path in enumerate(local_paths)
        ]
        for process in processes:
            process.start()
        try:
            assert all(event.wait(30) for event in logged)
            wait_handled(collect, 5 * len(local_paths))
            for path in [remote, *local_paths]:
                os.rename(path, f"{path}.1")
            moved.set()
            for process in processes:
                process.join(30)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
        assert [p.exitcode for p in processes] == [0, 0]
    watched.close()
    assert remote.exists(), "the listener's WatchedFileHandler did not reopen the moved file"
    _compare_per_process(remote.read_text(encoding="utf-8"), local_paths)
    _compare_per_process(
        (tmp_path / "remote.log.1").read_text(encoding="utf-8"),
        [tmp_path / f"local-{w}.log.1" for w in range(2)],
    )
