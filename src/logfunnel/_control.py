"""The listener's side of the control protocol: ``logfunnel stats`` and ``logfunnel tail``.

A control client opens a connection to the listener's own socket and authenticates exactly as a
worker does (``_transport``: the greeting, the HMAC reply), but its hello is ``("control", 1)``
instead of a worker's ``(pid, name, incarnation, ppid)``: a worker's hello starts with an int, a
control client's with a string, so neither can pass for the other. A control client is never a
process in ``stats()``, and its welcome is ``{"control": 1, "pid": …}``, not the level plan.

Requests (one MessagePack array a frame, at most ``MAX_REQUEST`` bytes) and answers::

    ("stats",)               -> ("stats", {**listener.stats(), "listener": {pid, cpu, rss, at}})
    ("tail", level, prefix)  -> ("tailing",), then ("records", dropped, [entry, ...]) as they come
    anything else            -> ("error", text), and the connection is closed

A stats answer is computed and encoded at most once per ``MIN_STATS_INTERVAL`` and shared by every
client that asks meanwhile, and a client must read an answer before it asks again: however many
clients ask however often, stats cost the listener a bounded rate of work.

A tail entry is the record's ``TAIL_FIELDS`` in that order, or, for a batch that carried only the
lines its workers rendered, ``(levelno, line)``; each is encoded once, whoever it goes to. A
subscriber's encoded entries wait in a buffer of at most ``TAIL_BUFFER_BYTES``; beyond, new entries
are dropped and counted (``dropped`` in every frame), so a tail that never reads costs the listener
that buffer and nothing else. Every write is non-blocking.
"""

from __future__ import annotations

import operator
import os
import selectors
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from . import _wire

if TYPE_CHECKING:
    from ._serving import SocketServing, _Connection

__all__ = [
    "CONTROL_HELLO",
    "MAX_CONTROL_CLIENTS",
    "MAX_REQUEST",
    "TAIL_BUFFER_BYTES",
    "TAIL_FIELDS",
    "ControlClient",
    "ControlHub",
    "is_control_hello",
]

CONTROL_HELLO = ("control", 1)
MAX_REQUEST = 4096  # bytes of one request frame: requests are a few dozen bytes
MAX_CONTROL_CLIENTS = 16  # authenticated control connections at once; beyond, a newcomer is refused
MIN_STATS_INTERVAL = 0.05  # seconds an encoded stats answer is reused for (each costs O(processes))
TAIL_BUFFER_BYTES = 4 * 1024 * 1024  # the encoded entries one subscriber may have waiting
_FRAME_BYTES = 256 * 1024  # about how much of a subscriber's buffer goes into one frame
_MAX_PREFIX = 1024

#: The record attributes a tail entry carries, in order (a missing one travels as None).
TAIL_FIELDS = (
    "created", "levelno", "levelname", "name", "process", "processName", "threadName",
    "filename", "module", "funcName", "lineno", "msg", "exc_text",
)  # fmt: skip


def is_control_hello(hello: object) -> bool:
    """Whether an authenticated peer's hello says it is a control client (never a worker's hello)."""
    return type(hello) is tuple and len(hello) == 2 and hello[0] == CONTROL_HELLO[0] and hello[1] == 1


class ControlClient:
    """One authenticated control connection: what it waits to be sent, and its tail if it has one."""

    __slots__ = (
        "buffered", "conn", "dropped", "entries", "level", "prefix", "reported",
        "tailing", "unsent", "writing",
    )  # fmt: skip

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.unsent = b""  # the rest of a frame the client had no room for yet
        self.writing = False  # registered for EVENT_WRITE while unsent or entries wait
        self.tailing = False
        self.level = 0
        self.prefix = ""
        self.entries: deque[bytes] = deque()  # encoded entries
        self.buffered = 0  # their bytes
        self.dropped = 0  # entries refused because the buffer was full
        self.reported = 0  # the dropped count the client was last told


class ControlHub:
    """The control clients of one listener, served from its thread (``SocketServing._serve``)."""

    def __init__(self, listener: SocketServing, selector: selectors.BaseSelector) -> None:
        self.listener = listener
        self.selector = selector
        self.clients: dict[int, ControlClient] = {}  # by id of the _Connection
        self.tails: list[ControlClient] = []
        self.dirty: set[ControlClient] = set()
        self.ever_tailed = False  # once True, acks always say whether to send whole records
        self._psutil: Any = None
        self._stats_cache: tuple[float, bytes] | None = None

    # -- connections -------------------------------------------------------------------------------

    def admit(self, conn: _Connection) -> bytes:
        """Take *conn* as a control client; return the welcome's body (after the digest)."""
        if len(self.clients) >= MAX_CONTROL_CLIENTS:
            raise ControlRefused(f"more than {MAX_CONTROL_CLIENTS} control clients at once")
        client = ControlClient(conn)
        self.clients[id(conn)] = client
        conn.control = client
        return _wire.encode({"control": 1, "pid": os.getpid()})

    def forget(self, conn: _Connection) -> None:
        client = self.clients.pop(id(conn), None)
        if client is None:
            return
        if client in self.tails:
            self.tails.remove(client)
        self.dirty.discard(client)
        client.entries.clear()

    # -- requests ----------------------------------------------------------------------------------

    def request(self, client: ControlClient, payload: bytes) -> None:
        """Answer one request frame; raise ``ControlRefused`` to have the connection closed."""
        message = _wire.decode(payload)  # at most MAX_REQUEST bytes: linear, and small
        if client.tailing:
            raise ControlRefused("a request on a connection that tails: open another connection")
        if client.unsent:
            raise ControlRefused("a request before the last answer was read: ask one at a time")
        if message == ("stats",):
            client.unsent = self._stats_frame()
            self.dirty.add(client)
            return
        if (
            type(message) is tuple
            and len(message) == 3
            and message[0] == "tail"
            and type(message[1]) is int
            and 0 <= message[1] < 2**31
            and type(message[2]) is str
            and len(message[2]) <= _MAX_PREFIX
        ):
            client.level, client.prefix = message[1], message[2]
            client.tailing = True
            self.tails.append(client)
            self.ever_tailed = True
            self._send(client, ("tailing",))
            return
        shown = _wire.safe_repr(message)[:100]
        self._send(
            client, ("error", f"unknown request {shown}: expected ('stats',) or ('tail', level, prefix)")
        )
        self.write(client)  # once, without waiting: the connection is closed next
        raise ControlRefused(f"unknown control request {shown}")

    def _stats_frame(self) -> bytes:
        """The stats answer, encoded at most once per ``MIN_STATS_INTERVAL`` whoever asks: however
        many clients ask however often, the listener computes stats at most that often."""
        now = time.monotonic()
        if self._stats_cache is None or now - self._stats_cache[0] >= MIN_STATS_INTERVAL:
            try:
                data = _wire.frame(_wire.encode(("stats", self.stats())))
            except ValueError as exc:
                data = _wire.frame(_wire.encode(("error", f"the stats could not be encoded: {exc}")))
            self._stats_cache = (now, data)
        return self._stats_cache[1]

    def stats(self) -> dict[str, Any]:
        """The listener's ``stats()`` with its process's pid, CPU seconds and resident memory, and the
        CPU seconds of the listener's thread (this runs in it)."""
        figures = self.listener.stats()  # type: ignore[attr-defined]
        rss = None
        try:
            if self._psutil is None:
                import psutil

                self._psutil = psutil.Process()
            rss = self._psutil.memory_info().rss
        except Exception:
            pass
        figures["listener"] = {
            "pid": os.getpid(),
            "cpu": time.process_time(),  # the whole process's (an application's too, in start_listener)
            "thread_cpu": time.thread_time(),  # the listener thread's own: stats() runs in it
            "rss": rss,
            "at": time.monotonic(),
            "address": getattr(self.listener, "address", None),
        }
        return figures  # type: ignore[no-any-return]

    # -- tail --------------------------------------------------------------------------------------

    def tap(
        self, levels: list[int], lines: list[list[str | None]], records: list[dict[str, Any]] | None
    ) -> None:
        """Offer a handled batch to every subscriber (filtered per subscriber, bounded per subscriber)."""
        encoded = _entries(levels, lines, records)
        names: list[Any] | None = None
        low = min(levels)
        for client in self.tails:
            level, prefix = client.level, client.prefix
            if prefix:
                if names is None:
                    names = (
                        [None] * len(levels) if records is None else [state.get("name") for state in records]
                    )
                dotted = prefix + "."
                chosen = [
                    entry
                    for entry, lvl, name in zip(encoded, levels, names)
                    if lvl >= level and name is not None and (name == prefix or name.startswith(dotted))
                ]
            elif level > low:
                chosen = [entry for entry, lvl in zip(encoded, levels) if lvl >= level]
            else:
                chosen = encoded
            if b"" in chosen:
                chosen = [entry for entry in chosen if entry]  # nothing to show for these
            if not chosen and client.dropped == client.reported:
                continue
            size = sum(map(len, chosen))
            if client.buffered + size <= TAIL_BUFFER_BYTES:
                client.entries.extend(chosen)
                client.buffered += size
            else:  # the buffer is full: keep what fits, count the rest as dropped
                room = TAIL_BUFFER_BYTES - client.buffered
                for entry in chosen:
                    if len(entry) > room:
                        client.dropped += 1
                    else:
                        client.entries.append(entry)
                        room -= len(entry)
                client.buffered = TAIL_BUFFER_BYTES - room
            self.dirty.add(client)

    # -- writing -----------------------------------------------------------------------------------

    def _send(self, client: ControlClient, message: tuple[Any, ...]) -> None:
        try:
            data = _wire.frame(_wire.encode(message))
        except ValueError as exc:
            data = _wire.frame(_wire.encode(("error", f"the answer could not be encoded: {exc}")))
        client.unsent += data
        self.dirty.add(client)

    def flush(self) -> None:
        """Write what waits for each client with something new, as far as its socket takes it."""
        for client in list(self.dirty):
            self.write(client)
        self.dirty.clear()

    def write(self, client: ControlClient) -> None:
        """Send what *client* is waiting for without blocking; watch its socket for room if needed."""
        if id(client.conn) not in self.clients:
            return
        sock = client.conn.sock
        try:
            while True:
                if not client.unsent:
                    client.unsent = self._next_frame(client)
                    if not client.unsent:
                        break
                sent = sock.send(client.unsent)
                client.unsent = client.unsent[sent:]
                if client.unsent:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return  # the peer is gone: its read side sees the end and closes the connection
        waiting = bool(client.unsent or client.entries)
        if waiting != client.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
            try:
                self.selector.modify(sock, events, client.conn)
            except (KeyError, ValueError):
                return
            client.writing = waiting

    @staticmethod
    def _next_frame(client: ControlClient) -> bytes:
        if not client.tailing or (not client.entries and client.dropped == client.reported):
            return b""
        chunk: list[bytes] = []
        size = 0
        entries = client.entries
        while entries and size < _FRAME_BYTES and len(chunk) < 0xFFFF:
            entry = entries.popleft()
            chunk.append(entry)
            size += len(entry)
        client.buffered -= size
        client.reported = client.dropped
        # ("records", dropped, [entry, ...]) in MessagePack, around the entries already encoded.
        head = _RECORDS_HEAD + _wire.encode(client.dropped) + b"\xdc" + len(chunk).to_bytes(2, "big")
        return _wire.frame(head + b"".join(chunk))


_RECORDS_HEAD = b"\x93" + _wire.encode("records")
_FIELDS = operator.itemgetter(*TAIL_FIELDS)
_ENCODE = msgspec.msgpack.Encoder().encode


def _entries(
    levels: list[int], lines: list[list[str | None]], records: list[dict[str, Any]] | None
) -> list[bytes]:
    """Each record of a batch as an encoded tail entry (b"" when there is nothing to show)."""
    if records is None:
        column = lines[0] if lines else [None] * len(levels)
        return [b"" if line is None else _wire.encode((level, line)) for level, line in zip(levels, column)]
    try:
        values = list(map(_FIELDS, records))
    except KeyError:  # a record without some of them (from an older Python, or a foreign peer)
        values = [tuple(state.get(field) for field in TAIL_FIELDS) for state in records]
    try:
        return list(map(_ENCODE, values))
    except Exception:
        return [_encode_one(value) for value in values]


def _encode_one(value: tuple[Any, ...]) -> bytes:
    try:
        return _wire.encode(value)
    except ValueError:  # it was decoded from the wire, so it encodes; but the listener never fails
        return b""


class ControlRefused(Exception):
    """A control client broke the protocol; its connection is closed, nothing else is affected."""
