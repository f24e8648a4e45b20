"""Formatters and worker functions for test_fast_workers (importable by spawned children)."""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import logfunnel
from logfunnel import render_in_workers

NOTICE = 25


@render_in_workers
class Bracketed(logging.Formatter):
    """A formatter subclass declared safe: its output depends on the record and its attributes."""

    def format(self, record: logging.LogRecord) -> str:
        return "[" + super().format(record) + "]"


class Undeclared(Bracketed):
    """A subclass of a declared class that does not declare itself: rendered on the listener."""


def formatters() -> list[logging.Formatter]:
    """One of each kind that workers render: JSON (both import paths), styles, defaults."""
    from pythonjsonlogger import json as pjson

    made: list[logging.Formatter] = [
        pjson.JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            timestamp=True,
            rename_fields={"levelname": "level"},
            static_fields={"service": "api"},
            defaults={"custom": "-"},
        ),
        pjson.JsonFormatter(
            "{asctime}{message}{custom}", style="{", datefmt="%H:%M:%S", exc_info_as_array=True
        ),
        pjson.JsonFormatter("$message $levelname", style="$", json_ensure_ascii=False, json_indent=2),
        Bracketed("{asctime} {levelname:>8} {custom} {message}", style="{", defaults={"custom": "-"}),
        Bracketed("$levelname $message", style="$", validate=True),
    ]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from pythonjsonlogger import jsonlogger
    except ImportError:
        pass
    else:
        made.append(jsonlogger.JsonFormatter("%(message)s %(funcName)s", stack_info_as_array=True))
    return made


def emit_every_kind(log: logging.Logger) -> None:
    log.info("plain")
    log.warning("args %s %d %r %.2f", "text", 42, {"k": [1, 2]}, 3.14159)
    try:
        raise ValueError("boom\nwith a second line")
    except ValueError:
        log.exception("caught %s", "it")
    log.info("with stack", stack_info=True)
    log.info(
        "with extras",
        extra={"custom": "custom-value", "nested": {"a": [1, (2, 3)]}, "when": datetime.date(2026, 1, 2)},
    )
    log.log(NOTICE, "a custom level")
    log.info("non-BMP \U0001d11e \U0001f600 and a lone surrogate \udcff from bytes %s",
             b"\xff\xfe".decode("utf-8", "surrogateescape"))  # fmt: skip
    log.info("x" * 100_000)
    log.error("after the big one")


def log_locally_and_remotely(handle: Any, paths: list[str]) -> None:
    """Join the listener, and write the same records with the same formatters to local files."""
    logging.addLevelName(NOTICE, "NOTICE")
    logfunnel.install_worker_logging(handle)
    root = logging.getLogger()
    for formatter, path in zip(formatters(), paths):
        local = logging.FileHandler(path, encoding="utf-8", errors="surrogateescape")
        local.setFormatter(formatter)
        root.addHandler(local)
    emit_every_kind(logging.getLogger("app.fast"))
    logging.shutdown()
    sys.stdout.flush()


def emit_routed(tag: str, count: int) -> None:
    """Records for the routing tests, on loggers of every kind in ``routed_config``."""
    for i in range(count):
        logging.getLogger("app").info("%s app %d", tag, i)
        logging.getLogger("app").debug("%s app debug %d", tag, i)
        logging.getLogger("app.db").info("%s db %d %s", tag, i, "q" * (i % 50))
        logging.getLogger("app.db.pool").debug("%s pool debug %d", tag, i)
        logging.getLogger("app.db.pool").warning("%s pool %d", tag, i)
        logging.getLogger("app.audit").info("%s audit %d", tag, i)
        logging.getLogger(f"other.{i % 3}").warning("%s other é %d", tag, i)


def log_routed(handle: Any, count: int) -> None:
    """Join the listener and emit the routing tests' records."""
    logfunnel.install_worker_logging(handle)
    emit_routed("r", count)
    logfunnel.flush_worker_logging(10)


def log_in_phases(handle: Any, count: int, done: Any, go: Any) -> None:
    """Emit phases A to D, each flushed; after each but the last, say so and wait for the parent."""
    logfunnel.install_worker_logging(handle)
    for phase in range(4):
        emit_routed("ABCD"[phase], count)
        logfunnel.flush_worker_logging(10)
        if phase < 3:
            done[phase].set()
            go[phase].wait(20)
