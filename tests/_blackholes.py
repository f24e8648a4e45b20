"""Servers that misbehave, on loopback, for the lane tests and the lanes benchmark.

Each is a context manager that yields an object with ``.host``/``.port`` and cleans up everything it
started (its threads, sockets and the connections it accepted) on exit.

* ``http_blackhole()``: accepts TCP connections and never answers (reads and discards).
* ``smtp_stall()``: greets, reads EHLO, then never answers again.
* ``refusing_port()``: a bound port that refuses connections, until ``.serve_http()`` turns it into
  an HTTP server that answers 200 and keeps every request (``.requests``), on the same port.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["http_blackhole", "refusing_port", "smtp_stall", "socket_receiver"]


class _Acceptor:
    """A listening socket whose connections each get *behaviour* on a thread of their own."""

    def __init__(self, behaviour: Callable[[socket.socket, threading.Event], None]) -> None:
        self.behaviour = behaviour
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.host, self.port = self.server.getsockname()[:2]
        self.closing = threading.Event()
        self.connections: list[socket.socket] = []
        self.accepted = 0
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, name="blackhole-accept", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            with self._lock:
                self.connections.append(conn)
                self.accepted += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn, self.closing)
        except OSError:
            pass

    def close(self) -> None:
        self.closing.set()
        self.server.close()
        self.thread.join(5)
        with self._lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        for thread in self.threads:
            thread.join(5)


def _swallow(conn: socket.socket, closing: threading.Event) -> None:
    while not closing.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue


def _stall_after_ehlo(conn: socket.socket, closing: threading.Event) -> None:
    conn.sendall(b"220 blackhole.invalid ESMTP stalls after EHLO\r\n")
    seen = b""
    while not closing.is_set() and b"\n" not in seen:
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return
        seen += chunk
    _swallow(conn, closing)  # the EHLO is never answered


@contextlib.contextmanager
def http_blackhole() -> Iterator[_Acceptor]:
    """A TCP server that accepts connections and never answers: ``HTTPHandler`` waits forever."""
    acceptor = _Acceptor(_swallow)
    try:
        yield acceptor
    finally:
        acceptor.close()


@contextlib.contextmanager
def smtp_stall() -> Iterator[_Acceptor]:
    """An SMTP server that sends its greeting, reads EHLO and never answers it."""
    acceptor = _Acceptor(_stall_after_ehlo)
    try:
        yield acceptor
    finally:
        acceptor.close()


class _Keeper(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Refusing:
    """A port bound without listening: the kernel refuses connections until ``serve_http()``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.requests: list[tuple[str, str, bytes]] = []
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def serve_http(self) -> None:
        """Start listening on the same port, as an HTTP server that answers 200 to everything."""
        httpd = http.server.ThreadingHTTPServer((self.host, self.port), _Keeper, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = self.sock
        httpd.server_activate()
        httpd.daemon_threads = True
        httpd.requests = self.requests  # type: ignore[attr-defined]
        self.httpd = httpd
        self.thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def refusing_port() -> Iterator[_Refusing]:
    """A loopback port that refuses connections (bound, not listening); see ``_Refusing``."""
    port = _Refusing()
    try:
        yield port
    finally:
        port.close()


class _Receiver(_Acceptor):
    """Keeps the records a stdlib ``SocketHandler`` sends (length-prefixed pickles, from this suite)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        super().__init__(self._receive)

    def _receive(self, conn: socket.socket, closing: threading.Event) -> None:
        import pickle
        import struct

        data = b""
        while not closing.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            data += chunk
            while len(data) >= 4 and len(data) >= 4 + struct.unpack(">L", data[:4])[0]:
                size = struct.unpack(">L", data[:4])[0]
                self.records.append(pickle.loads(data[4 : 4 + size]))  # the suite's own records
                data = data[4 + size :]


@contextlib.contextmanager
def socket_receiver() -> Iterator[_Receiver]:
    """A TCP server that keeps (in ``.records``) the record dicts a ``SocketHandler`` sends it."""
    receiver = _Receiver()
    try:
        yield receiver
    finally:
        receiver.close()
