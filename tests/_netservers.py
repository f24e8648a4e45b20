"""Real servers on loopback for the network handler tests.

Each server is a context manager that listens on a free port of 127.0.0.1, keeps what it received
(``received``, with ``wait_for(count)``), can be made slow (``delay``: seconds before each answer),
made to refuse (``mode``), and stopped and started again on the same port (``stop()``, ``start()``):

- ``RecordServer``: TCP, decodes the frames of the standard library's ``SocketHandler`` (a 4-byte
  length and a pickled attribute dict, unpickled without any global); ``mode="reset"`` resets each
  connection as soon as it is accepted.
- ``DatagramServer``: UDP, the same frames from ``DatagramHandler``, one per datagram.
- ``SMTPServer``: ``aiosmtpd``; optional STARTTLS (``ca=``, a ``trustme.CA``) and AUTH
  (``credentials=``); ``mode="refuse"`` answers DATA with 554, ``mode="hang"`` never answers it.
- ``HTTPServer``: ``http.server`` in a thread, GET and POST, optional TLS (``ca=``) and Basic auth
  (``credentials=``); ``mode="error"`` answers 500, ``"reset"`` resets the connection, ``"hang"``
  reads the request and never answers.

A ``"hang"`` server lets go of its clients when it is stopped.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import http.server
import io
import pickle
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

#: The largest SocketHandler frame a RecordServer accepts (the stdlib sends one record per frame).
MAX_FRAME = 16 * 1024 * 1024
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


#: The only globals a SocketHandler's dict of plain values needs (protocol 1 pickles sets by name
#: and bytes as ``_codecs.encode(text, "latin1")``).
_HARMLESS = {("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
             ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
             ("_codecs", "encode"): lambda text, encoding="utf-8": codecs.encode(text, "latin1")}  # fmt: skip


class _NoGlobals(pickle.Unpickler):
    """An unpickler that refuses every global but set and frozenset."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _HARMLESS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"the test server refuses global {module}.{name}") from None


def unpickle_record(payload: bytes) -> dict[str, Any]:
    """The attribute dict of one SocketHandler/DatagramHandler frame's payload."""
    value = _NoGlobals(io.BytesIO(payload)).load()
    if type(value) is not dict:
        raise ValueError(f"expected a pickled dict, got {type(value).__name__}")
    return value


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """What every server here shares: a port kept across restarts, what arrived, slow and refusing."""

    kind = socket.SOCK_STREAM

    def __init__(self, *, delay: float = 0.0, mode: str = "ok", port: int = 0) -> None:
        self.delay = delay
        self.mode = mode
        self.port = port
        self.received: list[Any] = []
        self.attempts = 0  # requests (frames, messages) that reached the server, answered or not
        self.connections = 0
        self.errors: list[Exception] = []  # what could not be decoded
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self.running = False

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._stopping = threading.Event()
        self._start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._stopping.set()
            self._stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, self.kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        return sock

    def _pause(self) -> None:
        """Wait ``delay`` seconds (or, in mode "hang", until stopped); return early when stopped."""
        if self.mode == "hang":
            self._stopping.wait()
        elif self.delay:
            self._stopping.wait(self.delay)

    def _attempt(self) -> None:
        with self._cond:
            self.attempts += 1
            self._cond.notify_all()

    def _record(self, item: Any) -> None:
        with self._cond:
            self.received.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Any]:
        """What arrived once *count* items have (or *timeout* ran out: then whatever has)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def wait_attempts(self, count: int, timeout: float = 30.0) -> int:
        """The number of attempts once there are *count* (or when *timeout* ran out)."""
        with self._cond:
            self._cond.wait_for(lambda: self.attempts >= count, timeout)
            return self.attempts


# -- SocketHandler and DatagramHandler ---------------------------------------------------------------


class RecordServer(_Server):
    """TCP: decodes SocketHandler frames into attribute dicts, in ``received``."""

    def _start(self) -> None:
        self._listening = self._bind()
        self._listening.listen(64)
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name=f"record-server-{self.port}", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        listening = self._listening
        while not self._stopping.is_set():
            ready, _, _ = select.select([listening], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = listening.accept()
            except OSError:
                return
            with self._cond:
                self.connections += 1
            if self.mode == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                client.close()
                continue
            self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, client: socket.socket, size: int) -> bytes | None:
        chunks = []
        while size:
            try:
                chunk = client.recv(min(size, 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _serve(self, client: socket.socket) -> None:
        with client:
            while not self._stopping.is_set():
                self._pause()
                if self._stopping.is_set():
                    return
                header = self._read(client, 4)
                if header is None:
                    return
                (size,) = struct.unpack(">L", header)
                if size > MAX_FRAME:
                    return
                payload = self._read(client, size)
                if payload is None:
                    return
                self._attempt()
                try:
                    self._record(unpickle_record(payload))
                except Exception as exc:  # an undecodable frame ends this connection, kept in errors
                    self.errors.append(exc)
                    return

    def _stop(self) -> None:
        self._accepter.join(5)
        self._listening.close()
        for client in self._clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)


class DatagramServer(_Server):
    """UDP: decodes DatagramHandler datagrams into attribute dicts, in ``received``."""

    kind = socket.SOCK_DGRAM

    def _start(self) -> None:
        self._sock = self._bind()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._thread = threading.Thread(target=self._serve, name=f"udp-server-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock = self._sock
        while not self._stopping.is_set():
            self._pause()
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            data = sock.recv(65536)
            self._attempt()
            (size,) = struct.unpack(">L", data[:4])
            try:
                if size != len(data) - 4:
                    raise ValueError(f"a datagram of {len(data)} bytes says {size} + 4")
                self._record(unpickle_record(data[4:]))
            except Exception as exc:
                self.errors.append(exc)

    def _stop(self) -> None:
        self._thread.join(5)
        self._sock.close()


# -- SMTP ---------------------------------------------------------------------------------------------


@dataclass
class Mail:
    """One message an SMTPServer accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: Any  # (host, port) of the client: one per SMTP session
    tls: bool
    login: str | None
    message: Message = field(init=False)

    def __post_init__(self) -> None:
        self.message = message_from_bytes(self.content)


class _MailHandler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        server = self.server
        server._attempt()
        stopping = server._stopping
        if server.mode == "hang":
            while not stopping.is_set():
                await asyncio.sleep(0.05)
            return "421 4.3.0 the test server is going away"
        if server.delay:
            deadline = time.monotonic() + server.delay
            while time.monotonic() < deadline and not stopping.is_set():
                await asyncio.sleep(0.02)
        if server.mode == "refuse":
            return "554 5.7.1 refused by the test server"
        login = session.auth_data if session.authenticated else None
        server._record(
            Mail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
                session.peer,
                session.ssl is not None,
                login.login.decode() if login is not None else None,
            )
        )
        return "250 OK"


class SMTPServer(_Server):
    """aiosmtpd on loopback; ``ca`` turns on STARTTLS (required), ``credentials`` AUTH (required)."""

    def __init__(
        self,
        *,
        ca: Any = None,
        credentials: tuple[str, str] | None = None,
        delay: float = 0.0,
        mode: str = "ok",
        port: int = 0,
    ) -> None:
        super().__init__(delay=delay, mode=mode, port=port or free_port())
        self.ca = ca
        self.credentials = credentials
        self.failed_logins = 0

    def _authenticate(self, smtp: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (data.login.decode(), data.password.decode()) == self.credentials
        )
        if not ok:
            self.failed_logins += 1
        return AuthResult(success=ok, handled=False, auth_data=data)

    def _start(self) -> None:
        from aiosmtpd.controller import Controller

        kwargs: dict[str, Any] = {}
        if self.ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            kwargs.update(tls_context=context, require_starttls=True)
        if self.credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
            kwargs["auth_require_tls"] = self.ca is not None
        self._controller = Controller(_MailHandler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self._controller.start()

    def _stop(self) -> None:
        self._controller.stop()


# -- HTTP ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One request an HTTPServer answered with 200."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    tls: bool

    @property
    def fields(self) -> dict[str, str]:
        """The urlencoded fields (HTTPHandler's record dict): from the query (GET) or the body (POST)."""
        text = self.body.decode("utf-8") if self.method == "POST" else urllib.parse.urlsplit(self.path).query
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    server: _ThreadingServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # not on stderr

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner._attempt()
        owner._pause()
        if owner.mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            self.close_connection = True
            self.connection.close()
            return
        if owner.mode in ("error", "hang"):
            self.send_error(500, "refused by the test server")
            return
        if owner.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(owner.credentials).encode()).decode()
            if self.headers.get("Authorization") != expected:
                owner.unauthorized += 1
                self.send_error(401, "wrong or missing credentials")
                return
        owner._record(
            Request(self.command, self.path, dict(self.headers.items()), body, owner.ca is not None)
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _ThreadingServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    owner: HTTPServer
    context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        with self.owner._cond:
            self.owner.connections += 1
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class HTTPServer(_Server):
    """``http.server`` on loopback; ``ca`` serves HTTPS with a certificate it issued, ``credentials``
    requires Basic auth (401 otherwise)."""

    def __init__(
        self,
        *,
        ca: Any = None,
        credentials: tuple[str, str] | None = None,
        delay: float = 0.0,
        mode: str = "ok",
        port: int = 0,
    ) -> None:
        super().__init__(delay=delay, mode=mode, port=port)
        self.ca = ca
        self.credentials = credentials
        self.unauthorized = 0

    def _start(self) -> None:
        server = _ThreadingServer(("127.0.0.1", self.port), _RequestHandler)
        server.owner = self
        self.port = server.server_address[1]
        if self.ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            server.context = context
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"http-server-{self.port}", daemon=True
        )
        self._thread.start()

    def _stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def client_context(ca: Any) -> ssl.SSLContext:
    """A client context that trusts *ca* (a ``trustme.CA``) and checks host names."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


__all__ = [
    "MAX_FRAME",
    "DatagramServer",
    "HTTPServer",
    "Mail",
    "RecordServer",
    "Request",
    "SMTPServer",
    "client_context",
    "free_port",
    "unpickle_record",
]
