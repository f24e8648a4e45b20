"""The WSGI app and the config that tests/test_gunicorn.py runs under a real gunicorn.

Paths (every path carries the request id the test counts by):

- ``/log/ID?n=K``: K records ``ID line i`` on the ``app`` logger, then 200 (``&level=warning``:
  at WARNING, which gunicorn's defaults, with no handler on the root, still show).
- ``/hold/ID?n=K``: flush, log ``ID holding pid=PID``, stall this worker's sender (the test's
  stand-in for records in flight), log K more records, then sleep until killed from outside.
- ``/stuck/ID?n=K``: the same, but it outlives gunicorn's SIGABRT (it swallows the SystemExit),
  so that ``--timeout`` has to SIGKILL it.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import logfunnel
from logfunnel.worker import _installed_handlers

log = logging.getLogger("app")


def _stall_sender() -> None:
    # The sender thread writes under this lock; holding it keeps every record logged from now on
    # in this process (accepted and counted, never sent): what SIGKILL then loses, exactly.
    (handler,) = _installed_handlers()
    handler._sink._send_lock.acquire()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """See the module's docstring."""
    _, kind, ident = [*environ.get("PATH_INFO", "/").split("/"), "", ""][:3]
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    count = int(query.get("n", ["1"])[0])
    level = logging.getLevelName(query.get("level", ["info"])[0].upper())
    if kind in ("hold", "stuck"):
        logfunnel.flush_worker_logging(5)
        log.log(level, "%s holding pid=%d", ident, os.getpid())
        logfunnel.flush_worker_logging(5)
        _stall_sender()
        for i in range(count):
            log.log(level, "%s lost %d", ident, i)
        deadline = time.monotonic() + 120  # killed long before: a bound, not a wait
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except SystemExit:  # gunicorn's SIGABRT handler, after worker_abort
                if kind == "hold":
                    raise
    for i in range(count):
        log.log(level, "%s line %d", ident, i)
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
