"""``start_receiver``: the records of programs that do not use logfunnel, from the standard library's
``SocketHandler`` (TCP) and ``DatagramHandler`` (UDP), received safely.

Both send a record as a 4-byte big-endian length and a pickle of the record's ``__dict__`` (the
message already merged with its arguments, ``args`` None, an exception as ``exc_text``): over TCP a
stream of such frames, over UDP one per datagram. Here nothing is unpickled: ``_pickles.loads``
decodes plain values only, without any global, at a cost linear in the bytes; ``check_record`` then
checks the attribute dict before ``logging.makeLogRecord`` builds the record, and the listener's
``Dispatcher`` hands it on. One thread with one selector serves every peer.

A peer's mistakes cost only that peer: a frame over the size limit (or a length that says so) or a
frame begun and not finished within the frame timeout closes its connection; a pickle or a record
that is refused is counted and skipped (the stream's framing is still intact). Each is counted per
peer, with the reason, in ``stats()``, and told on stderr (rate limited), never through logging.

This module is the receiver's API: its options, life cycle, ``stats()``, the accounting of peers
and what is done with a frame (``_receive``). Its socket loop is ``_receiving`` (``ReceiverServing``,
reading frames with ``_frames_in`` as the listener does); ``check_record`` is ``_record_checks``'s;
the parsing and binding of addresses ``_binding``'s.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from . import _pickles
from ._binding import _bind, parse_host_port
from ._checks import check_count, check_handlers, check_level, check_seconds
from ._dispatch import Dispatcher
from ._frames_in import AcceptPause
from ._handling import banner
from ._receiving import ReceiverServing, _Peer, _Stream
from ._record_checks import RecordRefused, check_record

__all__ = ["LogReceiver", "RecordRefused", "check_record", "start_receiver"]

MAX_FRAME = 1 << 20  # the default limit of one frame (one record's pickle)
MAX_PEERS = 1000  # peers listed in stats(); the oldest finished ones are folded into the totals
MAX_CONNECTIONS = 256  # TCP connections at once; one more is closed as soon as it is accepted


# -- delivering a record -------------------------------------------------------------------------------


def existing_logger(name: str) -> logging.Logger:
    """The logger named *name*, else its nearest existing ancestor (the root at last); creates none."""
    loggers = logging.Logger.manager.loggerDict
    while name:
        found = loggers.get(name)
        if isinstance(found, logging.Logger):
            return found
        name = name.rpartition(".")[0]
    return logging.getLogger()


# -- the receiver -----------------------------------------------------------------------------------------


class LogReceiver(ReceiverServing):
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
            find_logger=existing_logger,
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
