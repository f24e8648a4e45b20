"""Worker functions for the routing tests (importable by spawn and forkserver children)."""

from __future__ import annotations

import logging
import os

import logfunnel


def log_mix(worker_id: int) -> int:
    """One noisy.lib INFO, one app DEBUG and one app INFO, as in the issue's measurement."""
    logging.getLogger("noisy.lib").info("noisy %d", worker_id)
    logging.getLogger("app").debug("debug %d", worker_id)
    logging.getLogger("app").info("info %d", worker_id)
    logfunnel.flush_worker_logging(10)
    return os.getpid()


def log_db(worker_id: int, count: int) -> int:
    """*count* records on app.db, the logger with a handler of its own in the parent."""
    log = logging.getLogger("app.db")
    for i in range(count):
        log.info("w=%d i=%d", worker_id, i)
    logfunnel.flush_worker_logging(10)
    return os.getpid()


def levels_seen(names: list[str]) -> dict[str, int]:
    """The effective level of each named logger, as this worker sees it."""
    return {name: logging.getLogger(name).getEffectiveLevel() for name in names}


def explicit_then_log(handle: object) -> int:
    """Set a level in the worker's own code before joining; log below and above it."""
    logging.getLogger("app").setLevel(logging.ERROR)
    logfunnel.install_worker_logging(handle)
    logging.getLogger("app").warning("below the worker's own level")
    logging.getLogger("app").error("at the worker's own level")
    logfunnel.flush_worker_logging(10)
    return os.getpid()


def log_every_level(handle: object, name: str) -> None:
    """Join *handle* and log one record at each standard level on *name*."""
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger(name)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        log.log(level, "%s at %s", name, logging.getLevelName(level))
    logfunnel.flush_worker_logging(10)
