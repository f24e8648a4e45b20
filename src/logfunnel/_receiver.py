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

What is reused from the listener's socket side (``_serving``): its accept caps (``_ACCEPTS_PER_TURN``)
and back-off when out of descriptors (``ACCEPT_BACKOFF``, ``_OUT_OF_DESCRIPTORS``), the frame timeout
(``FRAME_TIMEOUT``, the default of *frame_timeout*) and the read size; from ``_transport``, the
loopback check (``non_loopback``); from ``_checks``, the checks of *handlers* and *level*; and the
banners of ``_handling``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import re
import selectors
import socket
import struct
import termios
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from . import _pickles, _serving
from ._checks import check_count, check_handlers, check_level, check_seconds
from ._dispatch import Dispatcher
from ._handling import banner, flush_banners
from ._transport import non_loopback

__all__ = ["LogReceiver", "RecordRefused", "check_record", "start_receiver"]

MAX_FRAME = 1 << 20  # the default limit of one frame (one record's pickle)
MAX_PEERS = 1000  # peers listed in stats(); the oldest finished ones are folded into the totals
MAX_CONNECTIONS = 256  # TCP connections at once; one more is closed as soon as it is accepted
_DATAGRAM_SIZE = 65536  # larger than any UDP datagram (65,507 bytes of payload over IPv4)
_DATAGRAMS_PER_TURN = 64  # so that a UDP flood leaves the TCP peers their turn
_DRAIN_DATAGRAMS = 100_000  # read at stop(), at most: a flood must not keep stop() waiting
_LENGTH = struct.Struct(">L")
# The listener's own limits, shared (module constants of _serving, read where they are used).
_READ_SIZE = _serving._READ_SIZE  # noqa: SLF001
_ACCEPTS_PER_TURN = _serving._ACCEPTS_PER_TURN  # noqa: SLF001
_OUT_OF_DESCRIPTORS = _serving._OUT_OF_DESCRIPTORS  # noqa: SLF001


class RecordRefused(ValueError):
    """A decoded attribute dict is not one a record can be made of (see ``check_record``)."""


# -- checking a record --------------------------------------------------------------------------------

_NONE = type(None)
#: The attributes that the standard library's handlers and formatters use, with the types they must
#: have when present. ``name`` and ``levelno`` must be present.
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "msg": (str,),
    "levelname": (str,),
    "levelno": (int,),
    "pathname": (str,),
    "filename": (str,),
    "module": (str,),
    "funcName": (str, _NONE),
    "lineno": (int,),
    "created": (float,),
    "msecs": (float,),
    "relativeCreated": (float,),
    "thread": (int, _NONE),
    "threadName": (str, _NONE),
    "process": (int, _NONE),
    "processName": (str, _NONE),
    "taskName": (str, _NONE),
    "exc_text": (str, _NONE),
    "stack_info": (str, _NONE),
    "message": (str,),
    "asctime": (str,),
}
_FLOATS = ("created", "msecs", "relativeCreated")
_MERGE_ARG_TYPES = (str, int, float, bool, _NONE)
MAX_MERGE_WIDTH = 100  # the largest width or precision of a conversion merged here
_CONVERSION = re.compile(
    rb"%(?P<key>\([^)]*\))?[-#0 +]*(?P<width>\*|\d*)(?:\.(?P<precision>\*|\d*))?[hlL]?(.|$)"
)


def _merge(msg: str, args: object) -> str:
    """``msg % args`` when it is proven cheap: a tuple of plain scalars, no mapping keys, no ``*``,
    widths and precisions of at most ``MAX_MERGE_WIDTH``: the result is then at most linear in the
    sizes of *msg* and *args*. Anything else is refused: ``"%0999999999d" % (1,)`` is a gigabyte."""
    if type(args) is list:
        args = tuple(args)
    if type(args) is not tuple:
        raise RecordRefused(f"args is a {type(args).__name__}; only a tuple is merged here")
    for arg in args:
        if type(arg) not in _MERGE_ARG_TYPES:
            raise RecordRefused(f"args holds a {type(arg).__name__}; only str, int, float, bool and None")
    for match in _CONVERSION.finditer(msg.encode("utf-8", "surrogatepass")):
        if match.group("key") is not None:
            raise RecordRefused("msg uses a mapping key (%(name)s); only positional args are merged here")
        for part in (match.group("width"), match.group("precision")):
            if part == b"*" or (part and (len(part) > 3 or int(part) > MAX_MERGE_WIDTH)):
                raise RecordRefused(
                    f"msg has a conversion {match.group(0)[:40]!r} wider than {MAX_MERGE_WIDTH}: "
                    "the stdlib SocketHandler sends the message already merged"
                )
    try:
        return msg % args
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordRefused(f"msg % args failed: {exc}") from None


def check_record(state: object) -> dict[str, Any]:
    """The attribute dict *state*, checked (and where harmless, fixed) before ``makeLogRecord``.

    Refused (``RecordRefused``): anything but a dict with str keys; a key that starts with ``__`` or
    names a method of ``LogRecord`` (it would shadow ``getMessage``); no ``name`` or ``levelno``; a
    well-known attribute (``RECORD_TYPES``) of another type; ``args`` that cannot be merged cheaply
    (see ``_merge``). Fixed: ``created``, ``msecs`` and ``relativeCreated`` given as int become float;
    a missing ``levelname`` is the level's name; ``exc_info`` becomes None (what arrives can only be
    plain values, which formatters cannot use: the traceback travels as ``exc_text``); ``args`` that
    can be merged cheaply are merged into ``msg`` and become None.
    """
    if type(state) is not dict:
        raise RecordRefused(f"expected a dict of record attributes, got a {type(state).__name__}")
    for key in state:
        if type(key) is not str:
            raise RecordRefused(f"expected str attribute names, got a {type(key).__name__}")
        if key.startswith("__") or callable(getattr(logging.LogRecord, key, None)):
            raise RecordRefused(f"the attribute name {key[:60]!r} would shadow a LogRecord method")
    level = state.get("levelno")
    if type(level) is not int or not 0 <= level < 2**31:
        raise RecordRefused(f"expected levelno as an int from 0 to 2**31 - 1, got {_pickles_repr(level)}")
    if type(state.get("name")) is not str:
        raise RecordRefused(f"expected name as a str, got {_pickles_repr(state.get('name'))}")
    for key in _FLOATS:
        if type(state.get(key)) is int:
            state[key] = float(state[key])
    for key, kinds in RECORD_TYPES.items():
        if key in state and type(state[key]) not in kinds:
            names = " or ".join("None" if kind is _NONE else kind.__name__ for kind in kinds)
            raise RecordRefused(f"expected {key} as {names}, got a {type(state[key]).__name__}")
    if "levelname" not in state:
        state["levelname"] = logging.getLevelName(level)
    state["exc_info"] = None
    args = state.get("args")
    if args is not None and (type(args) not in (tuple, list, dict) or args):
        state["msg"] = _merge(state.get("msg", ""), args)
    state["args"] = None
    return state


def _pickles_repr(value: object) -> str:
    return type(value).__name__ if not isinstance(value, (int, str)) else repr(value)[:60]


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


class _Stream:
    __slots__ = ("buffer", "frame_deadline", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: _Peer) -> None:
        self.sock, self.peer = sock, peer
        self.buffer = bytearray()  # at most one frame (the limit) and one read past it
        self.frame_deadline: float | None = None


def _peer_name(transport: str, address: Any) -> str:
    host, port = address[0], address[1]
    return f"{transport}:[{host}]:{port}" if ":" in str(host) else f"{transport}:{host}:{port}"


def parse_host_port(
    value: object, option: str, caller: str, allow_remote: bool
) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6; port 0 for any free one) as a family and address,
    refused unless on loopback or *allow_remote*."""
    if not isinstance(value, str):
        raise TypeError(
            f"{caller} expected {option} as a string like '127.0.0.1:9020', got {type(value).__name__!r}"
        )
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"{caller} expected {option} like '127.0.0.1:9020' (port 0 for any free one), got {value!r}"
        )
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    try:
        outside = non_loopback(family, (host, int(port)))
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"{caller} got {option}={value!r}, whose host does not resolve ({exc})") from None
    if outside and not allow_remote:
        raise ValueError(
            f"{caller} got {option}={value!r}, which is not loopback ({', '.join(outside)}): anyone who can "
            "reach the port could send records, unauthenticated and unencrypted; use '127.0.0.1:PORT', "
            "or pass allow_remote=True to listen there anyway"
        )
    return family, (host, int(port))


def _bind(
    family: socket.AddressFamily, address: tuple[str, int], kind: int, option: str, allow_remote: bool
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        outside = non_loopback(family, sock.getsockname())  # what was bound, not what was asked
        if outside and not allow_remote:
            raise ValueError(f"refused to receive at {option}: it is not a loopback address ({outside[0]})")
        if kind == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise type(exc)(
            exc.errno, f"could not receive at {option}={address!r}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise
    if outside:
        banner(f"receiving records at {option}={sock.getsockname()[:2]}, beyond loopback (allow_remote=True)")
    return sock


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
        self._accept_paused_until: float | None = None
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
            if self._udp is not None:
                selector.register(self._udp, selectors.EVENT_READ, "udp")
            self._wake_r.setblocking(False)
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping:
                timeout = min(1.0, self._frame_timeout() / 2)
                if self._accept_paused_until is not None:
                    timeout = min(timeout, max(0.0, self._accept_paused_until - time.monotonic()))
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
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, address = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
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
            stream = _Stream(sock, peer)
            with self._lock:
                self._streams[sock.fileno()] = stream
            selector.register(sock, selectors.EVENT_READ, stream)

    def _pause_accepting(self, selector: selectors.BaseSelector, exc: OSError) -> None:
        # As the listener does (_serving.SocketServing._pause_accepting): the connection accept()
        # could not take keeps the server socket readable, so retrying at once would be a busy loop.
        assert self._tcp is not None
        selector.unregister(self._tcp)
        self._accept_paused_until = time.monotonic() + _serving.ACCEPT_BACKOFF
        hint = " (raise the limit: ulimit -n)" if exc.errno == errno.EMFILE else ""
        banner(
            f"log receiver: accept() failed: {exc.strerror or exc}; pausing {_serving.ACCEPT_BACKOFF} s{hint}"
        )

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            assert self._tcp is not None
            selector.register(self._tcp, selectors.EVENT_READ, "accept")
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

    def _read(self, stream: _Stream, selector: selectors.BaseSelector, limit: int = _READ_SIZE) -> int:
        """Read once from *stream* (at most *limit* bytes), receive every whole frame; return bytes read."""
        try:
            data = stream.sock.recv(min(limit, _READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:
            if stream.buffer:
                self._refuse(
                    stream.peer,
                    "incomplete",
                    f"the connection ended within a frame ({len(stream.buffer)} bytes)",
                )
            self._close(stream, selector, "closed")
            return 0
        buffer = stream.buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            if size > self.max_frame:
                self._refuse(
                    stream.peer, "oversized",
                    f"a frame of {size} bytes exceeds the limit of {self.max_frame} bytes (max_frame): "
                    "connection closed",
                )  # fmt: skip
                self._close(stream, selector, "closed")
                return len(data)
            end = offset + _LENGTH.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[offset + _LENGTH.size : end])
            offset = end
            self._receive(stream.peer, payload)
        if offset:
            del buffer[:offset]
        if not buffer:
            stream.frame_deadline = None
            if offset > _READ_SIZE:
                stream.buffer = bytearray()  # give back the memory of a big frame
        elif offset or stream.frame_deadline is None:
            stream.frame_deadline = time.monotonic() + self._frame_timeout()  # a new frame has begun
        return len(data)

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
        if self._tcp is not None and self._accept_paused_until is None:
            before = -1
            while len(self._streams) != before and len(self._streams) < self.max_connections:
                before = len(self._streams)  # connections still in the backlog hold records too
                self._accept(selector)
        for stream in list(self._streams.values()):
            try:
                raw = fcntl.ioctl(stream.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                continue
            pending = struct.unpack("i", raw)[0]
            while pending > 0 and stream.sock.fileno() in self._streams:
                consumed = self._read(stream, selector, limit=pending)
                if not consumed:
                    break
                pending -= consumed
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
