"""The listener's socket side: accept, authenticate, read frames, acknowledge.

``SocketServing`` is the half of ``LogListener`` that runs in its thread when it listens on a socket:
one selector over the server and every worker connection, non-blocking reads (``_frames_in``, shared
with the receiver), the handshake, and an acknowledgement for what was handled. What an authenticated
worker's frames mean for its process's counts is ``_processes``'s business (``ProcessAccounting``,
a base of this mixin), what to do with a batch the listener's (``_dispatch``), as is reporting
(``_emit_local``).
"""

from __future__ import annotations

import functools
import hmac
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import _control, _frames_in, _wire, worker
from ._frames_in import AcceptPause, FrameStream, FrameTooLarge, StreamEnded
from ._handling import banner, flush_banners
from ._processes import _SETTLE_POLL, ProcessAccounting, ProtocolError, _Process
from ._transport import CHALLENGE_SIZE, DIGEST_SIZE, GREETING, HANDSHAKE_TIMEOUT, answer

__all__ = ["ProtocolError", "SocketServing"]

_HANDSHAKE_LIMIT = 64 * 1024

# Bounded cost per peer (DESIGN rule 11). Module constants, like HANDSHAKE_TIMEOUT, so that an
# application (or a test) can change them before it starts a listener.
MAX_PENDING = 64  # connections that have not authenticated yet; beyond it the oldest is closed
FRAME_TIMEOUT = 30.0  # seconds an authenticated peer has to finish a frame it has begun
ACCEPT_BACKOFF = 0.5  # seconds without accept() after it failed with no connection to give up
LEVELS_EVERY = 0.5  # seconds between looks at whether this process's levels changed (_push_levels)


class _Connection(FrameStream):
    """A worker's connection (or, once authenticated as one, a stats or tail client's)."""

    __slots__ = ("challenge", "control", "deadline", "levels", "listener", "process", "unsent")

    def __init__(self, sock: socket.socket, listener: SocketServing) -> None:
        super().__init__(sock)
        self.listener = listener  # whose max_frame limits a worker's frames once it authenticated
        self.challenge = os.urandom(CHALLENGE_SIZE)
        self.deadline = time.monotonic() + HANDSHAKE_TIMEOUT  # for the handshake
        self.process: _Process | None = None
        self.control: _control.ControlClient | None = None  # a `logfunnel stats`/`tail` client instead
        self.unsent = b""  # the tail of an acknowledgement the worker had no room for yet
        self.levels: Any = None  # the levels (and disabled loggers) this worker was last told

    def frame_limit(self) -> int:
        if self.process is not None:
            return self.listener.max_frame
        return _control.MAX_REQUEST if self.control is not None else _HANDSHAKE_LIMIT

    def frame_timeout(self) -> float | None:
        # Before the handshake is done, its own deadline applies.
        return FRAME_TIMEOUT if self.process is not None else None


class SocketServing(ProcessAccounting):
    """The socket read loop of a ``LogListener`` (a mixin: the listener provides what it declares)."""

    _server: socket.socket | None
    _wake_r: socket.socket | None
    _authkey: bytes
    _connections: dict[int, _Connection]
    _rejected: int
    _stopping: bool
    max_frame: int
    _welcome_plan: Callable[[], dict[str, Any]]
    _accept_pause: AcceptPause | None = None  # the server socket's, while serving
    _levels_due = 0.0  # when _push_levels looks again

    # -- the socket read loop ----------------------------------------------------------------------

    def _serve(self) -> None:
        worker.listener_threads.add(threading.get_ident())
        selector = selectors.DefaultSelector()
        connections: dict[int, _Connection] = {}
        self._connections = connections
        assert self._server is not None
        self._server.setblocking(False)
        assert self._wake_r is not None
        self._wake_r.setblocking(False)
        selector.register(self._server, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        pause = self._accept_pause = AcceptPause(selector, self._server, None)
        hub = self._control_hub = _control.ControlHub(self, selector)
        try:
            while not self._stopping:
                timeout = 1.0
                if self._settle_until:
                    timeout = _SETTLE_POLL
                for key, events in selector.select(timeout=pause.timeout(timeout)):
                    if key.data is None:
                        self._accept(selector, connections)
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        if events & selectors.EVENT_WRITE and key.data.control is not None:
                            hub.write(key.data.control)  # room again for a stats or tail client
                        if events & selectors.EVENT_READ:
                            self._read(key.data, selector, connections)
                if hub.dirty:
                    hub.flush()
                self._expire(selector, connections)
                self._push_levels(connections)
                self._reconcile()
            self._drain(selector, connections)
            hub.flush()  # the last records to the tails, as far as their sockets take them
            self._reconcile(force=True)
        except Exception as exc:  # the listener must never die silently
            banner(f"the log listener failed: {exc!r}")
            raise
        finally:
            for conn in list(connections.values()):  # workers still alive: nothing about them is final
                self._close(conn, selector, connections, reason=None, shutting_down=True)
            selector.close()
            flush_banners(force=True)
            worker.listener_threads.discard(threading.get_ident())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r is not None and self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _drain(self, selector: selectors.BaseSelector, connections: dict[int, _Connection]) -> None:
        # Handle what was handed over before stop(): the bytes each connection holds right now.
        # Workers that are still logging keep writing; what they write from now on is not ours.
        for conn in list(connections.values()):
            _frames_in.read_waiting(conn, functools.partial(self._read, conn, selector, connections))
            if conn.sock.fileno() in connections and self._at_eof(conn):
                self._close(conn, selector, connections, reason=None)

    @staticmethod
    def _at_eof(conn: _Connection) -> bool:
        try:
            return conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except OSError:
            return False

    def _accept(self, selector: selectors.BaseSelector, connections: dict[int, _Connection]) -> None:
        assert self._server is not None
        # Connections that have not authenticated, oldest first (a dict keeps the order of accept).
        pending = deque(
            conn for conn in connections.values() if conn.process is None and conn.control is None
        )
        for _ in range(_frames_in.ACCEPTS_PER_TURN):
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _frames_in.OUT_OF_DESCRIPTORS and pending:
                    # Make room by closing the peer that has waited longest without proving it knows
                    # the key: an idle flood then costs its senders their connections, not us a core.
                    self._close(
                        pending.popleft(), selector, connections,
                        reason=f"out of file descriptors ({exc.strerror}): closed the oldest connection "
                        "waiting to authenticate",
                    )  # fmt: skip
                    continue
                self._pause_accepting(selector, exc, len(connections))
                return
            sock.setblocking(False)
            conn = _Connection(sock, self)
            try:
                sock.send(_wire.frame(GREETING + conn.challenge))
            except OSError:
                sock.close()
                continue
            connections[sock.fileno()] = conn
            selector.register(sock, selectors.EVENT_READ, conn)
            pending.append(conn)
            while len(pending) > MAX_PENDING:
                self._close(
                    pending.popleft(), selector, connections,
                    reason=f"more than {MAX_PENDING} connections are waiting to authenticate: "
                    "closed the oldest",
                )  # fmt: skip

    def _pause_accepting(self, selector: selectors.BaseSelector, exc: OSError, count: int) -> None:
        """Stop selecting the server socket for ``ACCEPT_BACKOFF`` seconds: accept() fails with
        nothing of ours to give up (the descriptors are held by workers or by the application), and
        the connection it could not take keeps the server socket readable."""
        assert self._accept_pause is not None
        self._accept_pause.pause(ACCEPT_BACKOFF)
        hint = _frames_in.out_of_descriptors_hint(exc)
        banner(
            f"accept() failed: {exc.strerror or exc}; not accepting connections for {ACCEPT_BACKOFF} s "
            f"({count} connections open){hint}"
        )

    def _expire(self, selector: selectors.BaseSelector, connections: dict[int, _Connection]) -> None:
        now = time.monotonic()
        assert self._accept_pause is not None
        self._accept_pause.resume_if_due(now)
        for conn in list(connections.values()):
            if conn.control is not None:
                continue  # an authenticated stats or tail client, which sends nothing mid-frame
            if conn.process is None:
                if now > conn.deadline:
                    reason = f"no handshake within {HANDSHAKE_TIMEOUT} s"
                    self._close(conn, selector, connections, reason=reason)
            elif conn.frame_deadline is not None and now > conn.frame_deadline:
                # A peer that stalls mid-frame holds up to a frame limit of our memory (6 of them
                # pinned 348 MB): it has FRAME_TIMEOUT seconds to finish what it began.
                self._close(
                    conn, selector, connections,
                    reason=f"a frame begun {FRAME_TIMEOUT} s ago is still incomplete "
                    f"({len(conn.buffer)} bytes buffered)",
                )  # fmt: skip
        flush_banners()

    def _read(
        self,
        conn: _Connection,
        selector: selectors.BaseSelector,
        connections: dict[int, _Connection],
        limit: int = _frames_in.READ_SIZE,
    ) -> int:
        """Read once from *conn* (at most *limit* bytes), handle every whole frame; return bytes read."""
        try:
            read = conn.read_frames(lambda payload: self._on_frame(conn, payload), limit)
        except StreamEnded:
            self._close(conn, selector, connections, reason=None)
            return 0
        except (FrameTooLarge, ProtocolError, _wire.FrameError, _control.ControlRefused) as exc:
            self._close(conn, selector, connections, reason=str(exc))
            return 0
        process = conn.process
        if process is not None and process.next_seq is not None and process.next_seq - 1 > process.acked:
            self._acknowledge(conn, process)
        return read

    def _on_frame(self, conn: _Connection, payload: bytes) -> None:
        if conn.control is not None:
            assert self._control_hub is not None
            self._control_hub.request(conn.control, payload)
        elif conn.process is None:
            self._authenticate(conn, payload)
        else:
            self._on_message(conn.process, payload)

    def _records_wanted(self) -> bool | None:
        """Whether workers should send whole records with their lines now (None: as the plan says)."""
        return None

    def _push_levels(self, connections: dict[int, _Connection]) -> None:
        """Tell each connected worker the levels again if they changed since it was told (a level
        lowered or raised in this process, an incremental dictConfig): at most every
        ``LEVELS_EVERY`` seconds, one LEVELS message to each worker whose levels differ."""
        now = time.monotonic()
        if now < self._levels_due:
            return
        self._levels_due = now + LEVELS_EVERY
        workers = [conn for conn in connections.values() if conn.levels is not None]
        if not workers:
            return
        plan = self._welcome_plan()
        levels = (plan["levels"], plan["disabled"])
        data = b""
        for conn in workers:
            if conn.levels == levels:
                continue
            conn.levels = levels
            data = data or _wire.frame(_wire.encode((_wire.LEVELS, *levels)))
            conn.unsent += data  # after the rest of an acknowledgement, if one is waiting
            try:
                conn.unsent = conn.unsent[conn.sock.send(conn.unsent) :]
            except OSError:
                pass

    def _acknowledge(self, conn: _Connection, process: _Process) -> None:
        # Everything up to next_seq - 1 is handled. Never wait for a worker to read: while its buffer
        # is full, the rest of a partly sent acknowledgement waits, and newer ones (they are
        # cumulative) are skipped until it has gone. An acknowledgement may also say whether to send
        # whole records (see Dispatcher.wants_records).
        try:
            if conn.unsent:
                conn.unsent = conn.unsent[conn.sock.send(conn.unsent) :]
                if conn.unsent:
                    return
            seq = (process.next_seq or 1) - 1
            wanted = self._records_wanted()
            ack = (_wire.ACK, seq) if wanted is None else (_wire.ACK, seq, wanted)
            data = _wire.frame(_wire.encode(ack))
            conn.unsent = data[conn.sock.send(data) :]
            process.acked = seq
        except OSError:
            pass

    def _close(
        self,
        conn: _Connection,
        selector: selectors.BaseSelector,
        connections: dict[int, _Connection],
        reason: str | None,
        shutting_down: bool = False,
    ) -> None:
        """Close *conn*; *reason* says why it was refused, None for an ordinary end of stream."""
        try:
            selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        connections.pop(conn.sock.fileno(), None)
        if conn.control is not None and self._control_hub is not None:
            self._control_hub.forget(conn)
        conn.sock.close()
        if conn.process is not None and not shutting_down:
            self._connection_ended(conn.process, connections)
        if reason is not None:  # counted once the process's state says what happened
            self._rejected += 1
            who = f"process {conn.process.pid}" if conn.process else "a peer"
            banner(f"closed the connection of {who}: {reason}")

    def _authenticate(self, conn: _Connection, payload: bytes) -> None:
        if len(payload) < DIGEST_SIZE + CHALLENGE_SIZE:
            raise ProtocolError("short handshake reply: not a logfunnel worker")
        if not hmac.compare_digest(payload[:DIGEST_SIZE], answer(self._authkey, conn.challenge)):
            raise ProtocolError("authentication failed: the peer does not know the auth key")
        hello = _wire.decode(payload[DIGEST_SIZE + CHALLENGE_SIZE :])
        if _control.is_control_hello(hello):  # `logfunnel stats` or `tail`: never a process
            self._admit_control(conn, payload)
            return
        if not (
            type(hello) is tuple
            and len(hello) == 4
            and type(hello[0]) is int
            and type(hello[1]) is str
            and type(hello[2]) is bytes
            and type(hello[3]) is int
            and 0 <= hello[0] < 2**63
            and 0 <= hello[3] < 2**63
            and len(hello[1]) <= 4096
        ):
            raise ProtocolError(f"malformed hello {_wire.safe_repr(hello)[:200]}")
        pid, name, incarnation, ppid = hello
        plan = self._welcome_plan()
        welcome = _wire.frame(
            answer(self._authkey, payload[DIGEST_SIZE : DIGEST_SIZE + CHALLENGE_SIZE]) + _wire.encode(plan)
        )
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(HANDSHAKE_TIMEOUT)
            conn.sock.sendall(welcome)
            conn.sock.setblocking(False)
        except OSError as exc:
            raise ProtocolError(f"could not send the welcome: {exc}") from None
        key = (pid, incarnation)
        with self._stats_lock:
            process = self._processes.get(key)
            if process is None:
                process = self._processes[key] = _Process(pid, name, ppid, key)
        process.name = name
        process.state = "connected"
        conn.process = process
        conn.levels = (plan.get("levels"), plan.get("disabled"))

    def _admit_control(self, conn: _Connection, payload: bytes) -> None:
        assert self._control_hub is not None
        try:
            body = self._control_hub.admit(conn)
        except _control.ControlRefused as exc:
            raise ProtocolError(str(exc)) from None
        digest = answer(self._authkey, payload[DIGEST_SIZE : DIGEST_SIZE + CHALLENGE_SIZE])
        assert conn.control is not None
        conn.control.unsent = _wire.frame(digest + body)
        self._control_hub.dirty.add(conn.control)
