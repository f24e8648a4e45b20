"""Handlers and worker functions for the network handler tests (importable under spawn and forkserver).

``make_handler(kind, address, **options)`` builds the same standard library handler in the listener's
process and in a worker, so that a test can send one worker's records both ways and compare what the
servers received.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import ssl
from typing import Any

import logfunnel

NOTICE = 25
SENDER = "logs@example.org"
RECIPIENTS = ["ops@example.org", "oncall@example.org"]


def make_handler(kind: str, address: tuple[str, int], **options: Any) -> logging.Handler:
    """A stdlib network handler of *kind* ("socket", "datagram", "smtp", "http") for *address*.

    Options: ``credentials`` (smtp, http), ``tls`` (smtp: STARTTLS with ``secure=()``; http:
    ``secure=True``), ``cafile`` (http: the context trusts that CA), ``method`` (http), ``timeout``
    (smtp).
    """
    host, port = address
    credentials = options.get("credentials")
    if credentials is not None:
        credentials = tuple(credentials)  # a dictConfig gives a list; HTTPHandler needs a tuple
    if kind == "socket":
        return logging.handlers.SocketHandler(host, port)
    if kind == "datagram":
        return logging.handlers.DatagramHandler(host, port)
    if kind == "smtp":
        handler = logging.handlers.SMTPHandler(
            (host, port),
            SENDER,
            RECIPIENTS,
            "logfunnel test",
            credentials=credentials,
            secure=() if options.get("tls") else None,
            timeout=options.get("timeout", 5.0),
        )
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(process)d %(message)s"))
        return handler
    if kind == "http":
        cafile = options.get("cafile")
        context = ssl.create_default_context(cafile=cafile) if cafile else None
        return logging.handlers.HTTPHandler(
            f"{host}:{port}",
            "/log?source=test",
            method=options.get("method", "GET"),
            secure=bool(options.get("tls")),
            credentials=credentials,
            context=context,
        )
    raise ValueError(f"make_handler() expected 'socket', 'datagram', 'smtp' or 'http', got {kind!r}")


def emit_every_kind(log: logging.Logger, worker_id: object) -> int:
    """Log one record of each kind that a handler treats differently; return how many."""
    logging.addLevelName(NOTICE, "NOTICE")
    log.info("w=%s plain", worker_id)
    log.warning("w=%s args %s %d %r %.2f", worker_id, "text", 42, {"k": [1, 2]}, 3.14159)
    try:
        raise ValueError("boom\nwith a second line")
    except ValueError:
        log.exception("w=%s caught %s", worker_id, "it")
    log.info("w=%s with stack", worker_id, stack_info=True)
    log.info("w=%s with extra", worker_id, extra={"custom": "custom-value", "number": 7})
    log.log(NOTICE, "w=%s a custom level", worker_id)
    log.error("w=%s non-BMP \U0001d11e \U0001f600 and 100%% é", worker_id)
    return 7


def log_both_ways(handle: object, kind: str, local_address: tuple[str, int], options: dict[str, Any],
                  worker_id: object) -> int:  # fmt: skip
    """Join the listener, and also send every record to a handler of *kind* of this process's own."""
    logfunnel.install_worker_logging(handle)
    local = make_handler(kind, local_address, **options)
    root = logging.getLogger()
    root.addHandler(local)  # after the FunnelHandler: it sees each record after the funnel's emit
    try:
        count = emit_every_kind(logging.getLogger("app.net"), worker_id)
    finally:
        root.removeHandler(local)
        local.close()
    logfunnel.flush_worker_logging(10)
    return count


def log_numbered(handle: object, worker_id: object, count: int) -> int:
    """Join the listener and log *count* numbered records as worker *worker_id*; return the pid."""
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("test.net")
    for i in range(count):
        log.info("w=%s i=%d", worker_id, i)
    logfunnel.flush_worker_logging(10)
    return os.getpid()


def run_workers(method: str, target: Any, args_list: list[tuple[Any, ...]], timeout: float = 60.0) -> None:
    """Run one process of start method *method* per argument tuple; all must exit with 0."""
    context = multiprocessing.get_context(method)
    processes = [context.Process(target=target, args=args) for args in args_list]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    codes = [process.exitcode for process in processes]
    assert codes == [0] * len(processes), f"worker exit codes {codes}"


# -- the buffering and local handlers ------------------------------------------------------------------

#: One line per record start, so that a file written by several processes splits into records again
#: (tracebacks and stacks follow on lines of their own).
ENTRY_FORMAT = "%(process)d %(created).6f rec %(levelname)s %(name)s %(funcName)s:%(lineno)d %(message)s"


def entry_formatter() -> logging.Formatter:
    return logging.Formatter(ENTRY_FORMAT)


def make_local_handler(kind: str, *args: Any) -> logging.Handler:
    """The handler a worker configures itself: ("memory", path, capacity, flush_level, flush_on_close),
    ("queue", a multiprocessing queue), ("buffering", capacity), ("watched", path)."""
    if kind == "memory":
        path, capacity, flush_level, flush_on_close = args
        target = logging.FileHandler(path, encoding="utf-8")
        target.setFormatter(entry_formatter())
        return logging.handlers.MemoryHandler(capacity, flush_level, target, flushOnClose=flush_on_close)
    if kind == "queue":
        return logging.handlers.QueueHandler(args[0])
    if kind == "buffering":
        return logging.handlers.BufferingHandler(args[0])
    if kind == "watched":
        handler = logging.handlers.WatchedFileHandler(args[0], encoding="utf-8")
        handler.setFormatter(entry_formatter())
        return handler
    raise ValueError(
        f"make_local_handler() expected 'memory', 'queue', 'buffering' or 'watched', got {kind!r}"
    )


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    """A record's attribute dict that pickles (a traceback does not: exc_info is shown by its type)."""
    state = dict(state)
    if state.get("exc_info"):
        state["exc_info"] = repr(state["exc_info"][1])
    return state


def log_with_local(handle: object, spec: tuple[Any, ...], worker_id: object, back: Any = None) -> int:
    """Join the listener and also log to a local handler built from *spec* (``make_local_handler``).

    A BufferingHandler's records are put on *back* (attribute dicts) before the process ends.
    """
    logfunnel.install_worker_logging(handle)
    local = make_local_handler(*spec)
    root = logging.getLogger()
    root.addHandler(local)
    try:
        count = emit_every_kind(logging.getLogger("app.local"), worker_id)
    finally:
        root.removeHandler(local)
        if back is not None and isinstance(local, logging.handlers.BufferingHandler):
            back.put([_plain(record.__dict__) for record in local.buffer])
        local.close()
    logfunnel.flush_worker_logging(10)
    return count


def log_around_a_move(handle: object, path: str, worker_id: object, logged: Any, moved: Any) -> None:
    """Log, set *logged*, wait for *moved* (the files moved away, as logrotate does), log again."""
    logfunnel.install_worker_logging(handle)
    local = make_local_handler("watched", path)
    root = logging.getLogger()
    root.addHandler(local)
    log = logging.getLogger("app.watched")
    for i in range(5):
        log.info("w=%s before the move i=%d", worker_id, i)
    logfunnel.flush_worker_logging(10)
    logged.set()
    if not moved.wait(30):
        raise RuntimeError("the parent never moved the files")
    emit_every_kind(log, worker_id)
    root.removeHandler(local)
    local.close()
    logfunnel.flush_worker_logging(10)


def log_levels(handle: object, levels: list[int], worker_id: object) -> None:
    """Join the listener and log one record at each of *levels*."""
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("app.levels")
    for i, level in enumerate(levels):
        log.log(level, "w=%s i=%d", worker_id, i)
    logfunnel.flush_worker_logging(10)


#: Extras whose types a JSON round trip would lose (tuples, sets, bytes, non-string keys).
CONTAINER_EXTRAS: dict[str, Any] = {
    "point": (1, 2.5),
    "path": [("a", 1), {"k": (2, (3,))}],
    "by_id": {1: "x", 2: [1], None: True, 2.5: ()},
    "tags": {"red", "blue"},
    "frozen": frozenset({1, 2}),
    "raw": b"\x00\xff bytes",
    "nul_key": {"\x00t": [1]},
    "empty": ((), [], {}, set()),
}


def log_container_extras(handle: object, kind: str, local_address: tuple[str, int]) -> None:
    """Join the listener and log one record per CONTAINER_EXTRAS item, also to a local handler."""
    logfunnel.install_worker_logging(handle)
    local = make_handler(kind, local_address)
    root = logging.getLogger()
    root.addHandler(local)
    log = logging.getLogger("app.extras")
    for key, value in CONTAINER_EXTRAS.items():
        log.info("extra %s", key, extra={key: value})
    root.removeHandler(local)
    local.close()
    logfunnel.flush_worker_logging(10)
