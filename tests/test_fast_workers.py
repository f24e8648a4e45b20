"""Formatters rendered in the workers, and batched file handlers, end to end with real workers.

Each worker writes the same records, with the same formatters, to files of its own; the listener's
files must hold the same bytes (as tests/test_fidelity.py does for plain formatters).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing

import pytest

import logfunnel
from _fast_workers import Bracketed, Undeclared, formatters, log_locally_and_remotely
from _need import need_module
from _workers import log_records

need_module("pythonjsonlogger")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_json_and_declared_formatters_render_in_workers_byte_for_byte(method, tmp_path):
    """JSON (both import paths) and declared formatters: rendered in the worker, identical bytes."""
    count = len(formatters())
    remote = [tmp_path / f"remote-{i}.log" for i in range(count)]
    local = [str(tmp_path / f"local-{i}.log") for i in range(count)]
    handlers = []
    for formatter, path in zip(formatters(), remote):
        handler = logging.FileHandler(path, encoding="utf-8", errors="surrogateescape")
        handler.setFormatter(formatter)
        handlers.append(handler)
    with logfunnel.start_listener(handlers=handlers) as listener:
        plan = listener._plan
        process = multiprocessing.get_context(method).Process(
            target=log_locally_and_remotely, args=(listener.queue, local)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    for handler in handlers:
        handler.close()
    assert not plan["full"] and all(spec[0] == "class" for spec in plan["formats"])
    for mine, theirs in zip(local, remote):
        with open(mine, "rb") as file:
            expected = file.read()
        assert expected.count(b"\n") >= 9
        assert theirs.read_bytes() == expected, f"{theirs.name} differs from {mine}"
    assert listener.stats()["received"] == 9


def test_undeclared_subclass_of_a_declared_formatter_is_rendered_on_the_listener():
    """Declaring a class does not declare its subclasses: they may override what made it safe."""
    handler = logging.NullHandler()
    handler.setFormatter(Undeclared("%(message)s"))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        assert listener._plan["full"] and listener._plan["formats"] == []


def test_formatter_class_that_a_worker_cannot_import_is_rendered_on_the_listener():
    """A class defined in a function (no import path) stays on the listener, declared or not."""

    class Local(Bracketed):
        pass

    handler = logging.NullHandler()
    handler.setFormatter(logfunnel.render_in_workers(Local)("%(message)s"))  # type: ignore[operator]
    with logfunnel.start_listener(handlers=[handler]) as listener:
        assert listener._plan["full"] and listener._plan["formats"] == []


ROTATING_FORMAT = "%(levelname)s %(name)s %(message)s"


@pytest.mark.timeout(60)
def test_rotating_file_set_from_workers_matches_one_process(tmp_path):
    """RotatingFileHandler behind a listener: the rotated set a single process would write."""
    remote, alone = tmp_path / "remote", tmp_path / "alone"
    remote.mkdir()
    alone.mkdir()
    handlers = []
    for folder in (remote, alone):
        handler = logging.handlers.RotatingFileHandler(folder / "app.log", maxBytes=4000, backupCount=5)
        handler.setFormatter(logging.Formatter(ROTATING_FORMAT))
        handlers.append(handler)
    with logfunnel.start_listener(handlers=[handlers[0]]) as listener:
        assert not listener._plan["full"]
        process = multiprocessing.get_context("fork").Process(
            target=log_records, args=(1, 500, listener.queue)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    log = logging.getLogger("test.worker")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handlers[1])
    try:
        log_records(1, 500)
    finally:
        log.removeHandler(handlers[1])
        log.propagate = True
        log.setLevel(logging.NOTSET)
    for handler in handlers:
        handler.close()
    names = sorted(path.name for path in remote.iterdir())
    assert names == sorted(path.name for path in alone.iterdir()) and len(names) >= 4
    for name in names:
        assert (remote / name).read_bytes() == (alone / name).read_bytes(), name
    assert listener.stats()["received"] == 500


def test_render_in_workers_refuses_what_is_not_a_formatter_class():
    """The declaration is for Formatter subclasses; anything else is told what was expected."""
    with pytest.raises(
        TypeError, match=r"^render_in_workers\(\) expected a logging\.Formatter subclass, got 3$"
    ):
        logfunnel.render_in_workers(3)  # type: ignore[arg-type]


def test_a_worker_that_cannot_import_the_formatter_says_so_and_sends_no_lines(capfd):
    """A class spec whose class this process cannot import: a banner naming it, and no renderer."""
    from logfunnel._frames_out import renderer as _renderer

    assert _renderer(("class", "no_such_module_here:Formatter", "{}", {}, None)) is None
    assert "no_such_module_here:Formatter" in capfd.readouterr().err
