"""``start_receiver``: the records of programs that do not use logfunnel, from the standard library's
``SocketHandler`` (TCP) and ``DatagramHandler`` (UDP), received safely.

Both send a record as a 4-byte big-endian length and a pickle of the record's ``__dict__`` (the
message already merged with its arguments, ``args`` None, an exception as ``exc_text``): over TCP a
stream of such frames, over UDP one per datagram. Here nothing is unpickled: ``_pickles.loads``
decodes plain values only, without any global, at a cost linear in the bytes; ``check_record`` then
checks the attribute dict before ``logging.makeLogRecord`` builds the record, and ``Delivery`` hands
it on. One thread with one selector serves every peer.

A peer's mistakes cost only that peer: a frame over the size limit (or a length that says so) or a
frame begun and not finished within the frame timeout closes its connection; a pickle or a record
that is refused is counted and skipped (the stream's framing is still intact). Each is counted per
peer, with the reason, in ``stats()``, and told on stderr (rate limited), never through logging.

What is shared with the listener's socket side (``_serving``): the reading of frames, the accept
caps and the back-off when out of descriptors (``_frames_in``), the frame timeout (``FRAME_TIMEOUT``,
the default of *frame_timeout*) and ``ACCEPT_BACKOFF``; from ``_record_checks``, ``check_record``;
from ``_binding``, the parsing and binding of addresses; from ``_checks``, the checks of *handlers*
and *level*; and the banners of ``_handling``.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from . import _pickles, _serving
from ._binding import _bind, parse_host_port
from ._checks import check_count, check_handlers, check_level, check_seconds
from ._dispatch import Dispatcher
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
from ._record_checks import RecordRefused, check_record

__all__ = ["LogReceiver", "RecordRefused", "check_record", "start_receiver"]

MAX_FRAME = 1 << 20  # the default limit of one frame (one record's pickle)
MAX_PEERS = 1000  # peers listed in stats(); the oldest finished ones are folded into the totals
MAX_CONNECTIONS = 256  # TCP connections at once; one more is closed as soon as it is accepted
_DATAGRAM_SIZE = 65536  # larger than any UDP datagram (65,507 bytes of payload over IPv4)
_DATAGRAMS_PER_TURN = 64  # so that a UDP flood leaves the TCP peers their turn
_DRAIN_DATAGRAMS = 100_000  # read at stop(), at most: a flood must not keep stop() waiting
_LENGTH = struct.Struct(">L")


# -- delivering a record -------------------------------------------------------------------------------


def _existing_logger(name: str) -> logging.Logger:
    loggers = logging.Logger.manager.loggerDict
    while name:
        found = loggers.get(name)
        if isinstance(found, logging.Logger):
            return found
        name = name.rpartition(".")[0]
    return logging.getLogger()


# -- peers and connections ------------------------------------------------------------------------------


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

    def __init__(self, sock: socket.socket, peer: _Peer, receiver: LogReceiver) -> None:
        super().__init__(sock)
        self.peer, self.receiver = peer, receiver

    def frame_limit(self) -> int:
        return self.receiver.max_frame

    def frame_timeout(self) -> float:
        return self.receiver._frame_timeout()  # noqa: SLF001


def _peer_name(transport: str, address: Any) -> str:
    host, port = address[0], address[1]
    return f"{transport}:[{host}]:{port}" if ":" in str(host) else f"{transport}:{host}:{port}"


# -- the receiver -----------------------------------------------------------------------------------------


class LogReceiver:
    """Receives the records of stdlib ``SocketHandler`` (TCP) and ``DatagramHandler`` (UDP) clients on
    one thread; made and started by ``start_receiver`` (see there for the options)."""

    def __init__(
        self,
        handlers: Iterable[logging.Handler] | None = None,
        *,
        tcp: str | None = None,
        udp: str | None = None,
        allow_remote: bool = False,
        level: int | str = logging.NOTSET,
        respect_handler_level: bool = True,
        max_frame: int = MAX_FRAME,
        frame_timeout: float | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_peers: int = MAX_PEERS,
    ) -> None:
        caller = "start_receiver()"
        checked = check_handlers(handlers, caller)
        level = check_level(level, caller)
        if not isinstance(allow_remote, bool):
            raise TypeError(
                f"{caller} expected allow_remote as True or False, got {type(allow_remote).__name__!r}"
            )
        if tcp is None and udp is None:
            raise ValueError(
                f"{caller} got neither tcp nor udp: pass tcp='127.0.0.1:0', udp='127.0.0.1:0' or both"
            )
        for option, value in (
            ("max_frame", max_frame),
            ("max_connections", max_connections),
            ("max_peers", max_peers),
        ):
            check_count(value, caller, option)
        if frame_timeout is not None:
            check_seconds(frame_timeout, caller, "frame_timeout")
        tcp_at = None if tcp is None else parse_host_port(tcp, "tcp", caller, allow_remote)
        udp_at = None if udp is None else parse_host_port(udp, "udp", caller, allow_remote)
        # Where a received record goes: the listener's own dispatcher, so network handlers get lanes
        # of their own here too; routed by name (handlers=None), a name no logger has yet goes to its
        # nearest existing ancestor, so a peer cannot make this process create a logger per name.
        self._dispatcher = Dispatcher(
            checked or None,
            level=level,
            respect_handler_level=respect_handler_level,
            find_logger=_existing_logger,
        )
        self.deliver: Callable[[logging.LogRecord], None] = self._dispatcher.handle_record
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self.max_connections = max_connections
        self.max_peers = max_peers
        self._tcp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            if tcp_at is not None:
                self._tcp = _bind(tcp_at[0], tcp_at[1], socket.SOCK_STREAM, "tcp", allow_remote)
            if udp_at is not None:
                self._udp = _bind(udp_at[0], udp_at[1], socket.SOCK_DGRAM, "udp", allow_remote)
        except BaseException:
            self._close_sockets()
            raise
        self.tcp_address: tuple[str, int] | None = None if self._tcp is None else self._tcp.getsockname()[:2]
        self.udp_address: tuple[str, int] | None = None if self._udp is None else self._udp.getsockname()[:2]
        self._lock = threading.Lock()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._streams: dict[int, _Stream] = {}
        self._totals = {"received": 0, "rejected": 0, "peers_folded": 0}
        self._reasons: dict[str, int] = {}
        self._state = "new"
        self._stopping = False
        self._accept_pause: AcceptPause | None = None  # the TCP socket's, while serving
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> LogReceiver:
        if self._state == "new":
            self._dispatcher.start()
            self._thread = threading.Thread(target=self._serve, name="logfunnel-receiver", daemon=True)
            self._state = "running"
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Handle every record already received (the bytes each connection and the UDP socket hold
        now), then close every socket. Safe to repeat. The handlers are the caller's: left open."""
        if self._state in ("stopping", "stopped"):
            return
        started, self._state = self._state == "running", "stopping"
        if started and self._thread is not None:
            self._stopping = True
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                banner(f"the log receiver did not finish handling what it had received within {timeout} s")
                self._state = "abandoned"
                self._dispatcher.stop()
                return  # its thread still uses the sockets; it closes them when it is done
        self._close_sockets()
        if started:
            self._dispatcher.stop()  # drains every lane within its own deadline, reports the rest
        self._state = "stopped"

    def __enter__(self) -> LogReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _close_sockets(self) -> None:
        for sock in (self._tcp, self._udp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def stats(self) -> dict[str, Any]:
        """Totals (received, rejected, rejections by reason), the open TCP connections, and each of the
        last ``max_peers`` peers (``"tcp:HOST:PORT"`` per connection, ``"udp:HOST:PORT"`` per source)
        with what it sent, what was refused and why; older peers are folded into ``peers_folded``."""
        with self._lock:
            return {
                "state": self._state,
                "tcp_address": self.tcp_address,
                "udp_address": self.udp_address,
                "connections": len(self._streams),
                "received": self._totals["received"],
                "rejected": self._totals["rejected"],
                "reasons": dict(self._reasons),
                "peers": [peer.as_dict() for peer in self._peers.values()],
                "peers_folded": self._totals["peers_folded"],
                "lanes": self._dispatcher.lane_stats(),
            }

    # -- accounting -----------------------------------------------------------------------------------

    def _peer(self, name: str, state: str) -> _Peer:
        with self._lock:
            peer = self._peers.get(name)
            if peer is not None:
                self._peers.move_to_end(name)
                return peer
            peer = self._peers[name] = _Peer(name, state)
            rotations = len(self._streams)  # a connected peer is never folded: moved to the end instead
            while len(self._peers) > self.max_peers and rotations >= 0:
                oldest_name, oldest = next(iter(self._peers.items()))
                if oldest.state == "connected" and oldest is not peer:
                    self._peers.move_to_end(oldest_name)
                    rotations -= 1
                    continue
                del self._peers[oldest_name]
                self._totals["peers_folded"] += 1
            return peer

    def _refuse(self, peer: _Peer, reason: str, detail: str) -> None:
        with self._lock:
            peer.rejected += 1
            peer.reasons[reason] = peer.reasons.get(reason, 0) + 1
            peer.last_refusal = detail[:300]
            peer.last_seen = time.time()
            self._totals["rejected"] += 1
            self._reasons[reason] = self._reasons.get(reason, 0) + 1
        banner(f"log receiver: refused a frame from {peer.name} ({reason}): {detail[:300]}")

    def _receive(self, peer: _Peer, payload: bytes) -> None:
        """Decode, check and deliver one record's pickle; refusals are counted against *peer*."""
        try:
            state = check_record(_pickles.loads(payload))
            record = logging.makeLogRecord(state)
        except _pickles.PickleRefused as exc:
            self._refuse(peer, "pickle", str(exc))
            return
        except RecordRefused as exc:
            self._refuse(peer, "record", str(exc))
            return
        with self._lock:
            peer.received += 1
            peer.last_seen = time.time()
            self._totals["received"] += 1
        try:
            self.deliver(record)
        except Exception as exc:  # a failing handler or filter must not take the receiver down
            banner(f"log receiver: handling a record from {peer.name} failed: {exc!r}")

    # -- the loop -----------------------------------------------------------------------------------------

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
            if len(self._streams) >= self.max_connections:
                sock.close()
                peer.state = "refused"
                self._refuse(peer, "connections", f"more than {self.max_connections} connections at once")
                continue
            sock.setblocking(False)
            stream = _Stream(sock, peer, self)
            with self._lock:
                self._streams[sock.fileno()] = stream
            selector.register(sock, selectors.EVENT_READ, stream)

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


def start_receiver(
    handlers: Iterable[logging.Handler] | None = None,
    *,
    tcp: str | None = None,
    udp: str | None = None,
    allow_remote: bool = False,
    level: int | str = logging.NOTSET,
    respect_handler_level: bool = True,
    max_frame: int = MAX_FRAME,
    frame_timeout: float | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_peers: int = MAX_PEERS,
) -> LogReceiver:
    """Receive the records of stdlib ``SocketHandler`` clients at *tcp* and ``DatagramHandler``
    clients at *udp* (each ``"host:port"``, port 0 for any free one; see ``tcp_address`` and
    ``udp_address``), on a thread of this process, and hand them to *handlers*.

    With *handlers* None, records go through this process's logging configuration (their logger's
    level, then its handlers), as in the cookbook's socket server. Only loopback addresses, unless
    *allow_remote* is True: anyone who can reach the port can send records, unauthenticated.
    A frame (one pickle) is at most *max_frame* bytes; a TCP peer that begins a frame has
    *frame_timeout* seconds (by default ``logfunnel._serving.FRAME_TIMEOUT``) to finish it; at most
    *max_connections* TCP connections at once; ``stats()`` lists the last *max_peers* peers.
    Use it as a context manager, or call ``stop()``.
    """
    return LogReceiver(
        handlers,
        tcp=tcp,
        udp=udp,
        allow_remote=allow_remote,
        level=level,
        respect_handler_level=respect_handler_level,
        max_frame=max_frame,
        frame_timeout=frame_timeout,
        max_connections=max_connections,
        max_peers=max_peers,
    ).start()
