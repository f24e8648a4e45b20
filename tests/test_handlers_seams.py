"""The locked handlers as one-word drop-ins: the standard library's rules and seams, where it has them."""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from _fork_helpers import (
    assert_every_line_once,
    make_handler,
    numbered_files,
    own_logger,
    run_processes,
    write_lines,
)
from logfunnel.handlers import (
    LockedFileHandler,
    LockedRotatingFileHandler,
    LockedTimedRotatingFileHandler,
    LockedWatchedFileHandler,
)

PLAIN_CLASSES = [LockedFileHandler, LockedWatchedFileHandler]


def _record(msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": msg, "levelno": logging.INFO, "levelname": "INFO"})


def _lock_is_held(lock_file: str) -> bool:
    """Whether some open file description holds the flock on *lock_file* (ours is another one)."""
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class _Counting:
    """Counts the calls of the rotation seams, then does what the class it is mixed into does."""

    calls: ClassVar[dict[str, int]] = {}

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        self.calls["shouldRollover"] += 1
        return super().shouldRollover(record)

    def doRollover(self) -> None:
        self.calls["doRollover"] += 1
        super().doRollover()


class CountingStdlib(_Counting, logging.handlers.RotatingFileHandler):
    pass


class CountingLocked(_Counting, LockedRotatingFileHandler):
    pass


class CheckedRollover(LockedRotatingFileHandler):
    """A subclass with its own shouldRollover, as used from several processes at once."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return super().shouldRollover(record)


def _counts(cls: type, path: Path, messages: list[str]) -> tuple[dict[str, int], list[str]]:
    """The seam calls a fresh *cls* handler made for *messages*, and the files it left, oldest first."""
    cls.calls = {"shouldRollover": 0, "doRollover": 0}
    handler = cls(str(path), maxBytes=30, backupCount=2, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    for msg in messages:
        handler.handle(_record(msg))
    handler.close()
    names = [f"{path}.2", f"{path}.1", str(path)]
    return dict(cls.calls), [Path(n).read_text() for n in names if os.path.exists(n)]


# --- FileHandler: emit after close --------------------------------------------------------------------


@pytest.mark.parametrize("cls", PLAIN_CLASSES)
def test_emit_after_close_with_mode_w_does_not_truncate(tmp_path, cls):
    """A closed 'w' handler drops later records, as FileHandler does (bpo-42378), instead of truncating."""
    path = tmp_path / "app.log"
    handler = cls(str(path), mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(_record("1"))
    handler.close()
    handler.emit(_record("2"))
    assert path.read_text() == "1\n"
    assert handler.stream is None


@pytest.mark.parametrize("cls", PLAIN_CLASSES)
def test_emit_after_close_with_mode_a_appends_as_the_stdlib_does(tmp_path, cls):
    """A closed 'a' handler reopens and appends, as FileHandler does."""
    path = tmp_path / "app.log"
    handler = cls(str(path), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(_record("1"))
    handler.close()
    handler.emit(_record("2"))
    handler.close()
    assert path.read_text() == "1\n2\n"


# --- RotatingFileHandler.shouldRollover() called directly --------------------------------------------


def test_should_rollover_is_true_with_backup_count_zero(tmp_path):
    """shouldRollover() says True when the record reaches maxBytes, even with backupCount=0, as the stdlib."""
    path = tmp_path / "app.log"
    path.write_text("\n")
    handler = LockedRotatingFileHandler(str(path), maxBytes=2, encoding="utf-8")
    assert handler.shouldRollover(_record("x")) is True
    handler.close()


def test_do_rollover_with_backup_count_zero_only_reopens(tmp_path):
    """doRollover() with backupCount=0 makes no backup and keeps the file, as the stdlib's."""
    path = tmp_path / "app.log"
    path.write_text("kept\n")
    handler = LockedRotatingFileHandler(str(path), maxBytes=2, encoding="utf-8")
    handler.doRollover()
    handler.close()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["app.log"]
    assert path.read_text() == "kept\n"


def test_should_rollover_never_says_yes_for_a_non_regular_file(tmp_path):
    """shouldRollover() is False for /dev/null however small maxBytes is (bpo-45401)."""
    handler = LockedRotatingFileHandler(os.devnull, maxBytes=1, backupCount=1, encoding="utf-8")
    handler.emit(_record("x" * 10))
    assert handler.shouldRollover(_record("x" * 10)) is False
    handler.close()


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LockedFileHandler, {}),
        (LockedRotatingFileHandler, {"maxBytes": 1, "backupCount": 1}),
        (LockedTimedRotatingFileHandler, {"when": "S"}),
    ],
)
def test_fifo_log_gets_no_lock_or_schedule_file_beside_it(tmp_path, cls, kwargs):
    """A FIFO (not a regular file, like /dev/null) is written with no lock or schedule file beside it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        handler = cls(str(fifo), encoding="utf-8", **kwargs)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.handle(_record("through"))
        handler.close()
        assert os.read(reader, 100) == b"through\n"
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.parametrize("content", ["", "\n"])
@pytest.mark.parametrize(("max_bytes", "backups"), [(0, 1), (1, 0), (2, 1), (100, 1)])
def test_should_rollover_answers_what_this_interpreters_stdlib_answers(tmp_path, content, max_bytes, backups):
    """shouldRollover() on a fresh handler agrees with the running stdlib's (empty files: gh-116263)."""
    answers = []
    for cls, name in [
        (logging.handlers.RotatingFileHandler, "std.log"),
        (LockedRotatingFileHandler, "ours.log"),
    ]:
        path = tmp_path / name
        path.write_text(content)
        handler = cls(str(path), maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        answers.append(handler.shouldRollover(_record("x")))
        handler.close()
    assert answers[1] == answers[0]


def test_emit_never_rolls_an_empty_file_over(tmp_path):
    """The handler's own path writes a record over maxBytes into an empty file, on every version."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedRotatingFileHandler, path, maxBytes=10, backupCount=2)
    handler.emit(_record("x" * 50))
    handler.close()
    assert numbered_files(tmp_path) == [path]


# --- subclasses that override a seam ------------------------------------------------------------------


def test_overridden_should_rollover_is_called(tmp_path):
    """A subclass's shouldRollover() is called once per record, as by the stdlib handler."""
    messages = [f"message {i:02d}" for i in range(5)]
    ours, _ = _counts(CountingLocked, tmp_path / "ours.log", messages)
    theirs, _ = _counts(CountingStdlib, tmp_path / "std.log", messages)
    assert ours["shouldRollover"] == theirs["shouldRollover"] == 5


def test_overridden_do_rollover_is_called_where_the_stdlib_calls_it(tmp_path):
    """A subclass's doRollover() is called as often as the stdlib calls it, and the files end alike."""
    messages = [f"message {i:02d}" for i in range(5)]
    ours, our_files = _counts(CountingLocked, tmp_path / "ours.log", messages)
    theirs, their_files = _counts(CountingStdlib, tmp_path / "std.log", messages)
    assert ours["doRollover"] == theirs["doRollover"] > 0
    assert our_files == their_files


def test_overridden_emit_runs_under_the_file_lock(tmp_path):
    """A subclass's own emit() is called by handle() with the lock between processes held."""
    held: list[bool] = []

    class Checking(LockedFileHandler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(_lock_is_held(self.lock_file))
            super().emit(record)

    handler = Checking(str(tmp_path / "app.log"), encoding="utf-8")
    handler.handle(_record("x"))
    handler.close()
    assert held == [True]


def test_overridden_emit_that_calls_should_rollover_does_not_deadlock(tmp_path):
    """The file lock is re-entrant within a thread: an emit() calling the other seams completes."""

    class Deciding(LockedRotatingFileHandler):
        def emit(self, record: logging.LogRecord) -> None:
            if self.shouldRollover(record):
                self.doRollover()
            super().emit(record)

    path = tmp_path / "app.log"
    handler = make_handler(Deciding, path, maxBytes=100, backupCount=3)
    for i in range(10):
        handler.handle(_record(f"w=a i={i}"))
    handler.close()
    assert len(numbered_files(tmp_path)) > 1


@pytest.mark.timeout(30)
def test_flush_and_close_inside_an_overridden_emit_do_not_deadlock(tmp_path):
    """A subclass's emit() may call flush() and close() with the file lock held; both return."""

    class Closing(LockedFileHandler):
        def emit(self, record: logging.LogRecord) -> None:
            super().emit(record)
            self.flush()
            self.close()

    path = tmp_path / "app.log"
    handler = Closing(str(path), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(_record("last"))
    assert path.read_text() == "last\n"
    assert handler.stream is None


@pytest.mark.parametrize(
    "cls", [LockedFileHandler, LockedRotatingFileHandler, LockedTimedRotatingFileHandler]
)
def test_overridden_format_is_used(tmp_path, cls):
    """A subclass's format() makes the line, even with a plain Formatter set."""

    class Shouting(cls):
        def format(self, record: logging.LogRecord) -> str:
            return super().format(record).upper()

    path = tmp_path / "app.log"
    handler = Shouting(str(path), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(_record("quiet"))
    handler.close()
    assert path.read_text() == "QUIET\n"


def test_overridden_rotation_filename_and_rotate_are_called(tmp_path):
    """A subclass's rotation_filename() names the backup and its rotate() moves the file."""
    rotated: list[tuple[str, str]] = []

    class Renaming(LockedRotatingFileHandler):
        def rotation_filename(self, default_name: str) -> str:
            return default_name + ".bak"

        def rotate(self, source: str, dest: str) -> None:
            rotated.append((os.path.basename(source), os.path.basename(dest)))
            os.rename(source, dest)

    path = tmp_path / "app.log"
    handler = make_handler(Renaming, path, maxBytes=60, backupCount=2)
    for i in range(3):
        handler.handle(_record(f"w=a i={i} " + "x" * 40))
    handler.close()
    assert rotated[0] == ("app.log", "app.log.1.bak")
    assert (tmp_path / "app.log.1.bak").exists()


def test_overridden_timed_should_rollover_and_do_rollover_are_called(tmp_path):
    """A timed subclass's shouldRollover() is asked once per record; its doRollover() runs when it says so."""
    calls = {"should": 0, "do": 0}

    class EveryOther(LockedTimedRotatingFileHandler):
        def shouldRollover(self, record: logging.LogRecord) -> bool:
            calls["should"] += 1
            return calls["should"] % 2 == 0

        def doRollover(self) -> None:
            calls["do"] += 1

    handler = make_handler(EveryOther, tmp_path / "app.log", when="S")
    for i in range(6):
        handler.handle(_record(f"w=a i={i}"))
    handler.close()
    assert calls == {"should": 6, "do": 3}


def test_overridden_compute_rollover_sets_the_timed_schedule(tmp_path):
    """A timed subclass's computeRollover() decides when the file rotates."""

    class Soon(LockedTimedRotatingFileHandler):
        def computeRollover(self, currentTime: int) -> int:
            return currentTime + 1  # a second from now, though the interval is an hour

    path = tmp_path / "app.log"
    handler = make_handler(Soon, path, when="H")
    handler.handle(_record("w=a i=0"))
    time.sleep(1.1)
    handler.handle(_record("w=a i=1"))
    handler.close()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("app.log.")]) == 1


def test_overridden_get_files_to_delete_is_called(tmp_path):
    """A timed subclass's getFilesToDelete() chooses what a rollover removes."""
    asked: list[bool] = []

    class Keeping(LockedTimedRotatingFileHandler):
        def getFilesToDelete(self) -> list[str]:
            asked.append(True)
            return []

    handler = make_handler(Keeping, tmp_path / "app.log", when="S", backupCount=1)
    handler.handle(_record("w=a i=0"))
    handler.doRollover()
    handler.close()
    assert asked


@pytest.mark.parametrize(
    "cls",
    [LockedFileHandler, LockedWatchedFileHandler, LockedRotatingFileHandler, LockedTimedRotatingFileHandler],
)
def test_subclass_without_overridden_seams_keeps_the_batched_path(tmp_path, cls):
    """A subclass that only adds a method (or sets namer/rotator) still writes through the batched path."""

    class Plain(cls):
        def describe(self) -> str:
            return "plain"

    handler = Plain(str(tmp_path / "app.log"), encoding="utf-8")
    handler.namer = lambda name: name + ".x"
    assert handler._per_record is False
    handler.close()


@pytest.mark.timeout(60)
def test_overridden_seam_under_four_processes_loses_duplicates_or_tears_no_line(tmp_path):
    """4 processes x 2,000 lines through a subclass's shouldRollover: each line once, whole, in order."""
    path = tmp_path / "app.log"
    kwargs: dict[str, Any] = {"maxBytes": 16 * 1024, "backupCount": 1_000}
    writers = [f"p{n}" for n in range(4)]
    run_processes(write_lines, [(CheckedRollover, str(path), kwargs, w, 2_000) for w in writers])
    files = numbered_files(tmp_path)
    assert len(files) > 5, "the test should have rotated several times"
    assert_every_line_once(files, dict.fromkeys(writers, 2_000))


def test_locked_file_handler_works_with_logging_file_handler_swapped_for_it(tmp_path, monkeypatch):
    """With logging.FileHandler swapped for LockedFileHandler (as a drop-in harness does), it still writes."""
    monkeypatch.setattr(logging, "FileHandler", LockedFileHandler)
    path = tmp_path / "app.log"
    handler = make_handler(LockedFileHandler, path)
    own_logger("swapped", handler).info("w=a i=%d", 0)
    handler.close()
    assert path.read_text().endswith("w=a i=0\n")


# --- the timed handler's shared schedule against the file ---------------------------------------------


def test_log_last_written_before_the_shared_schedules_interval_is_rolled_over(tmp_path):
    """A log last written before the shared schedule's interval rotates at the next line, as in the stdlib."""
    path = tmp_path / "app.log"
    first = make_handler(LockedTimedRotatingFileHandler, path, when="MIDNIGHT")
    first.handle(_record("w=old i=0"))
    first.close()  # the shared schedule now says: next midnight
    two_days_ago = time.time() - 2 * 86400
    os.utime(path, (two_days_ago, two_days_ago))
    second = make_handler(LockedTimedRotatingFileHandler, path, when="MIDNIGHT")
    second.handle(_record("w=new i=0"))
    second.close()
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("app.log.")]
    assert len(backups) == 1
    assert backups[0].name == f"app.log.{time.strftime('%Y-%m-%d', time.localtime(two_days_ago))}"
    assert "w=old" in backups[0].read_text()
    assert "w=old" not in path.read_text()


def test_changed_when_does_not_wait_for_the_previous_schedule(tmp_path):
    """A handler started with when='M' over a log scheduled for midnight rotates within the minute."""
    path = tmp_path / "app.log"
    daily = make_handler(LockedTimedRotatingFileHandler, path, when="MIDNIGHT")
    daily.handle(_record("w=a i=0"))
    daily.close()
    minutely = make_handler(LockedTimedRotatingFileHandler, path, when="M")
    minutely.handle(_record("w=a i=1"))
    assert minutely.rolloverAt <= time.time() + 61
    minutely.close()


def test_lock_that_cannot_be_taken_for_a_subclass_goes_to_handle_error_not_the_caller(tmp_path):
    """A seam overridden, an unusable lock file: the failure goes to handleError; the logging call returns."""
    errors: list[logging.LogRecord] = []

    class Failing(LockedFileHandler):
        def format(self, record: logging.LogRecord) -> str:
            return super().format(record)

        def handleError(self, record: logging.LogRecord) -> None:
            errors.append(record)

    handler = Failing(str(tmp_path / "app.log"))

    def unusable(blocking: bool = True) -> bool:  # (a lock file in a missing folder is made now)
        raise PermissionError(13, "Permission denied")

    handler._lockfile.acquire = unusable  # type: ignore[method-assign]
    own_logger("failing", handler).info("w=a i=%d", 0)
    handler.close()
    assert len(errors) == 1
