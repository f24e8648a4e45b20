"""A WSGI app whose workers log through logfunnel: run ``gunicorn -c gunicorn.conf.py app:app``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("app")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Log one line per request (the worker's pid and the path), answer 200."""
    path = environ.get("PATH_INFO", "/")
    log.info("handling %s", path)
    if path == "/error":
        try:
            1 / 0  # noqa: B018  (an exception, to show a traceback arriving whole)
        except ZeroDivisionError:
            log.exception("failed to handle %s", path)
    body = f"hello from {path}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
