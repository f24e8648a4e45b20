"""What the listener writes is byte for byte what the same handler would have written in the worker."""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys

import pytest

import logfunnel
from _workers import Collect

NOTICE = 25
FULL_FORMAT = (
    "%(asctime)s|%(created)f|%(msecs)d|%(relativeCreated)d|%(levelname)s|%(levelno)d|%(name)s|"
    "%(pathname)s|%(filename)s|%(module)s|%(funcName)s|%(lineno)d|%(process)d|%(processName)s|"
    "%(thread)d|%(threadName)s|%(custom)s|%(message)s"
)
if sys.version_info >= (3, 12):
    FULL_FORMAT += "|%(taskName)s"


class JsonFormatter(logging.Formatter):
    """A Formatter subclass: the listener cannot render it in the worker, so whole records travel."""

    def format(self, record: logging.LogRecord) -> str:
        super().format(record)
        keys = ["name", "levelno", "levelname", "message", "exc_text", "stack_info", "funcName", "lineno",
                "process", "processName", "thread", "threadName", "created", "msecs", "custom"]  # fmt: skip
        return json.dumps({key: getattr(record, key, None) for key in keys}, sort_keys=True)


def _formatters() -> list[logging.Formatter]:
    return [
        logging.Formatter(FULL_FORMAT, defaults={"custom": "-"}),
        logging.Formatter("{asctime} {levelname:>8} {name} {message}", style="{", datefmt="%H:%M:%S"),
        JsonFormatter(),
    ]


def _emit_every_kind(log: logging.Logger) -> None:
    log.info("plain")
    log.warning("args %s %d %r %.2f", "text", 42, {"k": [1, 2]}, 3.14159)
    try:
        raise ValueError("boom\nwith a second line")
    except ValueError:
        log.exception("caught %s", "it")
    log.info("with stack", stack_info=True)
    log.info("with extra", extra={"custom": "custom-value"})
    log.log(NOTICE, "a custom level")
    log.info("non-BMP \U0001d11e \U0001f600 and a lone surrogate \udcff from bytes %s",
             b"\xff\xfe".decode("utf-8", "surrogateescape"))  # fmt: skip
    log.info("x" * (1024 * 1024))
    log.error("after the big one")
    log.info("no args but a percent sign: 100%")


def _worker(handle, local_paths) -> None:
    logging.addLevelName(NOTICE, "NOTICE")
    logfunnel.install_worker_logging(handle)
    root = logging.getLogger()
    for formatter, path in zip(_formatters(), local_paths):
        local = logging.FileHandler(path, encoding="utf-8", errors="surrogateescape")
        local.setFormatter(formatter)
        root.addHandler(local)
    _emit_every_kind(logging.getLogger("app.fidelity"))
    logging.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_listener_output_is_byte_identical_to_in_worker_output(method, tmp_path):
    """Args, exceptions, stacks, extras, custom levels, odd text and 1 MiB: identical bytes."""
    logging.addLevelName(NOTICE, "NOTICE")
    remote_paths = [tmp_path / f"remote-{i}.log" for i in range(3)]
    local_paths = [tmp_path / f"local-{i}.log" for i in range(3)]
    handlers = []
    for formatter, path in zip(_formatters(), remote_paths):
        handler = logging.FileHandler(path, encoding="utf-8", errors="surrogateescape")
        handler.setFormatter(formatter)
        handlers.append(handler)
    with logfunnel.start_listener(handlers=handlers) as listener:
        process = multiprocessing.get_context(method).Process(
            target=_worker, args=(listener.queue, local_paths)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    for handler in handlers:
        handler.close()
    for local, remote in zip(local_paths, remote_paths):
        expected = local.read_bytes()
        assert expected.count(b"\n") >= 10
        assert remote.read_bytes() == expected, f"{remote.name} differs from {local.name}"
    assert listener.stats()["received"] == 10


@pytest.mark.timeout(60)
def test_exception_stays_apart_from_the_message(tmp_path):
    """exc_text arrives rendered but not folded into msg, so structured formatters keep them apart."""
    collect = Collect()
    records = collect.records
    with logfunnel.start_listener(handlers=[collect]) as listener:
        process = multiprocessing.get_context("fork").Process(target=_raise_and_log, args=(listener.queue,))
        process.start()
        process.join(30)
    (record,) = records
    assert record.getMessage() == "failed with 7"
    assert record.msg == "failed with 7" and record.args is None and record.exc_info is None
    assert record.exc_text.startswith("Traceback (most recent call last):")
    assert record.exc_text.rstrip().endswith("KeyError: 'missing'")


def _raise_and_log(handle) -> None:
    logfunnel.install_worker_logging(handle)
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("app").exception("failed with %d", 7)
