"""How a lane learns that a standard library handler failed when the handler itself says nothing.

Most of the stdlib's handlers report a failed emit through ``handleError``, which a lane intercepts.
Two do not, and a lane would count their lost records as delivered:

* ``SocketHandler`` drops a record silently when it cannot connect (and during its own reconnect
  back-off, gh-84532) or when ``sendall`` fails: it only closes and forgets its socket. After such an
  emit its ``sock`` is None. The lane then counts a failure and clears ``retryTime``, so that its own
  retry really tries to connect instead of being dropped by the stdlib's back-off. Before each emit
  the lane also looks whether the server has closed or reset the connection (its peer never sends
  anything, so a readable socket means that): a record written into a connection the server has
  already left would be accepted by the kernel and lost, so the handler reconnects first. What TCP
  still cannot tell is a record the kernel accepted just before the server went away.
* ``HTTPHandler`` reads the response and throws it away: a 500 counts as sent. The lane wraps its
  ``getConnection`` (a seam since Python 3.9) to see each response's status; it also gives the
  connection a timeout when the handler set none (the stdlib's has none, so a server that never
  answers would hold the lane for ever).

A probe's ``before()`` runs before each ``handle()`` on the lane's thread, and its ``after()`` returns
None (delivered) or ``(failure, retry)``: *retry* False for a failure that trying again cannot fix (an
HTTP 4xx other than 408 and 429).
"""

from __future__ import annotations

import logging
import logging.handlers
import select
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["HTTP_TIMEOUT", "Probe", "probe_for"]

#: The timeout a lane gives an ``HTTPHandler`` connection that has none of its own.
HTTP_TIMEOUT = 30.0


class Probe:
    """What a lane asks a handler around each ``handle()``."""

    def __init__(
        self, after: Callable[[], tuple[BaseException, bool] | None], before: Callable[[], None] | None = None
    ) -> None:
        self.after = after
        self.before = before or _nothing


def _nothing() -> None:
    pass


def probe_for(handler: logging.Handler) -> Probe | None:
    """A probe for *handler*, or None when its failures all reach ``handleError``."""
    if isinstance(handler, logging.handlers.DatagramHandler):
        return None  # a failed sendto raises inside emit: handleError hears of it
    if isinstance(handler, logging.handlers.SocketHandler):
        return _socket_probe(handler)
    if isinstance(handler, logging.handlers.HTTPHandler):
        return _http_probe(handler)
    return None


def _socket_probe(handler: logging.handlers.SocketHandler) -> Probe:
    def before() -> None:
        sock = handler.sock
        if sock is None:
            return
        # A poll first: a socket with a timeout (SocketHandler's has one) waits in recv() even
        # with MSG_DONTWAIT, and would time out on every healthy connection.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return  # still open, nothing said: the usual case
        try:
            left = sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            left = True  # reset
        if left:
            handler.sock = None
            try:
                sock.close()
            except OSError:
                pass
            handler.retryTime = None

    def after() -> tuple[BaseException, bool] | None:
        if handler.sock is not None:
            return None
        handler.retryTime = None  # the lane backs off by itself; the stdlib's back-off would drop the retry
        return ConnectionError(f"SocketHandler could not send to {handler.address!r} (no connection)"), True

    return Probe(after, before)


class _Seen:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status: int | None = None


def _http_probe(handler: logging.handlers.HTTPHandler) -> Probe:
    seen = _Seen()
    original = handler.getConnection

    def get_connection(host: str, secure: bool) -> Any:
        connection = original(host, secure)
        if connection.timeout is None or connection.timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]  # noqa: SLF001
            connection.timeout = HTTP_TIMEOUT
        getresponse = connection.getresponse

        def getresponse_seen(*args: Any, **kwargs: Any) -> Any:
            response = getresponse(*args, **kwargs)
            seen.status = response.status
            return response

        connection.getresponse = getresponse_seen  # type: ignore[method-assign]
        return connection

    if "getConnection" not in handler.__dict__:  # a user's own instance override stays theirs
        handler.getConnection = get_connection  # type: ignore[method-assign]

    def after() -> tuple[BaseException, bool] | None:
        status, seen.status = seen.status, None
        if status is None or status < 400:
            return None  # sent (or the emit failed and handleError was told)
        retry = status >= 500 or status in (408, 429)
        return ConnectionError(f"HTTPHandler got HTTP status {status} from {handler.host}"), retry

    return Probe(after)
