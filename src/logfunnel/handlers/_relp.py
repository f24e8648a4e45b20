"""A RELP client: rsyslog's Reliable Event Logging Protocol, in which the server acknowledges every message.

One ``RelpConnection`` is one RELP session over TCP (or TLS): ``open`` connects and exchanges offers,
``send`` frames messages and writes them while fewer than ``window`` are unacknowledged, ``pending``
lists what the server has not acknowledged yet (oldest first: what to send again after a failure),
``wait`` collects acknowledgements, ``close`` ends the session with RELP's close handshake.

The wire (librelp's doc/relp.html)::

    FRAME  = TXNR SP COMMAND SP DATALEN [SP DATA] LF     ; DATA only when DATALEN > 0
    TXNR   = 1*9DIGIT   ; 1, 2, ... 999999999, then 1 again; 0 is the server's hint (serverclose)
    COMMAND = 1*32ALPHA ; open, syslog, close from us; rsp, serverclose from the server
    rsp DATA = "200 OK" / "500 reason" [LF offers]

Everything the server sends is parsed with fixed bounds (header fields of at most 9 digits and 32
letters, a response of at most ``MAX_RESPONSE`` bytes), in time linear in its bytes: a hostile or broken
server gets a ``RelpError``, never a hang or unbounded memory. A connection is not shared between
threads, and a process forked from the one that opened it must open its own.
"""

from __future__ import annotations

import collections
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._checks import check_count, check_seconds

if TYPE_CHECKING:  # ssl costs an import of its own; whoever passes an SSLContext has imported it
    import ssl

__all__ = ["MAX_RESPONSE", "RelpConnection", "RelpError"]

MAX_TXNR = 999_999_999
MAX_DATALEN = 999_999_999
MAX_WINDOW = 100_000
# A response carries a status line and, for "open", the offers: a few hundred bytes from librelp.
MAX_RESPONSE = 64 * 1024
#: Refused messages a connection keeps for ``refused()`` (all are counted in ``refused_count``).
_REFUSED_KEPT = 100
RECV_SIZE = 64 * 1024
CHUNK = 256  # messages per write
READY_READS = 4  # reads of what has arrived, between writes
SOFTWARE = b"logfunnel,1,https://github.com/logfunnel/logfunnel"
OFFERS = b"relp_version=0\nrelp_software=" + SOFTWARE + b"\ncommands=syslog"

# A whole header and the byte after it; and what a header that is still arriving may look like.
_HEADER = re.compile(rb"(\d{1,9}) ([A-Za-z]{1,32}) (\d{1,9})([ \n])")
_PARTIAL = re.compile(rb"\d{0,9}(?: (?:[A-Za-z]{0,32}(?: \d{0,9})?)?)?")
_HEADER_MAX = 9 + 1 + 32 + 1 + 9 + 1


class RelpError(OSError):
    """A RELP protocol failure: a malformed frame, a refused message (500), an unexpected close.

    The connection that raised it is unusable afterwards; its ``pending()`` still lists every message
    that was not acknowledged, which is what to send again on a new connection."""


def _shown(data: bytes | bytearray, limit: int = 80) -> str:
    """Bytes from a peer, cut short and escaped, for an error message."""
    text = repr(bytes(data[:limit]))
    return text + (" …" if len(data) > limit else "")


def _nothing() -> int:
    return 0


class RelpConnection:
    """One RELP session to a server such as rsyslog's imrelp. Make one with ``RelpConnection.open()``."""

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        *,
        timeout: float,
        window: int,
    ) -> None:
        """Wrap an already connected (and, for TLS, wrapped) socket; ``open()`` is the way in."""
        self._sock: socket.socket | None = sock
        self._where = "%s:%d" % address
        self._timeout = timeout
        self._window = window
        self._pid = os.getpid()
        self._next_txnr = 1
        # txnr -> message, in the order sent; dicts keep insertion order, and take deletions by key
        # when acknowledgements arrive out of order.
        self._unacked: dict[int, bytes] = {}
        # messages of a failed send() that were never written, kept to be reported by pending()
        self._unsent: list[bytes] = []
        # messages the server refused (a 500 rsp): sending them again would be refused again. The
        # last few are kept (a server may refuse everything, for as long as the session lasts).
        self._refused: collections.deque[bytes] = collections.deque(maxlen=_REFUSED_KEPT)
        self.refused_count = 0
        self.last_refusal = ""  # what the server said when it last refused one
        self._lock = threading.Lock()  # pending() may be called from another thread
        self._buffer = bytearray()
        self._control: int | None = None  # the txnr of an open/close whose response is awaited
        self._control_command_name = b""
        self._control_reply: bytes | None = None
        self._broken: str | None = None
        self._closed = False

    # --- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        address: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 5.0,
        window: int = 128,
    ) -> RelpConnection:
        """Connect to *address* ``(host, port)``, over TLS when *ssl_context* is given, and open a session.

        *server_hostname* is the name the server's certificate must carry (default: the host).
        *timeout* bounds every blocking step (connect, TLS handshake, each write, each wait for an
        acknowledgement). *window* is how many messages may be unacknowledged at once (librelp: 128).
        Raises ``OSError`` when the server cannot be reached, ``ssl.SSLError`` when TLS fails (an
        unknown CA, a wrong name), ``RelpError`` when the server does not speak RELP or refuses."""
        if not (isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int)):
            raise TypeError(f"RelpConnection.open() expected an address (host, port), got {address!r}")
        check_count(window, "RelpConnection.open()", "window", 1, MAX_WINDOW)
        check_seconds(timeout, "RelpConnection.open()", "timeout")
        host, port = address
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            message = f"cannot connect to the RELP server at {host}:{port}: {exc.strerror or exc}"
            raise type(exc)(exc.errno, message) if exc.errno is not None else type(exc)(message) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            connection = cls(sock, (host, port), timeout=timeout, window=window)
        except BaseException:
            sock.close()
            raise
        try:
            connection._handshake()
        except BaseException as exc:
            connection._drop()
            if not isinstance(exc, OSError) or (isinstance(exc, RelpError) and ssl_context is None):
                raise
            # Over TLS 1.3 a server refuses the client's certificate (or its lack of one) only after
            # the handshake: the first read or write fails. Say so, since the error alone does not.
            hint = (
                "; over TLS this is how a server refuses the client's certificate or its lack of one: "
                "does the server require one (rsyslog's imrelp with tls.myCert does)? see its log"
                if ssl_context is not None
                else ""
            )
            raise RelpError(f"opening a RELP session with {host}:{port} failed: {exc}{hint}") from exc
        return connection

    def _handshake(self) -> None:
        reply = self._control_command(b"open", OFFERS)
        offers = {}
        for line in reply.split(b"\n")[1:]:
            name, _, value = line.partition(b"=")
            offers[name.strip()] = value.strip()
        if b"relp_version" not in offers:
            raise self._fail(
                f"the RELP server at {self._where} accepted the session without a relp_version offer "
                f"(got {_shown(reply)}); is it a RELP server?"
            )
        if b"syslog" not in offers.get(b"commands", b"").split(b","):
            raise self._fail(
                f"the RELP server at {self._where} does not offer the syslog command "
                f"(its offers: {_shown(reply)}); it cannot take log messages"
            )

    # --- the public calls --------------------------------------------------------------------------
    def send(self, messages: list[bytes]) -> None:
        """Send *messages* (each one syslog message, RFC 5424 bytes, without framing), in order.

        Returns once all are written; blocks only while ``window`` messages are unacknowledged,
        reading acknowledgements (``RelpError`` when none comes within the timeout). After any
        error, ``pending()`` lists every message not acknowledged, this call's unwritten ones last."""
        for message in messages:
            if not isinstance(message, bytes):
                raise TypeError(
                    f"RelpConnection.send() expected a list of bytes, got an item of type "
                    f"{type(message).__name__}: encode the message first"
                )
            if len(message) > MAX_DATALEN:
                raise ValueError(
                    f"RelpConnection.send() expected messages of at most {MAX_DATALEN:,} bytes, got one "
                    f"of {len(message):,}: RELP cannot frame it"
                )
        start = 0
        try:
            self._usable("send")
            sock = self._sock
            assert sock is not None
            while start < len(messages):
                room = self._window - len(self._unacked)
                if room <= 0:
                    self._read_until(lambda: len(self._unacked) < self._window, self._timeout, "room")
                    continue
                # a chunk at a time, reading what acknowledgements came in between: a server that
                # blocks on writing its answers while we block on writing messages would deadlock
                chunk = messages[start : start + min(room, CHUNK)]
                frames = []
                with self._lock:
                    for message in chunk:
                        txnr = self._take_txnr()
                        self._unacked[txnr] = message
                        if message:
                            frames.append(b"%d syslog %d %s\n" % (txnr, len(message), message))
                        else:
                            frames.append(b"%d syslog 0\n" % txnr)
                start += len(chunk)
                sock.sendall(b"".join(frames))
                self._read_ready()
        except BaseException as exc:
            with self._lock:
                self._unsent.extend(messages[start:])
            error = self._failed(exc, "send")
            if error is exc:
                raise
            raise error from exc

    def pending(self) -> list[bytes]:
        """The messages sent and not yet acknowledged, oldest first (after a failed ``send()``, also
        that call's messages that were never written): what to send again after a failure."""
        with self._lock:
            return [*self._unacked.values(), *self._unsent]

    def refused(self) -> list[bytes]:
        """The last messages the server refused (status other than 200; at most ``_REFUSED_KEPT``,
        oldest first; ``refused_count`` counts them all): not to be sent again as they are."""
        with self._lock:
            return list(self._refused)

    def wait(self, timeout: float) -> bool:
        """Read acknowledgements for at most *timeout* seconds; True once everything sent is acknowledged.

        Raises ``RelpError`` when the server refuses a message, closes, or sends what is not RELP.
        ``wait(0)`` takes the acknowledgements that have arrived, without waiting."""
        self._usable("wait")
        try:
            self._read_ready()
            return self._read_until(lambda: not self._unacked, timeout, None)
        except BaseException as exc:
            error = self._failed(exc, "wait")
            if error is exc:
                raise
            raise error from exc

    def close(self) -> None:
        """End the session: send RELP's ``close`` (the server answers it after every message before it),
        collect what is acknowledged within the timeout, and close the socket. Never raises; what was
        not acknowledged stays in ``pending()``. In a forked child it only drops the child's copy."""
        if self._closed:
            return
        self._closed = True
        if self._sock is None or self._broken is not None or os.getpid() != self._pid:
            self._drop()
            return
        try:
            self._control_command(b"close", b"")
        except Exception:
            pass
        finally:
            self._drop()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"broken: {self._broken}" if self._broken else "open"
        return f"<RelpConnection {self._where} {state}, {len(self._unacked)} unacknowledged>"

    def __enter__(self) -> RelpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state -------------------------------------------------------------------------------------
    def _take_txnr(self) -> int:
        txnr = self._next_txnr
        self._next_txnr = 1 if txnr >= MAX_TXNR else txnr + 1
        return txnr

    def _usable(self, call: str) -> None:
        if os.getpid() != self._pid:
            raise RelpError(
                f"RelpConnection.{call}(): this connection to {self._where} was opened in process "
                f"{self._pid} and cannot be used in process {os.getpid()} (a fork): open a new one here"
            )
        if self._closed:
            raise RelpError(f"RelpConnection.{call}(): the connection to {self._where} is closed")
        if self._broken is not None:
            raise RelpError(
                f"RelpConnection.{call}(): the connection to {self._where} failed earlier "
                f"({self._broken}); open a new one and send pending() again"
            )

    def _fail(self, message: str) -> RelpError:
        """Mark the connection broken and return the error to raise."""
        if self._broken is None:
            self._broken = message
        return RelpError(message)

    def _failed(self, exc: BaseException, call: str) -> BaseException:
        """What to raise for *exc* from *call*: the connection is broken; OS errors become RelpError."""
        if isinstance(exc, RelpError):
            self._broken = self._broken or str(exc)
            return exc
        if isinstance(exc, TimeoutError):
            message = (
                f"a write to (or read from) the RELP server at {self._where} did not finish within "
                f"{self._timeout} s: the server is stuck; open a new connection and send pending() again"
            )
        elif isinstance(exc, OSError):
            message = (
                f"the connection to the RELP server at {self._where} failed in {call}(): "
                f"{exc.strerror or exc}; open a new connection and send pending() again"
            )
        else:
            self._broken = self._broken or f"{type(exc).__name__} in {call}()"
            return exc  # KeyboardInterrupt and the like pass through as they are
        self._broken = self._broken or message
        return RelpError(exc.errno, message) if exc.errno else RelpError(message)

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # --- control commands: open and close ----------------------------------------------------------
    def _control_command(self, command: bytes, data: bytes) -> bytes:
        """Send *command* and return the data of its response (after the acknowledgements before it)."""
        sock = self._sock
        assert sock is not None
        txnr = self._take_txnr()
        self._control, self._control_reply, self._control_command_name = txnr, None, command
        if data:
            sock.sendall(b"%d %s %d %s\n" % (txnr, command, len(data), data))
        else:
            sock.sendall(b"%d %s 0\n" % (txnr, command))
        self._read_until(lambda: self._control_reply is not None, self._timeout, command.decode())
        reply = self._control_reply
        assert reply is not None
        self._control = self._control_reply = None
        return reply

    # --- reading -----------------------------------------------------------------------------------
    def _read_until(self, done: Callable[[], bool], timeout: float, awaiting: str | None) -> bool:
        """Read and handle frames until ``done()``; False when *timeout* passes first, or raise when
        *awaiting* names what must arrive in time (a RelpError saying what did not)."""
        sock = self._sock
        assert sock is not None
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                if awaiting is None:
                    return False
                raise self._fail(self._late(awaiting, timeout))
            sock.settimeout(left)
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                continue
            finally:
                sock.settimeout(self._timeout)
            if not data:
                raise self._fail(self._eof())
            self._feed(data)
        return True

    def _read_ready(self) -> None:
        """Handle the acknowledgements that have already arrived, without waiting for more.

        At most ``READY_READS`` reads: a server that streams without pause must not hold send() here
        (a full window of acknowledgements from librelp is a few KiB, one read)."""
        sock = self._sock
        assert sock is not None
        for _ in range(READY_READS):
            # TLS: a record already decrypted is not seen by poll()
            ready = getattr(sock, "pending", _nothing)() > 0
            if not ready:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                ready = bool(poller.poll(0))
            if not ready:
                return
            data = sock.recv(RECV_SIZE)  # readable: a TLS record still arriving waits at most the timeout
            if not data:
                raise self._fail(self._eof())
            self._feed(data)

    def _late(self, awaiting: str, timeout: float) -> str:
        if awaiting == "room":
            return (
                f"no acknowledgement from the RELP server at {self._where} within {timeout} s while "
                f"{len(self._unacked)} messages (the window) were unacknowledged; the server is stuck "
                f"or gone: open a new connection and send pending() again"
            )
        return f"the RELP server at {self._where} did not answer {awaiting!r} within {timeout} s"

    def _eof(self) -> str:
        partial = f", in the middle of a frame ({_shown(self._buffer)})" if self._buffer else ""
        return (
            f"the RELP server at {self._where} closed the connection{partial} with "
            f"{len(self._unacked)} messages unacknowledged; open a new connection and send pending() again"
        )

    def _feed(self, data: bytes) -> None:
        """Parse the frames in what arrived; keep an incomplete last one (bounded) for the next read.

        A serverclose is raised after the frames that came with it are handled, so that
        ``pending()`` keeps only what was really not acknowledged. A refused message (500) is no
        error of the session: it goes to ``refused()``."""
        buffer = self._buffer
        buffer += data
        pos = 0
        refused: RelpError | None = None
        try:
            while pos < len(buffer):
                header = _HEADER.match(buffer, pos)
                if header is None:
                    partial = _PARTIAL.match(buffer, pos)
                    if len(buffer) - pos >= _HEADER_MAX or partial is None or partial.end() != len(buffer):
                        raise self._fail(
                            f"the RELP server at {self._where} sent what is not a RELP frame "
                            f"(expected 'TXNR COMMAND DATALEN', got {_shown(buffer[pos : pos + 80])})"
                        )
                    break  # a header still arriving
                txnr, command, datalen = int(header[1]), bytes(header[2]), int(header[3])
                if datalen > MAX_RESPONSE:
                    raise self._fail(
                        f"the RELP server at {self._where} announced a {command.decode()!r} frame of "
                        f"{datalen:,} bytes; at most {MAX_RESPONSE:,} are accepted from a server"
                    )
                start = header.end()
                if header[4] == b"\n":
                    if datalen:
                        raise self._fail(
                            f"the RELP server at {self._where} sent a frame header announcing {datalen} "
                            f"bytes of data but ending in LF: {_shown(header[0])}"
                        )
                    end = start - 1
                else:
                    end = start + datalen
                    if len(buffer) <= end:
                        break  # the data or the trailer still arriving
                    if buffer[end] != 0x0A:
                        raise self._fail(
                            f"the RELP server at {self._where} sent a frame of {datalen} bytes not "
                            f"followed by LF (got {_shown(buffer[end : end + 20])}): the framing is broken"
                        )
                error = self._frame(txnr, command, bytes(buffer[start:end]))
                refused = refused or error
                pos = end + 1
        finally:
            del buffer[:pos]
        if refused is not None:
            raise refused

    def _frame(self, txnr: int, command: bytes, data: bytes) -> RelpError | None:
        """Handle one frame; return the error to raise once the frames that came with it are handled."""
        if command == b"rsp":
            return self._response(txnr, data)
        if txnr == 0 and command == b"serverclose":
            if self._control_command_name == b"close":
                return None  # librelp says goodbye right after answering our close
            return self._fail(
                f"the RELP server at {self._where} closed the session (serverclose) with "
                f"{len(self._unacked)} messages unacknowledged; open a new connection and send "
                f"pending() again"
            )
        if txnr == 0:
            return None  # a hint this client does not know: hints need no answer
        raise self._fail(
            f"the RELP server at {self._where} sent the command {command.decode()!r} (txnr {txnr}); "
            f"a server only sends 'rsp' and 'serverclose'"
        )

    def _response(self, txnr: int, data: bytes) -> RelpError | None:
        # RSP DATA = 3DIGIT [SP HUMAN-TEXT] [LF DATA]
        status, rest = data[:3], data[4:] if data[3:4] in (b" ", b"\n") else data[3:]
        human = _shown(rest.split(b"\n", 1)[0], 200)
        if txnr == self._control:
            # librelp answers close with an empty rsp
            if status != b"200" and not (self._control_command_name == b"close" and not data):
                raise self._fail(
                    f"the RELP server at {self._where} refused {self._control_command_name.decode()!r}: "
                    f"status {_shown(status, 10)}: {human}"
                )
            self._control_reply = data
            return None
        if txnr not in self._unacked:
            raise self._fail(
                f"the RELP server at {self._where} answered transaction {txnr}, which is not outstanding "
                f"({len(self._unacked)} are): the server is confused or not RELP"
            )
        with self._lock:
            message = self._unacked.pop(txnr)
            if status != b"200":
                # The server will not take this one (too large, not allowed): the session goes on,
                # and sending it again would be refused again. It is kept in refused().
                self._refused.append(message)
                self.refused_count += 1
                self.last_refusal = (
                    f"the RELP server at {self._where} refused message {txnr} (status "
                    f"{_shown(status, 10)}: {human})"
                )
        return None
