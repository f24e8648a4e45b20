"""Routed by logger name with lines the workers rendered: the files one process would write."""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

import logfunnel
from _fast_workers import emit_routed, log_in_phases, log_routed
from _workers import Collect
from logfunnel._routing import NAME_SPEC
from test_routing import restore_loggers  # noqa: F401  (a fixture)

LINE = "%(name)s %(levelname)s %(message)s"


def routed_config(folder: Path, audit_filter: bool = False) -> dict[str, Any]:
    """The issue's configuration: a rotating root, a propagate-False ``app.db`` file of its own."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LINE}},
        "handlers": {
            "rotating": {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": str(folder / "app.log"),
                "maxBytes": 6000,
                "backupCount": 20,
                "formatter": "line",
            },
            "db": {"class": "logging.FileHandler", "filename": str(folder / "db.log"), "formatter": "line"},
        },
        "root": {"level": "INFO", "handlers": ["rotating"]},
        "loggers": {"app.db": {"handlers": ["db"], "propagate": False}},
    }
    if audit_filter:
        config["filters"] = {"audit": {"name": "app.audit"}}
        config["loggers"]["app.audit"] = {"filters": ["audit"]}
    return config


def _only_this_configuration() -> None:
    """Take every other test's handlers and filters off the loggers (restore_loggers puts them back):
    the routes are planned from the whole tree."""
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers[:] = []
            logger.filters[:] = []
            logger.propagate, logger.disabled = True, False
            logger.setLevel(logging.NOTSET)


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _close_all() -> None:
    for logger in [logging.getLogger(), logging.getLogger("app.db")]:
        for handler in logger.handlers:
            handler.close()


def _wait_received(listener: Any, count: int) -> None:
    deadline = time.monotonic() + 20
    while listener.stats()["received"] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.stats()["received"] == count


def _in_one_process(folder: Path, config: dict[str, Any], count: int) -> dict[str, bytes]:
    logging.config.dictConfig(config)
    emit_routed("r", count)
    _close_all()
    return _files(folder)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("audit_filter", [False, True], ids=["all lines", "a filtered logger"])
def test_routed_files_are_those_of_one_process(tmp_path, audit_filter, restore_loggers):  # noqa: F811
    """dictConfig routing (levels, propagate False, a rotating root): the same files, bytes and names."""
    remote, alone = tmp_path / "remote", tmp_path / "alone"
    remote.mkdir()
    alone.mkdir()
    _only_this_configuration()
    logging.config.dictConfig(routed_config(remote, audit_filter))
    with logfunnel.start_listener() as listener:
        assert NAME_SPEC in listener._plan["formats"] and len(listener._plan["formats"]) == 2
        assert listener._dispatcher.wants_records() is audit_filter  # only a filter needs records
        process = multiprocessing.get_context("fork").Process(target=log_routed, args=(listener.queue, 300))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    _close_all()
    got = _files(remote)
    expected = _in_one_process(alone, routed_config(alone, audit_filter), 300)
    assert sorted(got) == sorted(expected) and len(got) >= 5
    for name in expected:
        assert got[name] == expected[name], name
    assert listener.stats()["received"] == 300 * 5


@pytest.mark.timeout(60)
def test_handler_added_after_workers_connected_gets_records_from_the_next_acknowledgement(
    tmp_path,
    restore_loggers,  # noqa: F811
):
    """A handler the workers cannot render for, added later: records again; any gap counted lost."""
    _only_this_configuration()
    logging.config.dictConfig(routed_config(tmp_path))
    collect = Collect()
    ctx = multiprocessing.get_context("fork")
    done, go = [ctx.Event() for _ in range(3)], [ctx.Event() for _ in range(3)]
    count = 50
    with logfunnel.start_listener() as listener:
        process = ctx.Process(target=log_in_phases, args=(listener.queue, count, done, go))
        process.start()
        try:
            for phase in range(3):
                assert done[phase].wait(20)
                _wait_received(listener, 7 * count * (phase + 1) - 2 * count * (phase + 1))  # less debug
                if phase == 0:
                    logging.getLogger("app").addHandler(collect)  # app, app.audit (app.db does not propagate)
                go[phase].set()
            process.join(30)
        finally:
            for event in go:
                event.set()
        assert process.exitcode == 0
    lost = listener.stats()["lines_lost"]
    _close_all()
    logging.getLogger("app").removeHandler(collect)
    messages = [record.getMessage() for record in collect.records]
    seen = {tag: len([m for m in messages if m.startswith(f"{tag} ")]) for tag in "ABCD"}
    per_phase = 2 * count  # app and app.audit
    assert seen["A"] == 0  # before it was added
    assert seen["B"] + seen["C"] + lost == 2 * per_phase  # on their way without attributes, or not
    assert seen["D"] == per_phase  # the acknowledgements since said: whole records again
    text = "".join(
        path.read_text(encoding="utf-8") for path in tmp_path.iterdir() if path.name.startswith("app.log")
    )
    for tag in "ABCD":  # the rotating root's lines, whichever path each took
        assert text.count(f" {tag} app ") == count and text.count(f" {tag} audit ") == count
