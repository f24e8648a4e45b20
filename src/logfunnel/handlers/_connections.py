"""The connections an ``RFC5424Handler`` sends over: UDP (RFC 5426), TCP (RFC 6587 octet counting),
TLS (RFC 5425) and RELP (through ``_relp``).

Each connection keeps what it wrote and cannot yet call delivered ("unconfirmed"): for TCP and TLS the
messages whose bytes may still sit in this host's send queue (``SIOCOUTQ``: written, not yet
acknowledged by the peer's TCP), for RELP those the server has not acknowledged. The sender asks it to
``confirm()`` (how many more are delivered) and, when it breaks, ``salvage()`` says what to send again
(never written, or RELP's unacknowledged ones) and how many may be lost (TCP/TLS: written, never
confirmed).
"""

from __future__ import annotations

import abc
import fcntl
import select
import socket
import struct
import sys
import termios
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

__all__ = ["Connection", "RelpLink", "StreamLink", "UdpLink"]

# Linux: bytes in a TCP socket's send queue that the peer has not acknowledged (SIOCOUTQ == TIOCOUTQ)
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None
_TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (linux/tcp_states.h)


class Connection(abc.ABC):
    """What the sender needs from a connection; the base class is one that confirms on write."""

    @property
    def unconfirmed(self) -> int:
        """Messages written and not yet known delivered."""
        return 0

    @abc.abstractmethod
    def send(self, batch: list[bytes]) -> None:
        """Write every message of *batch*, or raise OSError."""

    def confirm(self) -> int:
        """How many more messages are known delivered since the last call."""
        return 0

    def settle(self, timeout: float) -> None:
        """Wait at most *timeout* for confirmations (only where waiting reads them, as in RELP)."""
        return None  # a connection that confirms on write has nothing to wait for

    def broken(self) -> bool:
        """True if the peer has closed or reset the connection (checked without blocking)."""
        return False

    def take_refused(self) -> tuple[int, str]:
        """How many more messages the peer refused outright (RELP's 500) since the last call, and
        what it said: they are never sent again."""
        return 0, ""

    def salvage(self) -> tuple[list[bytes], int, int]:
        """After a failure: (messages to send again, oldest first; how many may be lost; how many of
        those to send again may arrive twice)."""
        return [], 0, 0

    def close(self) -> None:
        return None  # nothing held open by the base


class UdpLink(Connection):
    """One datagram per message, sent with ``sendto`` (no delivery guarantee: RFC 5426)."""

    def __init__(self, address: tuple[str, int], timeout: float) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        infos = socket.getaddrinfo(address[0], address[1], family, socket.SOCK_DGRAM)
        self.target = infos[0][4]
        self.sock = socket.socket(infos[0][0], socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self._unsent: list[bytes] = []
        self._sent = 0  # datagrams sent since the last confirm(): "delivered" is all UDP can know

    def send(self, batch: list[bytes]) -> None:
        for position, message in enumerate(batch):
            try:
                self.sock.sendto(message, self.target)
            except OSError:
                self._unsent = batch[position:]
                raise
            self._sent += 1

    def confirm(self) -> int:
        sent, self._sent = self._sent, 0
        return sent

    def salvage(self) -> tuple[list[bytes], int, int]:
        unsent, self._unsent = self._unsent, []
        return unsent, 0, 0

    def close(self) -> None:
        self.sock.close()


class StreamLink(Connection):
    """TCP or TLS with RFC 6587 octet counting: ``LEN SP MSG`` per message."""

    def __init__(
        self,
        address: tuple[str, int],
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or address[0])
        except BaseException:
            sock.close()
            raise
        self.sock: Any = sock
        self.tls = ssl_context is not None
        self.written = 0  # bytes written on this connection
        # (end offset, message) of each message written and not yet confirmed, oldest first
        self._window: deque[tuple[int, bytes]] = deque()
        self._unsent: list[bytes] = []
        try:
            self._sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            self._sndbuf = 4 * 1024 * 1024

    @property
    def unconfirmed(self) -> int:
        return len(self._window)

    def send(self, batch: list[bytes]) -> None:
        frames = [b"%d %s" % (len(message), message) for message in batch]
        data = memoryview(b"".join(frames))
        done = 0  # bytes of *data* the kernel accepted
        try:
            while done < len(data):
                done += self.sock.send(data[done : done + 1024 * 1024])
        finally:
            # every message with a byte written may arrive (perhaps cut short, if the connection
            # broke inside it) or be lost; the others were never written and can be sent again
            start, offset, position = self.written, 0, 0
            while position < len(frames) and offset < done:
                offset += len(frames[position])
                self._window.append((start + offset, batch[position]))
                position += 1
            self.written = start + done
            self._unsent = batch[position:]

    def _outq(self) -> int:
        """Bytes written that the peer has not acknowledged (an upper bound where it cannot be read)."""
        if _OUTQ is not None:
            try:
                buf = fcntl.ioctl(self.sock.fileno(), _OUTQ, b"\0\0\0\0")
                return int(struct.unpack("i", buf)[0])
            except OSError:
                pass
        return min(self.written, self._sndbuf)

    def _established(self) -> bool:
        """False once the peer has closed or reset: its send queue then no longer says what arrived."""
        if _OUTQ is None:
            return True
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        except OSError:
            return False
        return bool(info[0] == _TCP_ESTABLISHED)

    def confirm(self) -> int:
        if not self._window:
            return 0
        if not self._established():
            # after a reset the kernel empties the send queue: reading 0 there would call the
            # unacknowledged messages delivered
            raise ConnectionResetError("the server closed the connection")
        acknowledged = self.written - self._outq()
        confirmed = 0
        while self._window and self._window[0][0] <= acknowledged:
            self._window.popleft()
            confirmed += 1
        return confirmed

    def broken(self) -> bool:
        # a syslog server never writes to us: anything readable is its FIN or RST
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            if self.tls:
                return self._tls_closed()
            return bool(self.sock.recv(4096, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"")
        except (OSError, ValueError):
            return True

    def _tls_closed(self) -> bool:
        """Readable TLS: a close_notify or an alert ends the session; a TLS 1.3 session ticket does not."""
        import ssl

        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            return bool(self.sock.recv(4096) == b"")  # application data from a syslog server: ignored
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False  # only handshake records (tickets) were there
        finally:
            self.sock.settimeout(timeout)

    def salvage(self) -> tuple[list[bytes], int, int]:
        # What the send queue still held when the connection broke may or may not have arrived;
        # resending it over plain TCP could duplicate it, so it is counted as possibly lost.
        lost = len(self._window)
        self._window.clear()
        unsent, self._unsent = self._unsent, []
        return unsent, lost, 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RelpLink(Connection):
    """RELP through ``_relp.RelpConnection``: delivered means acknowledged by the server."""

    def __init__(
        self,
        address: tuple[str, int],
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        from ._relp import RelpConnection

        self.conn = RelpConnection.open(
            address, ssl_context=ssl_context, server_hostname=server_hostname, timeout=timeout
        )
        self.sent = 0  # messages handed to send()
        self.delivered = 0
        self._refused_seen = 0
        self._failed = False

    @property
    def unconfirmed(self) -> int:
        return self.sent - self.delivered - self.conn.refused_count

    def send(self, batch: list[bytes]) -> None:
        self.sent += len(batch)
        try:
            self.conn.send(batch)
        except BaseException:
            self._failed = True
            raise

    def settle(self, timeout: float) -> None:
        if self.sent != self.delivered and not self._failed:
            try:
                self.conn.wait(timeout)
            except OSError:
                self._failed = True

    def confirm(self) -> int:
        # also after a failure: acknowledgements read before it count (pending() stays exact)
        delivered = self.sent - len(self.conn.pending()) - self.conn.refused_count
        confirmed, self.delivered = delivered - self.delivered, delivered
        return confirmed

    def take_refused(self) -> tuple[int, str]:
        refused = self.conn.refused_count
        new, self._refused_seen = refused - self._refused_seen, refused
        return new, self.conn.last_refusal

    def broken(self) -> bool:
        return self._failed

    def salvage(self) -> tuple[list[bytes], int, int]:
        pending = self.conn.pending()
        self.delivered = self.sent = 0
        return pending, 0, len(pending)

    def close(self) -> None:
        self.conn.close()
