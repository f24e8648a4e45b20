"""The locked file handlers: many processes (and threads) writing one file set lose, tear and mix nothing."""

from __future__ import annotations

import calendar
import logging
import logging.config
import logging.handlers
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from _fork_helpers import (
    FORK,
    assert_every_line_once,
    assert_newest_kept,
    collect_results,
    lock_held_elsewhere,
    lock_name,
    make_handler,
    numbered_files,
    own_logger,
    parse_file,
    read_text,
    record_bytes,
    run_processes,
    schedule_name,
    wait_for,
    write_for,
    write_lines,
    write_until,
)
from logfunnel.handlers import (
    LockedFileHandler,
    LockedRotatingFileHandler,
    LockedTimedRotatingFileHandler,
    LockedWatchedFileHandler,
)

KIB = 1024
ALL_CLASSES = [
    LockedFileHandler,
    LockedWatchedFileHandler,
    LockedRotatingFileHandler,
    LockedTimedRotatingFileHandler,
]
TIMED_NAME = re.compile(r"^app\.log\.(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})(\.gz)?$")
PRINT_SLACK = 1e-6  # %(created)f prints 6 decimals: a time just before a boundary may print as the boundary


@pytest.fixture(autouse=True)
def _drop_test_loggers():
    """Detach and close the handlers a test hung on its loggers, so none lives on into a later fork."""
    yield
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("handlers-test.") and isinstance(logger, logging.Logger):
            for handler in logger.handlers[:]:
                logger.removeHandler(handler)
                handler.close()


def _writers(count: int) -> list[str]:
    return [f"p{n}" for n in range(count)]


def _assert_sizes_bounded(files: list[Path], max_bytes: int) -> None:
    """No file holds more than maxBytes plus one record (read decompressed)."""
    record = record_bytes(files)
    for path in files:
        size = len(read_text(path).encode())
        assert size <= max_bytes + record, f"{path.name}: {size} bytes, maxBytes {max_bytes} + {record}"


def _timed_backups(directory: Path, base: str = "app.log") -> list[tuple[int, Path]]:
    """(first second of the interval, path) for every timed backup, oldest first; no other names allowed."""
    backups = []
    for path in directory.iterdir():
        if path.name in (base, lock_name(base), schedule_name(base)):
            continue
        match = TIMED_NAME.match(path.name)
        assert match, f"unexpected file {path.name!r} next to {base}"
        backups.append((calendar.timegm(time.strptime(match.group(1), "%Y-%m-%d_%H-%M-%S")), path))
    return sorted(backups)


# --- size rotation under contention -----------------------------------------------------------------

ROTATE_WRITERS, ROTATE_LINES, ROTATE_MAX = 8, 10_000, 64 * KIB


@pytest.mark.timeout(120)
def test_concurrent_size_rotation_loses_duplicates_or_tears_no_line(tmp_path):
    """8 processes x 10,000 lines through 64 KiB rotation: each line once, whole, in order; sizes bounded."""
    path = tmp_path / "app.log"
    kwargs = {"maxBytes": ROTATE_MAX, "backupCount": 1_000}
    writers = _writers(ROTATE_WRITERS)
    run_processes(
        write_lines, [(LockedRotatingFileHandler, str(path), kwargs, w, ROTATE_LINES) for w in writers], 100
    )
    files = numbered_files(tmp_path)  # exactly app.log and app.log.1..n: no app.log.1.1, no gap
    assert len(files) > 50, "the test should have rotated many times"
    assert_every_line_once(files, dict.fromkeys(writers, ROTATE_LINES))
    _assert_sizes_bounded(files, ROTATE_MAX)


@pytest.mark.timeout(120)
def test_small_backup_count_keeps_exactly_that_many_backups_holding_the_newest_lines(tmp_path):
    """backupCount=3 under 8 writers: app.log and .1-.3 remain; each writer's kept lines are its newest."""
    path = tmp_path / "app.log"
    kwargs = {"maxBytes": ROTATE_MAX, "backupCount": 3}
    writers = _writers(ROTATE_WRITERS)
    run_processes(
        write_lines, [(LockedRotatingFileHandler, str(path), kwargs, w, ROTATE_LINES) for w in writers], 100
    )
    files = numbered_files(tmp_path)
    assert [f.name for f in files] == ["app.log.3", "app.log.2", "app.log.1", "app.log"]
    assert_newest_kept(files, dict.fromkeys(writers, ROTATE_LINES))
    record = record_bytes(files)
    assert sum(f.stat().st_size for f in files) <= 4 * (ROTATE_MAX + record)


@pytest.mark.timeout(60)
def test_no_process_rotates_a_file_that_another_process_just_rotated(tmp_path):
    """Rotation is decided on the file's current size: every backup is full, none a stray near-empty one."""
    path = tmp_path / "app.log"
    max_bytes = 8 * KIB
    kwargs = {"maxBytes": max_bytes, "backupCount": 1_000}
    writers = _writers(4)
    run_processes(write_lines, [(LockedRotatingFileHandler, str(path), kwargs, w, 5_000) for w in writers])
    files = numbered_files(tmp_path)
    record = record_bytes(files)
    for backup in files[:-1]:
        size = backup.stat().st_size
        assert max_bytes - record <= size < max_bytes, f"{backup.name} rotated at {size} bytes"
    assert_every_line_once(files, dict.fromkeys(writers, 5_000))


def test_empty_file_is_not_rotated_for_a_record_larger_than_max_bytes(tmp_path):
    """A record over maxBytes goes alone into a file of its own; no empty backup is ever made."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=200, backupCount=5)
    log = own_logger("big", handler)
    big = "big" + "x" * 500
    log.info("w=%s i=%d", big, 0)
    assert numbered_files(tmp_path) == [path], "a record into an empty file made a backup"
    log.info("w=%s i=%d", "small", 1)
    log.info("w=%s i=%d", big, 2)
    handler.close()
    files = numbered_files(tmp_path)
    assert [[(w, i) for _, w, i in parse_file(f)] for f in files] == [[(big, 0)], [("small", 1)], [(big, 2)]]


# --- time rotation under contention -----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_concurrent_time_rotation_makes_one_file_per_second_and_overwrites_none(tmp_path):
    """4 processes for 6 s, when='S': every line once; each backup holds exactly the lines of its second."""
    path = tmp_path / "app.log"
    results = FORK.Queue()
    kwargs = {"when": "S", "utc": True}
    writers = _writers(4)
    run_processes(
        write_for, [(LockedTimedRotatingFileHandler, str(path), kwargs, w, 6.0, results) for w in writers], 25
    )
    counts = collect_results(results, len(writers))
    backups = _timed_backups(tmp_path)
    assert len(backups) >= 5
    assert_every_line_once([p for _, p in backups] + [path], counts)
    seconds = [second for second, _ in backups]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a second has no file of its own"
    for second, backup in backups:
        created = [c for c, _, _ in parse_file(backup)]
        assert created, f"{backup.name} is empty"
        early = [c for c in created if c < second]
        late = [c for c in created if c >= second + 1 + PRINT_SLACK]
        assert not early and not late, (
            f"{backup.name}: {len(early)} lines from before its second (first {min(created):.6f}), "
            f"{len(late)} from after it (last {max(created):.6f})"
        )
    first_in_base = min(c for c, _, _ in parse_file(path))
    assert first_in_base >= seconds[-1] + 1, f"app.log holds a line of {first_in_base:.6f}"


@pytest.mark.timeout(30)
def test_time_rotation_with_backup_count_removes_the_oldest_backups(tmp_path):
    """4 processes for 4 s, when='S', backupCount=2: two backups remain, the newest two seconds."""
    path = tmp_path / "app.log"
    results = FORK.Queue()
    kwargs = {"when": "S", "utc": True, "backupCount": 2}
    writers = _writers(4)
    run_processes(
        write_for, [(LockedTimedRotatingFileHandler, str(path), kwargs, w, 4.0, results) for w in writers], 25
    )
    counts = collect_results(results, len(writers))
    backups = _timed_backups(tmp_path)
    assert len(backups) == 2, [p.name for _, p in backups]
    (older, _), (newer, _) = backups
    assert newer == older + 1, "the kept backups are not the two newest seconds"
    first_in_base = min(c for c, _, _ in parse_file(path))
    assert first_in_base >= newer + 1, f"app.log holds a line of {first_in_base:.6f}"
    assert_newest_kept([p for _, p in backups] + [path], counts)


def _sleep_into_the_next_second() -> None:
    time.sleep(1.02 - time.time() % 1)


@pytest.mark.timeout(30)
def test_record_handled_after_its_second_ended_goes_to_that_seconds_file(tmp_path):
    """A record made before a boundary but handled after it (from a queue, a busy lock) joins its own file."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedTimedRotatingFileHandler, path, when="S", utc=True)
    log = own_logger("late", handler)
    _sleep_into_the_next_second()
    log.info("w=solo i=%d", 0)
    late = log.makeRecord(log.name, logging.INFO, __file__, 0, "w=solo i=%d", (1,), None)
    _sleep_into_the_next_second()
    log.info("w=solo i=%d", 2)  # starts the next second's file
    handler.handle(late)
    handler.close()
    ((second, backup),) = _timed_backups(tmp_path)
    assert [(i, second <= c < second + 1 + PRINT_SLACK) for c, _, i in parse_file(backup)] == [
        (0, True),
        (1, True),
    ], f"{backup.name} should hold lines 0 and 1, both of its own second"
    assert [i for _, _, i in parse_file(path)] == [2]


@pytest.mark.timeout(30)
def test_timed_backup_count_also_removes_compressed_backups(tmp_path):
    """compress=True, backupCount=1: after two rollovers one .gz backup remains (its name ends in .gz)."""
    path = tmp_path / "app.log"
    handler = make_handler(
        LockedTimedRotatingFileHandler, path, when="S", utc=True, backupCount=1, compress=True
    )
    log = own_logger("timed-gzip-count", handler)
    for i in range(3):
        log.info("w=solo i=%d", i)
        if i < 2:
            _sleep_into_the_next_second()
    handler.close()
    backups = _timed_backups(tmp_path)
    assert [p.name.endswith(".gz") for _, p in backups] == [True], [p.name for _, p in backups]
    assert_newest_kept([backups[0][1], path], {"solo": 3})


@pytest.mark.timeout(30)
def test_timed_logs_sharing_one_lock_file_keep_their_own_schedules(tmp_path):
    """An hourly and a per-second log with one lock_file: the per-second log still rotates every second."""
    lock = str(tmp_path / "app.lock")
    hourly = make_handler(LockedTimedRotatingFileHandler, tmp_path / "hourly.log", when="H", lock_file=lock)
    secondly = make_handler(
        LockedTimedRotatingFileHandler, tmp_path / "app.log", when="S", utc=True, lock_file=lock
    )
    slow, fast = own_logger("hourly", hourly), own_logger("secondly", secondly)
    for i in range(3):
        slow.info("w=slow i=%d", i)
        fast.info("w=fast i=%d", i)
        if i < 2:
            _sleep_into_the_next_second()
    hourly.close()
    secondly.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.startswith("app.log.")]) == 2, names
    assert not [n for n in names if n.startswith("hourly.log.")], names


# --- logrotate moving the file away ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_watched_handlers_reopen_after_an_outside_rename_and_lose_nothing(tmp_path):
    """logrotate-style renames while 4 processes write: each reopens; every line is in some file, once."""
    path = tmp_path / "app.log"
    stop, results = FORK.Event(), FORK.Queue()
    writers = _writers(4)
    started = {w: FORK.Event() for w in writers}
    processes = [
        FORK.Process(
            target=write_until, args=(LockedWatchedFileHandler, str(path), {}, w, stop, started[w], results)
        )
        for w in writers
    ]
    try:
        for p in processes:
            p.start()
        assert all(started[w].wait(20) for w in writers)
        for moves in range(1, 4):
            for k in range(moves - 1, 0, -1):
                os.rename(tmp_path / f"app.log.{k}", tmp_path / f"app.log.{k + 1}")
            os.rename(path, tmp_path / "app.log.1")
            assert wait_for(lambda: path.exists() and path.stat().st_size > 0), "no writer reopened app.log"
        assert wait_for(lambda: path.stat().st_size > 10 * KIB)  # all have had time to notice the last move
    finally:
        stop.set()
        for p in processes:
            p.join(20)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    counts = collect_results(results, len(writers))
    files = [tmp_path / "app.log.3", tmp_path / "app.log.2", tmp_path / "app.log.1", path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f.name for f in files] + [".app.log.lock"])
    assert_every_line_once(files, counts)


# --- a handler made before fork ---------------------------------------------------------------------


def _threads_log(log: logging.Logger, child: int, threads: int, count: int) -> None:
    def run(wid: str) -> None:
        for i in range(count):
            log.info("w=%s i=%d", wid, i)

    workers = [threading.Thread(target=run, args=(f"c{child}t{t}",)) for t in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def _child_with_inherited_handler(log_name: str, child: int, threads: int, count: int) -> None:
    log = logging.getLogger(log_name)
    _threads_log(log, child, threads, count)
    for handler in log.handlers:
        handler.flush()


@pytest.mark.timeout(60)
def test_handler_made_before_fork_serves_children_and_their_threads(tmp_path):
    """One rotating handler, 4 fork children x 4 threads plus the parent: exact counts, whole lines."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=32 * KIB, backupCount=1_000)
    log = own_logger("prefork", handler)
    for i in range(100):
        log.info("w=parent i=%d", i)
    children = [
        FORK.Process(target=_child_with_inherited_handler, args=(log.name, c, 4, 3_000)) for c in range(4)
    ]
    try:
        for p in children:
            p.start()
        for i in range(100, 3_000):  # the parent keeps writing meanwhile
            log.info("w=parent i=%d", i)
        for p in children:
            p.join(40)
    finally:
        for p in children:
            if p.is_alive():
                p.kill()
                p.join(5)
        handler.close()
    assert [p.exitcode for p in children] == [0] * 4
    files = numbered_files(tmp_path)
    expected = {f"c{c}t{t}": 3_000 for c in range(4) for t in range(4)} | {"parent": 3_000}
    assert_every_line_once(files, expected)
    _assert_sizes_bounded(files, 32 * KIB)


def _log_until(log: logging.Logger, stop: threading.Event, written: list[int]) -> None:
    i = 0
    while not stop.is_set():
        log.info("w=parent i=%d", i)
        i += 1
    written.append(i)


def _child_logs_ten(log_name: str, child: int) -> None:
    log = logging.getLogger(log_name)
    for i in range(10):
        log.info("w=c%d i=%d", child, i)
    for handler in log.handlers:
        handler.flush()


@pytest.mark.timeout(60)
def test_fork_while_another_thread_is_writing_does_not_deadlock_the_child(tmp_path):
    """20 forks while a parent thread logs non-stop: every child logs, flushes and exits."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedFileHandler, path)
    log = own_logger("fork-mid-write", handler)
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_log_until, args=(log, stop, written))
    writer.start()
    children = []
    try:
        for c in range(20):
            child = FORK.Process(target=_child_logs_ten, args=(log.name, c))
            child.start()
            children.append(child)
        for child in children:
            child.join(20)
    finally:
        stop.set()
        writer.join(20)
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(5)
        handler.close()
    assert [c.exitcode for c in children] == [0] * 20, "a child hung or failed after the fork"
    assert_every_line_once([path], {f"c{c}": 10 for c in range(20)} | {"parent": written[0]})


def _child_returns_without_flush(cls: type, path: str, log_name: str | None, wid: str, count: int) -> None:
    if log_name is None:  # a handler of the child's own, never flushed or closed
        log = own_logger(wid, make_handler(cls, path, maxBytes=16 * KIB, backupCount=1_000))
    else:
        log = logging.getLogger(log_name)
    for i in range(count):
        log.info("w=%s i=%d", wid, i)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("made", ["in-the-child", "before-fork"])
def test_fork_child_that_returns_without_flush_or_close_loses_nothing(tmp_path, made):
    """A multiprocessing child just returns (os._exit follows): what it queued under contention lands."""
    path = tmp_path / "app.log"
    log_name = None
    handler = None
    if made == "before-fork":
        handler = make_handler(LockedRotatingFileHandler, path, maxBytes=16 * KIB, backupCount=1_000)
        log_name = own_logger("no-flush", handler).name
    writers = _writers(4)
    try:
        run_processes(
            _child_returns_without_flush,
            [(LockedRotatingFileHandler, str(path), log_name, w, 5_000) for w in writers],
        )
    finally:
        if handler is not None:
            handler.close()
    assert_every_line_once(numbered_files(tmp_path), dict.fromkeys(writers, 5_000))


# --- compression ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_compressed_backups_are_gzip_and_hold_every_line_once(tmp_path):
    """compress=True, 4 processes, 16 KiB files: backups are app.log.N.gz, valid gzip, every line once."""
    path = tmp_path / "app.log"
    kwargs = {"maxBytes": 16 * KIB, "backupCount": 1_000, "compress": True}
    writers = _writers(4)
    run_processes(write_lines, [(LockedRotatingFileHandler, str(path), kwargs, w, 5_000) for w in writers])
    files = numbered_files(tmp_path, suffix=".gz")  # no uncompressed backup, no temporary left over
    assert len(files) > 10
    assert_every_line_once(files, dict.fromkeys(writers, 5_000))  # read_text() checks each gzip fully
    _assert_sizes_bounded(files, 16 * KIB)


@pytest.mark.timeout(60)
def test_compressed_backups_with_small_backup_count_keep_the_newest(tmp_path):
    """compress=True, backupCount=2, 4 processes: app.log.1.gz and .2.gz remain, valid, the newest lines."""
    path = tmp_path / "app.log"
    kwargs = {"maxBytes": 8 * KIB, "backupCount": 2, "compress": True}
    writers = _writers(4)
    run_processes(write_lines, [(LockedRotatingFileHandler, str(path), kwargs, w, 5_000) for w in writers])
    files = numbered_files(tmp_path, suffix=".gz")
    assert [f.name for f in files] == ["app.log.2.gz", "app.log.1.gz", "app.log"]
    assert_newest_kept(files, dict.fromkeys(writers, 5_000))


@pytest.mark.timeout(30)
def test_close_returns_only_once_every_backup_is_gzipped(tmp_path):
    """One process, many quick rollovers: right after close() every backup is a complete gzip file."""
    path = tmp_path / "app.log"
    handler = make_handler(
        LockedRotatingFileHandler, path, maxBytes=4 * KIB, backupCount=1_000, compress=True
    )
    log = own_logger("close-gzip", handler)
    for i in range(3_000):
        log.info("w=solo i=%d", i)
    handler.close()
    files = numbered_files(tmp_path, suffix=".gz")
    assert len(files) > 20
    assert_every_line_once(files, {"solo": 3_000})


def test_timed_compressed_backup_is_named_for_its_interval_and_gzipped(tmp_path):
    """compress=True on the timed handler: the backup is app.log.<time>.gz, a gzip file of its lines."""
    path = tmp_path / "app.log"
    _sleep_into_the_next_second()  # no second boundary falls inside the test
    handler = make_handler(LockedTimedRotatingFileHandler, path, when="S", utc=True, compress=True)
    log = own_logger("timed-gzip", handler)
    log.info("w=solo i=%d", 0)
    handler.doRollover()
    log.info("w=solo i=%d", 1)
    handler.close()
    backups = _timed_backups(tmp_path)
    assert len(backups) == 1 and backups[0][1].name.endswith(".gz")
    assert_every_line_once([backups[0][1], path], {"solo": 2})


@pytest.mark.timeout(30)
def test_second_rollover_into_the_same_interval_keeps_the_backup_a_valid_gzip(tmp_path):
    """Two rollovers within one hour land in one backup name; it must still be one valid gzip file."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedTimedRotatingFileHandler, path, when="H", utc=True, compress=True)
    log = own_logger("timed-gzip-twice", handler)
    log.info("w=solo i=%d", 0)
    handler.doRollover()

    # The backup keeps its plain name until it is gzip (a .gz name never holds plain text).
    def compressed() -> bool:
        names = [p for p in tmp_path.iterdir() if p.name.startswith("app.log.")]
        return len(names) == 1 and names[0].name.endswith(".gz") and names[0].read_bytes()[:2] == b"\x1f\x8b"

    assert wait_for(compressed), "the first backup was never compressed"
    log.info("w=solo i=%d", 1)
    handler.doRollover()
    log.info("w=solo i=%d", 2)
    handler.close()
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("app.log.")]
    assert all(p.name.endswith(".gz") for p in backups)
    files = [*sorted(backups), path]
    assert sorted((w, i) for f in files for _, w, i in parse_file(f)) == [("solo", i) for i in range(3)]


# --- stdlib compatibility -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locked", "stdlib"),
    [
        (LockedFileHandler, logging.FileHandler),
        (LockedWatchedFileHandler, logging.handlers.WatchedFileHandler),
        (LockedRotatingFileHandler, logging.handlers.RotatingFileHandler),
        (LockedTimedRotatingFileHandler, logging.handlers.TimedRotatingFileHandler),
    ],
)
def test_locked_handlers_are_instances_of_the_stdlib_classes(tmp_path, locked, stdlib):
    """Code that checks isinstance against the stdlib class keeps working."""
    handler = locked(str(tmp_path / "app.log"))
    try:
        assert isinstance(handler, stdlib)
        assert isinstance(handler, logging.FileHandler)
    finally:
        handler.close()


def _configure_and_log(config: dict, count: int) -> None:
    logging.config.dictConfig(config)
    log = logging.getLogger("dictconfigured")
    for i in range(count):
        log.info("w=dict i=%d", i)
    logging.shutdown()


@pytest.mark.timeout(30)
def test_dictconfig_takes_the_class_name_as_a_one_word_replacement(tmp_path):
    """The class "logfunnel.handlers.LockedRotatingFileHandler" with maxBytes/backupCount rotates as asked."""
    path = tmp_path / "app.log"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lines": {"format": "%(created)f %(process)d %(thread)d %(message)s"}},
        "handlers": {
            "file": {
                "class": "logfunnel.handlers.LockedRotatingFileHandler",
                "filename": str(path),
                "maxBytes": 2 * KIB,
                "backupCount": 3,
                "formatter": "lines",
            }
        },
        "loggers": {"dictconfigured": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    run_processes(_configure_and_log, [(config, 500)])  # dictConfig touches global state: a child's
    files = numbered_files(tmp_path)
    assert [f.name for f in files] == ["app.log.3", "app.log.2", "app.log.1", "app.log"]
    assert_newest_kept(files, {"dict": 500})
    _assert_sizes_bounded(files, 2 * KIB)


def test_namer_and_rotator_hooks_are_used(tmp_path):
    """A namer names every backup and a rotator moves each one, as with the stdlib handler."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=1 * KIB, backupCount=3)
    rotations = []

    def rotator(source: str, dest: str) -> None:
        rotations.append((os.path.basename(source), os.path.basename(dest)))
        os.rename(source, dest)

    handler.namer = lambda name: name + ".custom"
    handler.rotator = rotator
    log = own_logger("hooks", handler)
    for i in range(200):
        log.info("w=solo i=%d", i)
    handler.close()
    files = numbered_files(tmp_path, suffix=".custom")
    assert [f.name for f in files] == ["app.log.3.custom", "app.log.2.custom", "app.log.1.custom", "app.log"]
    assert len(rotations) > 3
    assert set(rotations) == {("app.log", "app.log.1.custom")}
    assert_newest_kept(files, {"solo": 200})


def test_namer_that_moves_backups_to_another_directory_keeps_backup_count_of_them(tmp_path):
    """A namer may put backups elsewhere (as the stdlib allows): they are still shifted, not overwritten."""
    logs, archive = tmp_path / "logs", tmp_path / "archive"
    logs.mkdir()
    archive.mkdir()
    path = logs / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=1 * KIB, backupCount=3)
    handler.namer = lambda name: str(archive / os.path.basename(name))
    log = own_logger("namer-dir", handler)
    for i in range(200):
        log.info("w=solo i=%d", i)
    handler.close()
    assert sorted(p.name for p in archive.iterdir()) == ["app.log.1", "app.log.2", "app.log.3"]
    files = [archive / "app.log.3", archive / "app.log.2", archive / "app.log.1", path]
    assert_newest_kept(files, {"solo": 200})
    assert sum(len(parse_file(f)) for f in files) > 60  # three full backups and the base file


# --- permissions and the lock file ------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("compress", [False, True])
def test_chmod_applies_to_the_log_file_and_every_backup(tmp_path, umask_022, compress):
    """chmod=0o640: the base file, each new base file after rotation and every backup are 0o640."""
    path = tmp_path / "app.log"
    handler = make_handler(
        LockedRotatingFileHandler, path, maxBytes=1 * KIB, backupCount=10, compress=compress, chmod=0o640
    )
    log = own_logger("chmod", handler)
    for i in range(100):
        log.info("w=solo i=%d", i)
    handler.close()
    files = numbered_files(tmp_path, suffix=".gz" if compress else "")
    assert len(files) > 3
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {"0o640"}, modes


def test_chmod_applies_to_timed_backups_and_the_new_file(tmp_path, umask_022):
    """chmod=0o640 on the timed handler: the new base file after a rollover and the backup are 0o640."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedTimedRotatingFileHandler, path, when="H", compress=True, chmod=0o640)
    log = own_logger("chmod-timed", handler)
    log.info("w=solo i=%d", 0)
    handler.doRollover()
    log.info("w=solo i=%d", 1)
    handler.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("app")]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert len(modes) == 2 and set(modes.values()) == {"0o640"}, modes


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_default_lock_file_sits_beside_the_log_and_never_receives_a_line(tmp_path, cls):
    """By default the lock is .app.log.lock beside the log; no log line is ever written into it."""
    path = tmp_path / "app.log"
    handler = make_handler(cls, path)
    log = own_logger("default-lock", handler)
    for i in range(10):
        log.info("w=solo i=%d", i)
    handler.close()
    lock = tmp_path / ".app.log.lock"
    assert lock.is_file()
    assert b"w=solo" not in lock.read_bytes()
    expected = [".app.log.lock", "app.log"] + (
        [".app.log.schedule"] if cls is LockedTimedRotatingFileHandler else []
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    assert_every_line_once([path], {"solo": 10})


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_lock_file_option_puts_the_lock_where_asked(tmp_path, cls):
    """lock_file=...: that file is the lock, none is made beside the log, and no line goes into it."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "locks").mkdir()
    path = tmp_path / "logs" / "app.log"
    lock = tmp_path / "locks" / "app.lock"
    handler = make_handler(cls, path, lock_file=str(lock))
    log = own_logger("lock-file", handler)
    for i in range(10):
        log.info("w=solo i=%d", i)
    handler.close()
    assert lock.is_file()
    assert b"w=solo" not in lock.read_bytes()
    expected = ["app.log"] + ([".app.log.schedule"] if cls is LockedTimedRotatingFileHandler else [])
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(expected)
    assert_every_line_once([path], {"solo": 10})


@pytest.mark.timeout(30)
def test_lines_wait_for_a_lock_held_on_the_given_lock_file(tmp_path):
    """While another process holds lock_file a line is queued, not written; it lands once the lock is free."""
    path = tmp_path / "app.log"
    lock = tmp_path / "elsewhere.lock"
    handler = make_handler(LockedFileHandler, path, lock_file=str(lock))
    log = own_logger("held", handler)
    log.info("w=solo i=%d", 0)
    with lock_held_elsewhere(lock) as holder:
        log.info("w=solo i=%d", 1)
        text_while_held = read_text(path)
        assert not holder.gone.is_set(), "emit() waited for the lock instead of queueing an INFO line"
        assert "i=1" not in text_while_held, "a line was written while another process held the lock"
    handler.flush()
    assert_every_line_once([path], {"solo": 2})
    handler.close()


# --- when lines land ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_uncontended_line_is_in_the_file_when_the_logging_call_returns(tmp_path, cls):
    """A single process reading its log right after logger.info() sees the line."""
    path = tmp_path / "app.log"
    handler = make_handler(cls, path)
    log = own_logger("sync", handler)
    try:
        for i in range(20):
            log.info("w=solo i=%d", i)
            assert read_text(path).endswith(f" w=solo i={i}\n"), f"line {i} was not written synchronously"
    finally:
        handler.close()


@pytest.mark.timeout(30)
def test_flush_writes_out_every_line_queued_under_contention(tmp_path):
    """1,000 lines queued while another process held the lock: flush() lands them all, in order."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=16 * KIB, backupCount=100)
    log = own_logger("flush", handler)
    with lock_held_elsewhere(tmp_path / ".app.log.lock"):
        for i in range(1_000):
            log.info("w=solo i=%d", i)
    handler.flush()
    assert_every_line_once(numbered_files(tmp_path), {"solo": 1_000})
    handler.close()


@pytest.mark.timeout(30)
def test_error_record_is_written_before_the_logging_call_returns_under_contention(tmp_path):
    """An ERROR record waits for the lock held elsewhere and is in the file when log.error() returns."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedFileHandler, path)
    log = own_logger("error", handler)
    with lock_held_elsewhere(tmp_path / ".app.log.lock") as holder:
        log.info("w=solo i=%d", 0)  # queued behind the lock
        timer = holder.release_after(0.3)
        log.error("w=solo i=%d", 1)
        text = read_text(path)
        timer.join()
    assert text.endswith(" w=solo i=1\n"), "the ERROR line was not on disk when log.error() returned"
    assert_every_line_once([path], {"solo": 2})
    handler.close()


def _handler_mid_batch(tmp_path: Path) -> tuple[logging.Handler, int]:
    """A rotating handler whose own thread is inside a slow rotator with queued lines still unwritten.

    Returns the handler and the number of lines logged.
    """
    path = tmp_path / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=1 * KIB, backupCount=10)
    log = own_logger("mid-batch", handler)
    count = 0
    while not path.exists() or path.stat().st_size < 1 * KIB - 120:  # lines are 50-65 bytes: no rotation yet
        log.info("w=solo i=%d", count)
        count += 1
    in_rotator = threading.Event()

    def slow_rotator(source: str, dest: str) -> None:
        in_rotator.set()
        time.sleep(0.5)
        os.rename(source, dest)

    handler.rotator = slow_rotator
    with lock_held_elsewhere(tmp_path / ".app.log.lock"):
        for _ in range(5):  # queued; the first or second of them starts a new file
            log.info("w=solo i=%d", count)
            count += 1
    assert wait_for(in_rotator.is_set), "the queued lines never reached the rotation"
    return handler, count


@pytest.mark.timeout(30)
def test_flush_waits_for_the_batch_the_handler_thread_is_writing(tmp_path):
    """flush() while the handler's own thread is mid-batch (in a slow rotator) returns once it is written."""
    handler, count = _handler_mid_batch(tmp_path)
    handler.flush()
    try:
        assert_every_line_once(numbered_files(tmp_path), {"solo": count})
    finally:
        handler.close()


@pytest.mark.timeout(30)
def test_close_waits_for_the_batch_the_handler_thread_is_writing(tmp_path):
    """close() while the handler's own thread is mid-batch (in a slow rotator) loses none of the batch."""
    handler, count = _handler_mid_batch(tmp_path)
    handler.close()
    assert_every_line_once(numbered_files(tmp_path), {"solo": count})
