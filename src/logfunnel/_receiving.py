"""The receiver's socket side: one selector over its TCP and UDP sockets and every TCP peer.

``ReceiverServing`` is the half of ``LogReceiver`` that runs in its thread: it accepts (at most
``max_connections`` at once, pausing after accept() failed for want of descriptors), reads each
stream's frames (``_frames_in``, shared with the listener) and each datagram, closes a peer whose
frame is over the limit or unfinished within the frame timeout, and at stop() reads what had
arrived. What a frame holds is the receiver's business (``_receive``), as is the accounting of
peers (``_peer``, ``_refuse``).
"""

from __future__ import annotations

import functools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _serving
from ._frames_in import (
    ACCEPTS_PER_TURN,
    OUT_OF_DESCRIPTORS,
    READ_SIZE,
    AcceptPause,
    FrameStream,
    FrameTooLarge,
    StreamEnded,
    out_of_descriptors_hint,
    read_waiting,
)
from ._handling import banner, flush_banners

__all__ = ["ReceiverServing"]

_DATAGRAM_SIZE = 65536  # larger than any UDP datagram (65,507 bytes of payload over IPv4)
_DATAGRAMS_PER_TURN = 64  # so that a UDP flood leaves the TCP peers their turn
_DRAIN_DATAGRAMS = 100_000  # read at stop(), at most: a flood must not keep stop() waiting
_LENGTH = struct.Struct(">L")


class _Peer:
    __slots__ = (
        "first_seen",
        "last_refusal",
        "last_seen",
        "name",
        "reasons",
        "received",
        "rejected",
        "state",
    )

    def __init__(self, name: str, state: str) -> None:
        self.name, self.state = name, state
        self.received = self.rejected = 0
        self.reasons: dict[str, int] = {}
        self.last_refusal: str | None = None
        self.first_seen = self.last_seen = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer": self.name,
            "state": self.state,
            "received": self.received,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "last_refusal": self.last_refusal,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


class _Stream(FrameStream):
    """A TCP peer's connection, read with the receiver's limits."""

    __slots__ = ("peer", "receiver")

    def __init__(self, sock: socket.socket, peer: _Peer, receiver: ReceiverServing) -> None:
        super().__init__(sock)
        self.peer, self.receiver = peer, receiver

    def frame_limit(self) -> int:
        return self.receiver.max_frame

    def frame_timeout(self) -> float:
        return self.receiver._frame_timeout()  # noqa: SLF001


def _peer_name(transport: str, address: Any) -> str:
    host, port = address[0], address[1]
    return f"{transport}:[{host}]:{port}" if ":" in str(host) else f"{transport}:{host}:{port}"


class ReceiverServing:
    """The socket loop of a ``LogReceiver`` (a mixin: the receiver provides what it declares)."""

    _tcp: socket.socket | None
    _udp: socket.socket | None
    _wake_r: socket.socket
    _lock: threading.Lock
    _streams: dict[int, _Stream]
    _state: str
    _stopping: bool
    _accept_pause: AcceptPause | None
    max_frame: int
    frame_timeout: float | None
    max_connections: int
    _peer: Callable[[str, str], _Peer]
    _refuse: Callable[[_Peer, str, str], None]
    _receive: Callable[[_Peer, bytes], None]
    _close_sockets: Callable[[], None]

    def _frame_timeout(self) -> float:
        return _serving.FRAME_TIMEOUT if self.frame_timeout is None else float(self.frame_timeout)

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            if self._tcp is not None:
                selector.register(self._tcp, selectors.EVENT_READ, "accept")
                self._accept_pause = AcceptPause(selector, self._tcp, "accept")
            if self._udp is not None:
                selector.register(self._udp, selectors.EVENT_READ, "udp")
            self._wake_r.setblocking(False)
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping:
                timeout = min(1.0, self._frame_timeout() / 2)
                if self._accept_pause is not None:
                    timeout = self._accept_pause.timeout(timeout)
                for key, _ in selector.select(timeout):
                    if key.data == "accept":
                        self._accept(selector)
                    elif key.data == "udp":
                        self._read_datagrams(_DATAGRAMS_PER_TURN)
                    elif key.data == "wake":
                        continue  # stop() was called: the loop condition says so
                    else:
                        self._read(key.data, selector)
                self._expire(selector)
                flush_banners()
            self._drain(selector)
        except Exception as exc:  # the receiver must never die silently
            banner(f"the log receiver failed: {exc!r}")
            raise
        finally:
            for stream in list(self._streams.values()):
                self._close(stream, selector, "closed")
            selector.close()
            flush_banners(force=True)
            if self._state == "abandoned":
                self._close_sockets()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._tcp is not None
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, address = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._pause_accepting(selector, exc)
                return
            peer = self._peer(_peer_name("tcp", address), "connected")
            peer.state = "connected"  # a peer seen before, on a connection from the same port
            if len(self._streams) >= self.max_connections and not self._evict_silent(selector):
                sock.close()
                peer.state = "refused"
                self._refuse(peer, "connections", f"more than {self.max_connections} connections at once")
                continue
            sock.setblocking(False)
            stream = _Stream(sock, peer, self)
            with self._lock:
                self._streams[sock.fileno()] = stream
            selector.register(sock, selectors.EVENT_READ, stream)

    def _evict_silent(self, selector: selectors.BaseSelector) -> bool:
        """Make room for a new connection by closing the oldest one that has sent nothing yet.

        Sockets that connect and stay silent would otherwise hold every place (``max_connections``)
        and lock out every real client; a client that has sent a record keeps its place, so a stdlib
        ``SocketHandler`` that logs rarely is never cut off by newcomers. False if none is silent.
        """
        for stream in self._streams.values():  # in the order they connected (dict order)
            peer = stream.peer
            if peer.received == 0 and peer.rejected == 0 and not stream.buffer:
                self._refuse(
                    peer, "connections",
                    f"{self.max_connections} connections at once: the oldest that had sent nothing "
                    "was closed to let a new one in",
                )  # fmt: skip
                self._close(stream, selector, "evicted")
                return True
        return False

    def _pause_accepting(self, selector: selectors.BaseSelector, exc: OSError) -> None:
        # As the listener does (_serving.SocketServing._pause_accepting): the connection accept()
        # could not take keeps the server socket readable, so retrying at once would be a busy loop.
        assert self._accept_pause is not None
        self._accept_pause.pause(_serving.ACCEPT_BACKOFF)
        hint = out_of_descriptors_hint(exc)
        banner(
            f"log receiver: accept() failed: {exc.strerror or exc}; pausing {_serving.ACCEPT_BACKOFF} s{hint}"
        )

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        if self._accept_pause is not None:
            self._accept_pause.resume_if_due(now)
        for stream in list(self._streams.values()):
            if stream.frame_deadline is not None and now > stream.frame_deadline:
                # A peer that stalls mid-frame holds up to a frame limit of our memory.
                self._refuse(
                    stream.peer, "timeout",
                    f"a frame begun {self._frame_timeout()} s ago is still incomplete "
                    f"({len(stream.buffer)} bytes buffered): connection closed",
                )  # fmt: skip
                self._close(stream, selector, "closed")

    def _close(self, stream: _Stream, selector: selectors.BaseSelector, state: str) -> None:
        try:
            selector.unregister(stream.sock)
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._streams.pop(stream.sock.fileno(), None)
            stream.peer.state = state
        stream.sock.close()

    def _read(self, stream: _Stream, selector: selectors.BaseSelector, limit: int = READ_SIZE) -> int:
        """Read once from *stream* (at most *limit* bytes), receive every whole frame; return bytes read."""
        try:
            return stream.read_frames(functools.partial(self._receive, stream.peer), limit)
        except StreamEnded as end:
            if end.buffered:
                self._refuse(
                    stream.peer, "incomplete", f"the connection ended within a frame ({end.buffered} bytes)"
                )
        except FrameTooLarge as exc:
            self._refuse(
                stream.peer, "oversized",
                f"a frame of {exc.size} bytes exceeds the limit of {exc.limit} bytes (max_frame): "
                "connection closed",
            )  # fmt: skip
        self._close(stream, selector, "closed")
        return 0

    def _read_datagrams(self, most: int) -> None:
        assert self._udp is not None
        for _ in range(most):
            try:
                data, address = self._udp.recvfrom(_DATAGRAM_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error of an earlier send, or the like: not the peer's data
                banner(f"log receiver: reading a datagram failed: {exc}")
                return
            peer = self._peer(_peer_name("udp", address), "sending")
            if len(data) < _LENGTH.size or _LENGTH.unpack_from(data)[0] != len(data) - _LENGTH.size:
                self._refuse(
                    peer,
                    "datagram",
                    f"a datagram of {len(data)} bytes that is not one length-prefixed pickle",
                )
            elif len(data) - _LENGTH.size > self.max_frame:
                self._refuse(
                    peer, "oversized", f"a datagram of {len(data)} bytes exceeds max_frame ({self.max_frame})"
                )
            else:
                self._receive(peer, data[_LENGTH.size :])

    def _drain(self, selector: selectors.BaseSelector) -> None:
        # What had arrived when stop() was called: the bytes each connection holds now, and the
        # datagrams waiting. Peers that keep sending keep writing; what they write from now on is not ours.
        if self._tcp is not None and (self._accept_pause is None or self._accept_pause.until is None):
            before = -1
            while len(self._streams) != before and len(self._streams) < self.max_connections:
                before = len(self._streams)  # connections still in the backlog hold records too
                self._accept(selector)
        for stream in list(self._streams.values()):
            read_waiting(stream, functools.partial(self._read, stream, selector))
            if stream.buffer and stream.sock.fileno() in self._streams:
                self._refuse(
                    stream.peer, "incomplete", f"a frame unfinished at stop() ({len(stream.buffer)} bytes)"
                )
        if self._udp is not None:
            self._read_datagrams(_DRAIN_DATAGRAMS)
