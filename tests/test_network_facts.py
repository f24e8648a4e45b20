"""Facts about the standard library's network handlers that users hit, pinned against real servers.

They are why logfunnel puts these handlers on lanes (issue 9); if one of them stops holding on a new
Python, the lanes' special cases for it can go.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import threading

import pytest

from _netservers import HTTPServer, RecordServer, SMTPServer, free_port
from _network_workers import make_handler


class CountingErrors:
    """Count a handler's calls to handleError (the only failure signal a handler gives)."""

    def __init__(self, handler: logging.Handler) -> None:
        self.calls = 0

        def handle_error(record: logging.LogRecord) -> None:
            self.calls += 1

        handler.handleError = handle_error  # type: ignore[method-assign]


def _record(i: int) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "facts", "levelno": logging.INFO, "levelname": "INFO",
                                  "msg": "record %d", "args": (i,)})  # fmt: skip


@pytest.mark.timeout(60)
def test_socket_handler_drops_records_silently_during_its_reconnect_backoff():
    """gh-84532: after one failed connect, SocketHandler drops every record until its back-off ends,
    even once the server is up again, and never calls handleError."""
    port = free_port()
    handler = logging.handlers.SocketHandler("127.0.0.1", port)
    handler.retryStart = 30.0  # the back-off after the first failure (1 s by default)
    errors = CountingErrors(handler)
    handler.handle(_record(0))  # nothing listens: the connect fails, the back-off starts
    with RecordServer(port=port) as server:
        for i in range(1, 4):
            handler.handle(_record(i))  # the server is up, but the handler does not try yet
        fresh = logging.handlers.SocketHandler("127.0.0.1", port)
        fresh.handle(_record(4))
        got = server.wait_for(1)
        handler.close()
        fresh.close()
    assert [d["msg"] for d in got] == ["record 4"]
    assert errors.calls == 0 and handler.sock is None


@pytest.mark.timeout(60)
def test_smtp_handler_opens_a_session_per_record():
    """SMTPHandler connects, greets, sends and quits for every record: one SMTP session each."""
    with SMTPServer() as server:
        handler = make_handler("smtp", server.address)
        for i in range(3):
            handler.handle(_record(i))
        mails = server.wait_for(3)
        handler.close()
    assert len(mails) == 3
    assert len({mail.peer for mail in mails}) == 3, "each message came over a connection of its own"


@pytest.mark.timeout(60)
def test_http_handler_has_no_timeout():
    """HTTPHandler's connection has no timeout: an emit to a server that never answers waits until the
    server goes away, however long that is."""
    with HTTPServer(mode="hang") as server:
        handler = make_handler("http", server.address)
        connection = handler.getConnection(f"127.0.0.1:{server.port}", False)
        assert connection.timeout is socket._GLOBAL_DEFAULT_TIMEOUT and socket.getdefaulttimeout() is None
        emitting = threading.Thread(target=handler.handle, args=(_record(0),), daemon=True)
        emitting.start()
        assert server.wait_attempts(1) == 1
        emitting.join(2.0)
        still_waiting = emitting.is_alive()
        server.stop()  # the server answers 500 as it goes: the emit returns
        emitting.join(10)
    assert still_waiting, "HTTPHandler.emit returned from a server that never answered"
    assert not emitting.is_alive()


@pytest.mark.timeout(60)
def test_http_handler_takes_a_500_for_a_success():
    """HTTPHandler reads the response and ignores its status: a 500 never reaches handleError."""
    with HTTPServer(mode="error") as server:
        handler = make_handler("http", server.address, method="POST")
        errors = CountingErrors(handler)
        handler.handle(_record(0))
        handler.close()
        assert server.attempts == 1 and server.received == []
    assert errors.calls == 0
