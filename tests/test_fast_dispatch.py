"""The batched path writes byte for byte what each handler writes record by record.

Each test feeds one handler through a ``Dispatcher`` as a listener does (lines rendered by the
plan's formatters, as a worker renders them, in batches of several sizes) and a twin of it, in a
folder of its own, record by record through ``handle()``; then compares every file of the two
folders: names and bytes. No process is started: these are the decisions of the batch writers.
"""

from __future__ import annotations

import datetime
import gzip
import logging
import logging.handlers
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logfunnel._dispatch import Dispatcher
from logfunnel._render import make_renderer
from logfunnel.handlers import (
    LockedFileHandler,
    LockedRotatingFileHandler,
    LockedTimedRotatingFileHandler,
    LockedWatchedFileHandler,
)
from logfunnel.worker import _merge

FORMAT = "%(levelname)s %(name)s %(message)s"
BATCHES = (1, 7, 50, 3, 200)
Factory = Callable[[Path], logging.Handler]


def _messages() -> list[tuple[int, str]]:
    texts = []
    for i in range(300):
        level = logging.WARNING if i % 5 == 0 else logging.INFO
        if i % 37 == 0:
            text = f"long {i} " + "x" * 900  # longer than some maxBytes below: alone in its file
        elif i % 11 == 0:
            text = f"non-ASCII {i} é ß \U0001f600"
        else:
            text = f"line {i} " + "y" * (i % 60)
        texts.append((level, text))
    return texts


def _records(created: Callable[[int], float] | None = None) -> list[logging.LogRecord]:
    records = []
    for i, (level, text) in enumerate(_messages()):
        record = logging.LogRecord("app.fast", level, __file__, i, "%s", (text,), None)
        if created is not None:
            record.created = created(i)
        records.append(record)
    return records


def _batched(handler: logging.Handler, records: list[logging.LogRecord]) -> dict[str, Any]:
    """Feed *handler* as a listener does; return the plan (to check which path it took)."""
    dispatcher = Dispatcher([handler], prerender=True)
    plan = dispatcher.start()
    renderers = [make_renderer(spec) for spec in plan["formats"]]
    start = 0
    sizes = list(BATCHES)
    while start < len(records):
        size = sizes.pop(0) if sizes else 100
        batch = [_merge(record) for record in records[start : start + size]]
        start += size
        lines: list[list[str | None]] = [[r.format(record) for record in batch] for r in renderers]
        levels = [record.levelno for record in batch]
        states = [dict(record.__dict__, args=None, msg=record.message) for record in batch]
        dispatcher.dispatch(levels, lines, states if plan["full"] else None)
    dispatcher.stop()
    return plan


def _one_by_one(handler: logging.Handler, records: list[logging.LogRecord]) -> None:
    for record in records:
        if record.levelno >= handler.level:  # as Logger.callHandlers
            handler.handle(record)


def _files(folder: Path) -> dict[str, bytes]:
    # A gzip header holds the time it was made: compare what it holds.
    return {
        path.name: gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }


def _compare(
    tmp_path: Path, factory: Factory, created: Callable[[int], float] | None = None, prepare: Any = None
) -> dict[str, Any]:
    """Run *factory*'s handler both ways; assert identical file sets; return the batched plan."""
    folders = [tmp_path / "batched", tmp_path / "records"]
    handlers = []
    for folder in folders:
        folder.mkdir()
        handler = factory(folder)
        handler.setFormatter(logging.Formatter(FORMAT))
        if prepare is not None:
            prepare(handler)
        handlers.append(handler)
    plan = _batched(handlers[0], _records(created))
    _one_by_one(handlers[1], _records(created))
    for handler in handlers:
        handler.close()
    batched, recorded = (_files(folder) for folder in folders)
    assert sorted(batched) == sorted(recorded)
    for name in recorded:
        assert batched[name] == recorded[name], f"{name} differs"
    return plan


def _fast(plan: dict[str, Any]) -> bool:
    return not plan["full"] and len(plan["formats"]) >= 1


ROTATING: dict[str, dict[str, Any]] = {
    "backups": {"maxBytes": 700, "backupCount": 3},
    "no backups": {"maxBytes": 700},
    "delay": {"maxBytes": 500, "backupCount": 9, "delay": True},
    "large": {"maxBytes": 20_000, "backupCount": 2},
    "crlf": {"maxBytes": 600, "backupCount": 4, "terminator": "\r\n"},
    "ascii replace": {"maxBytes": 600, "backupCount": 4, "encoding": "ascii", "errors": "replace"},
    "utf-16": {"maxBytes": 1500, "backupCount": 4, "encoding": "utf-16"},
    "latin-1 strict": {"maxBytes": 600, "backupCount": 4, "encoding": "latin-1"},
    "xmlcharrefreplace": {
        "maxBytes": 9000,
        "backupCount": 5,
        "encoding": "ascii",
        "errors": "xmlcharrefreplace",
    },
}


def _with(handler: logging.Handler, **attributes: Any) -> logging.Handler:
    for name, value in attributes.items():
        setattr(handler, name, value)
    return handler


@pytest.mark.parametrize("options", list(ROTATING.values()), ids=list(ROTATING))
def test_rotating_file_handler_batches_roll_over_where_records_do(tmp_path, options, monkeypatch):
    """RotatingFileHandler: every file of the rotated set, names and bytes, as record by record."""
    monkeypatch.setattr(logging, "raiseExceptions", False)  # the unencodable lines' handleError
    options = dict(options)
    terminator = options.pop("terminator", "\n")

    def factory(folder: Path) -> logging.Handler:
        return _with(
            logging.handlers.RotatingFileHandler(folder / "app.log", **options), terminator=terminator
        )

    plan = _compare(tmp_path, factory)
    assert _fast(plan)


def test_rotating_namer_and_rotator_are_called_as_record_by_record(tmp_path):
    """namer and rotator (attributes) run on the batched path, with the same arguments."""
    calls: dict[str, list[tuple[str, str]]] = {"batched": [], "records": []}

    def prepare(handler: Any) -> None:
        which = Path(handler.baseFilename).parent.name
        handler.namer = lambda name: name + ".bak"

        def rotator(source: str, dest: str) -> None:
            calls[which].append((os.path.basename(source), os.path.basename(dest)))
            os.rename(source, dest)

        handler.rotator = rotator

    plan = _compare(
        tmp_path,
        lambda d: logging.handlers.RotatingFileHandler(d / "app.log", maxBytes=700, backupCount=3),
        prepare=prepare,
    )
    assert _fast(plan)
    assert calls["batched"] == calls["records"] and len(calls["records"]) > 5


class _CountingRollover(logging.handlers.RotatingFileHandler):
    rollovers = 0

    def doRollover(self) -> None:
        type(self).rollovers += 1
        super().doRollover()

    def rotation_filename(self, default_name: str) -> str:
        return default_name.replace("app.log.", "app-")


def test_overridden_do_rollover_and_rotation_filename_are_called_on_the_batched_path(tmp_path):
    """A subclass's doRollover and rotation_filename run as the standard library calls them."""

    def factory(folder: Path) -> logging.Handler:
        return _CountingRollover(folder / "app.log", maxBytes=700, backupCount=3)

    plan = _compare(tmp_path, factory)
    assert _fast(plan)
    assert _CountingRollover.rollovers > 10 and _CountingRollover.rollovers % 2 == 0  # both runs alike


class _CountingShould(logging.handlers.RotatingFileHandler):
    asked = 0

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        type(self).asked += 1
        return bool(super().shouldRollover(record))


class _OwnEmit(logging.handlers.RotatingFileHandler):
    emitted = 0

    def emit(self, record: logging.LogRecord) -> None:
        type(self).emitted += 1
        super().emit(record)


class _OwnFormat(logging.handlers.RotatingFileHandler):
    def format(self, record: logging.LogRecord) -> str:
        return "<" + super().format(record) + ">"


@pytest.mark.parametrize(
    ("cls", "counter"), [(_CountingShould, "asked"), (_OwnEmit, "emitted"), (_OwnFormat, None)]
)
def test_subclass_overriding_emit_format_or_should_rollover_gets_every_record(tmp_path, cls, counter):
    """shouldRollover, emit or format overridden: the record path, each call as the stdlib makes it."""
    plan = _compare(tmp_path, lambda d: cls(d / "app.log", maxBytes=700, backupCount=3))
    assert plan["full"] and not _fast(plan)
    if counter is not None:
        assert getattr(cls, counter) == 2 * len(_messages())


def _past_midnight(handler: Any) -> None:
    # Due since a fixed day: the first batch rolls over once, to a name both twins agree on.
    handler.rolloverAt = handler.computeRollover(1_700_000_000)


TIMED: dict[str, dict[str, Any]] = {
    "midnight": {"when": "midnight", "backupCount": 2},
    "utc atTime": {"when": "midnight", "utc": True, "atTime": datetime.time(3, 30), "backupCount": 1},
    "weekday": {"when": "W2", "backupCount": 3},
    "hours": {"when": "H", "interval": 6},
}


@pytest.mark.parametrize("options", list(TIMED.values()), ids=list(TIMED))
def test_timed_rotating_file_handler_batches_roll_over_and_delete_as_records_do(tmp_path, options):
    """TimedRotatingFileHandler: the rollover, its name, backupCount's deletions, as record by record."""
    for folder in ("batched", "records"):  # old backups that backupCount deletes
        (tmp_path / folder).mkdir()
        for day in (10, 11, 12):
            (tmp_path / folder / f"app.log.2023-10-{day}").write_text(f"old {day}\n")
            (tmp_path / folder / f"app.log.2023-10-{day}_00").write_text(f"old {day}\n")
    folders = [tmp_path / "batched", tmp_path / "records"]
    handlers = [
        logging.handlers.TimedRotatingFileHandler(folder / "app.log", **options) for folder in folders
    ]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        _past_midnight(handler)
    plan = _batched(handlers[0], _records())
    _one_by_one(handlers[1], _records())
    for handler in handlers:
        handler.close()
    assert _fast(plan)
    batched, recorded = (_files(folder) for folder in folders)
    assert batched == recorded
    assert len(batched) >= 2  # the rolled-over file and the new one


def test_watched_file_handler_reopens_a_moved_file_between_batches(tmp_path):
    """WatchedFileHandler: a file moved away between batches is reopened, as record by record."""
    folders = [tmp_path / "batched", tmp_path / "records"]
    handlers = []
    for folder in folders:
        folder.mkdir()
        handler = logging.handlers.WatchedFileHandler(folder / "app.log")
        handler.setFormatter(logging.Formatter(FORMAT))
        handlers.append(handler)
    records = _records()
    dispatcher = Dispatcher([handlers[0]], prerender=True)
    plan = dispatcher.start()
    assert _fast(plan)
    (renderer,) = [make_renderer(spec) for spec in plan["formats"]]
    for part in (records[:100], records[100:]):
        batch = [_merge(record) for record in part]
        dispatcher.dispatch([r.levelno for r in batch], [[renderer.format(r) for r in batch]], None)
        _one_by_one(handlers[1], part)
        if part is not records[-1:]:
            for folder in folders:
                if not (folder / "moved.log").exists():
                    os.rename(folder / "app.log", folder / "moved.log")
    dispatcher.stop()
    for handler in handlers:
        handler.close()
    batched, recorded = (_files(folder) for folder in folders)
    assert batched == recorded and set(batched) == {"app.log", "moved.log"}


WIDE = {"encoding": "ascii", "errors": "xmlcharrefreplace"}  # up to 10 bytes a character
LOCKED: list[tuple[str, Factory]] = [
    ("file", lambda d: LockedFileHandler(d / "app.log")),
    ("watched", lambda d: LockedWatchedFileHandler(d / "app.log")),
    ("rotating", lambda d: LockedRotatingFileHandler(d / "app.log", maxBytes=700, backupCount=3)),
    ("wide", lambda d: LockedRotatingFileHandler(d / "a", maxBytes=9000, backupCount=5, **WIDE)),
    ("compress", lambda d: LockedRotatingFileHandler(d / "a", maxBytes=5000, backupCount=2, compress=True)),
]  # fmt: skip


@pytest.mark.parametrize("factory", [f for _, f in LOCKED], ids=[name for name, _ in LOCKED])
def test_locked_handlers_take_the_batched_path_with_the_same_output(tmp_path, factory):
    """Locked* handlers behind a listener: lines batched, the same files as record by record."""
    plan = _compare(tmp_path, factory)
    assert _fast(plan)


def test_locked_timed_handler_rolls_over_by_each_records_creation_time(tmp_path):
    """LockedTimedRotatingFileHandler: each line goes to the file of the minute it was logged in."""
    base = 1_700_000_000.0

    def factory(folder: Path) -> logging.Handler:
        handler = LockedTimedRotatingFileHandler(folder / "app.log", when="M", backupCount=3)
        handler.rolloverAt = handler.computeRollover(int(base))
        return handler

    plan = _compare(tmp_path, factory, created=lambda i: base + i * 1.7)
    assert _fast(plan) and len(plan["formats"]) == 2  # the lines and the creation times
    assert len(_files(tmp_path / "batched")) == 4  # the current minute and three backups


def test_handler_level_filters_lines_on_the_batched_path(tmp_path):
    """A handler's level applies to the batched lines as to records."""
    plan = _compare(
        tmp_path,
        lambda d: logging.handlers.RotatingFileHandler(d / "app.log", maxBytes=700, backupCount=3),
        prepare=lambda handler: handler.setLevel(logging.WARNING),
    )
    assert _fast(plan)


def test_handler_with_a_filter_takes_the_record_path(tmp_path):
    """A filter needs the record: the handler gets records, and the filter sees every one."""
    seen = []

    def prepare(handler: logging.Handler) -> None:
        handler.addFilter(lambda record: seen.append(record.msg) or True)

    plan = _compare(
        tmp_path,
        lambda d: logging.handlers.RotatingFileHandler(d / "app.log", maxBytes=700, backupCount=3),
        prepare=prepare,
    )
    assert plan["full"] and len(seen) == 2 * len(_messages())


def test_created_times_that_no_worker_could_stamp_become_the_time_now(tmp_path):
    """A peer's creation time that is not a finite, plausible float costs nothing but itself."""
    handler = LockedTimedRotatingFileHandler(tmp_path / "app.log", when="H")
    handler.setFormatter(logging.Formatter(FORMAT))
    dispatcher = Dispatcher([handler], prerender=True)
    plan = dispatcher.start()
    lines = ["a", "b", "c", "d", "e"]
    created = ["nan", "inf", "-1e300", "not a float", repr(time.time())]
    first = plan["formats"][0][0] == FORMAT
    columns: list[list[str | None]] = [lines, created] if first else [created, lines]
    dispatcher.dispatch([logging.INFO] * 5, columns, None)
    dispatcher.stop()
    handler.close()
    assert (tmp_path / "app.log").read_text() == "a\nb\nc\nd\ne\n"


class _CountingReopen(logging.handlers.WatchedFileHandler):
    reopened = 0

    def reopenIfNeeded(self) -> None:
        type(self).reopened += 1
        super().reopenIfNeeded()


def test_overridden_reopen_if_needed_is_called_once_a_batch(tmp_path):
    """WatchedFileHandler subclass: its reopenIfNeeded runs before each batch (once, not per line)."""
    plan = _compare(tmp_path, lambda d: _CountingReopen(d / "app.log"))
    assert _fast(plan)
    batches = len(BATCHES) + 1  # the sizes, then the rest in one batch of 100 or fewer (40 records)
    assert _CountingReopen.reopened == batches + len(_messages())  # the twin: once per record


class _CountingDeletes(logging.handlers.TimedRotatingFileHandler):
    asked = 0

    def getFilesToDelete(self) -> list[str]:
        type(self).asked += 1
        return super().getFilesToDelete()


def test_overridden_get_files_to_delete_is_called_on_the_batched_path(tmp_path):
    """TimedRotatingFileHandler subclass: doRollover calls its getFilesToDelete, as record by record."""
    plan = _compare(
        tmp_path,
        lambda d: _CountingDeletes(d / "app.log", when="midnight", backupCount=1),
        prepare=_past_midnight,
    )
    assert _fast(plan)
    assert _CountingDeletes.asked == 2  # one rollover in each twin


@pytest.mark.timeout(30)
def test_locked_handler_batch_does_not_wait_for_another_process_holding_the_lock(tmp_path):
    """The listener hands a Locked* handler its batch and goes on; the flusher writes it later."""
    import fcntl

    handler = LockedFileHandler(tmp_path / "app.log")
    handler.setFormatter(logging.Formatter(FORMAT))
    dispatcher = Dispatcher([handler], prerender=True)
    plan = dispatcher.start()
    assert _fast(plan)
    fd = os.open(handler.lock_file, os.O_RDWR)  # another open file description: another process's lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        dispatcher.dispatch([logging.INFO] * 3, [["a", "b", "c"]], None)  # returns: the lock is busy
        assert (tmp_path / "app.log").read_text() == ""
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    handler.flush()
    dispatcher.stop()
    handler.close()
    assert (tmp_path / "app.log").read_text() == "a\nb\nc\n"
