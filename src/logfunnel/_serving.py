"""The listener's socket side: accept, authenticate, read frames, acknowledge, account per process.

``SocketServing`` is the half of ``LogListener`` that runs in its thread when it listens on a socket:
one selector over the server and every worker connection, non-blocking reads, frames checked before
anything in them is used, and a ``_Process`` record per worker (pid and fork) from which ``stats()``
reports what was received, dropped and lost. What to do with a batch is the listener's business
(``_dispatch``), as is reporting (``_emit_local``).
"""

from __future__ import annotations

import errno
import fcntl
import hmac
import logging
import operator
import os
import selectors
import socket
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import _control, _counts, _wire, worker
from ._handling import banner, flush_banners
from ._transport import CHALLENGE_SIZE, DIGEST_SIZE, GREETING, HANDSHAKE_TIMEOUT, answer

__all__ = ["ProtocolError", "SocketServing"]

_READ_SIZE = 1 << 20
_HANDSHAKE_LIMIT = 64 * 1024
_WARN_INTERVAL = 5.0
_RECONCILE_INTERVAL = 0.5  # how often the count files of dead processes are looked for
_SETTLE_POLL = 0.05  # ... and how often just after a connection ended without a goodbye
_SETTLE_WINDOW = 2.0  # for how long after that (a killed process is gone within it, mostly)

# Bounded cost per peer (DESIGN rule 11). Module constants, like HANDSHAKE_TIMEOUT, so that an
# application (or a test) can change them before it starts a listener.
MAX_PENDING = 64  # connections that have not authenticated yet; beyond it the oldest is closed
FRAME_TIMEOUT = 30.0  # seconds an authenticated peer has to finish a frame it has begun
ACCEPT_BACKOFF = 0.5  # seconds without accept() after it failed with no connection to give up
_ACCEPTS_PER_TURN = 64  # accepted per turn of the loop, so that handshakes in progress get read
# accept() fails with these while the process (or the system) is out of descriptors or memory.
# The connection stays in the backlog and the server socket stays readable: retrying at once is a
# busy loop (measured: 92-97 % of a core and 422k stderr lines in 10 s with 600 idle peers).
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ProtocolError(Exception):
    """A peer broke the protocol; its connection is closed, nobody else is affected."""


class _Process:
    """The accounting for one worker process (one pid, from one fork)."""

    __slots__ = (
        "acked", "base", "checkpoint", "counts", "dropped", "ended", "first_seen", "key", "last_seen",
        "lost_at_base", "name", "next_seq", "pid", "ppid", "received", "reconciled", "reported_lost",
        "stamped", "state", "truncated", "warned_at", "warned_dropped",
    )  # fmt: skip

    def __init__(self, pid: int, name: str, ppid: int, key: tuple[int, bytes] | None = None) -> None:
        self.pid, self.name, self.ppid, self.key = pid, name, ppid, key
        # Its count file's name (in the listener's folder), if its (pid, incarnation) can name one.
        self.counts = None if key is None else _counts.file_name(*key)
        self.checkpoint: tuple[int, int] | None = None  # (accepted, dropped) after a complete flush
        self.reconciled = False  # its count file was read after it died: stamped and dropped are final
        self.ended = "vanished"  # the state it ended in, once reconciled
        self.base = 0  # sequence numbers up to base went to an earlier listener (or connection)
        self.next_seq: int | None = None
        self.acked = 0
        self.received = self.stamped = self.dropped = self.warned_dropped = 0
        self.reported_lost = self.lost_at_base = 0
        self.truncated = 0  # records the worker cut down to fit a frame (issue 8)
        self.state = "connected"
        self.first_seen = self.last_seen = time.time()
        self.warned_at = 0.0

    @property
    def lost(self) -> int:
        # The worker knows what it sent that no listener acknowledged, and says so. What it never
        # got to say (it vanished) is what it had accepted past our base and we never received.
        if self.state != "vanished" and not self.reconciled:
            return self.reported_lost
        unheard = self.stamped - self.base - self.received - (self.reported_lost - self.lost_at_base)
        return self.reported_lost + max(0, unheard)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "ppid": self.ppid,
            "state": self.state,
            "received": self.received,
            "dropped": self.dropped,
            "lost": self.lost,
            "truncated": self.truncated,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


class _Connection:
    __slots__ = ("buffer", "challenge", "control", "deadline", "frame_deadline", "process", "sock", "unsent")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()  # at most one frame (the limit) and one read past it
        self.challenge = os.urandom(CHALLENGE_SIZE)
        self.deadline = time.monotonic() + HANDSHAKE_TIMEOUT  # for the handshake
        self.frame_deadline: float | None = None  # for the frame begun in the buffer, once authenticated
        self.process: _Process | None = None
        self.control: _control.ControlClient | None = None  # a `logfunnel stats`/`tail` client instead
        self.unsent = b""  # the tail of an acknowledgement the worker had no room for yet


class SocketServing:
    """The socket read loop of a ``LogListener`` (a mixin: the listener provides what it declares)."""

    _server: socket.socket | None
    _wake_r: socket.socket | None
    _authkey: bytes
    _plan: dict[str, Any]
    _processes: dict[tuple[int, bytes], _Process]
    _connections: dict[int, _Connection]
    _stats_lock: threading.Lock
    _rejected: int
    _counts_dir: str | None
    _finished: deque[_Process]
    _folded: dict[str, int]
    _reconciled_at: float
    max_finished_processes: int
    _stopping: bool
    max_frame: int
    _welcome_plan: Callable[[], dict[str, Any]]
    _dispatch: Callable[[list[int], list[list[str | None]], list[dict[str, Any]] | None], None]
    _emit_local: Callable[..., None]
    _accept_paused_until: float | None = None  # set while accept() is left alone after EMFILE
    _settle_until = 0.0  # until then, count files are looked for every _SETTLE_POLL (a vanished process)
    _control_hub: _control.ControlHub | None = None  # the stats and tail clients (see _control)

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
        hub = self._control_hub = _control.ControlHub(self, selector)
        try:
            while not self._stopping:
                timeout = 1.0
                if self._settle_until:
                    timeout = _SETTLE_POLL
                if self._accept_paused_until is not None:
                    timeout = min(timeout, max(0.0, self._accept_paused_until - time.monotonic()))
                for key, events in selector.select(timeout=timeout):
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
            try:
                raw = fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                continue
            pending = struct.unpack("i", raw)[0]
            while pending > 0 and conn.sock.fileno() in connections:
                consumed = self._read(conn, selector, connections, limit=pending)
                if not consumed:
                    break
                pending -= consumed
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
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS and pending:
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
            conn = _Connection(sock)
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
        assert self._server is not None
        try:
            selector.unregister(self._server)
        except (KeyError, ValueError):
            pass
        self._accept_paused_until = time.monotonic() + ACCEPT_BACKOFF
        hint = " (raise the limit: ulimit -n)" if exc.errno == errno.EMFILE else ""
        banner(
            f"accept() failed: {exc.strerror or exc}; not accepting connections for {ACCEPT_BACKOFF} s "
            f"({count} connections open){hint}"
        )

    def _expire(self, selector: selectors.BaseSelector, connections: dict[int, _Connection]) -> None:
        now = time.monotonic()
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            assert self._server is not None
            selector.register(self._server, selectors.EVENT_READ, None)
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
        limit: int = _READ_SIZE,
    ) -> int:
        """Read once from *conn* (at most *limit* bytes), handle every whole frame; return bytes read."""
        try:
            data = conn.sock.recv(min(limit, _READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:
            self._close(conn, selector, connections, reason=None)
            return 0
        buffer = conn.buffer
        buffer += data
        offset = 0
        try:
            while len(buffer) - offset >= _wire.HEADER.size:
                (size,) = _wire.HEADER.unpack_from(buffer, offset)
                limit = (
                    self.max_frame if conn.process is not None
                    else _control.MAX_REQUEST if conn.control is not None
                    else _HANDSHAKE_LIMIT
                )  # fmt: skip
                if size > limit:
                    raise ProtocolError(f"a frame of {size} bytes exceeds the limit of {limit} bytes")
                end = offset + _wire.HEADER.size + size
                if len(buffer) < end:
                    break
                payload = bytes(buffer[offset + _wire.HEADER.size : end])
                offset = end
                if conn.control is not None:
                    assert self._control_hub is not None
                    self._control_hub.request(conn.control, payload)
                elif conn.process is None:
                    self._authenticate(conn, payload)
                else:
                    self._on_message(conn.process, payload)
        except (ProtocolError, _wire.FrameError, _control.ControlRefused) as exc:
            self._close(conn, selector, connections, reason=str(exc))
            return len(data)
        if offset:
            del buffer[:offset]
        if conn.process is not None:  # before that, the handshake's own deadline applies
            if not buffer:
                conn.frame_deadline = None
                if offset > _READ_SIZE:
                    conn.buffer = bytearray()  # give back the memory of a big frame
            elif offset or conn.frame_deadline is None:
                conn.frame_deadline = time.monotonic() + FRAME_TIMEOUT  # a new frame has begun
        process = conn.process
        if process is not None and process.next_seq is not None and process.next_seq - 1 > process.acked:
            self._acknowledge(conn, process)
        return len(data)

    def _records_wanted(self) -> bool | None:
        """Whether workers should send whole records with their lines now (None: as the plan says)."""
        return None

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

    def _connection_ended(self, process: _Process, connections: dict[int, _Connection]) -> None:
        if any(other.process is process for other in connections.values()):
            return  # it has another connection (an install-time handshake that timed out, then the sender's)
        if process.state != "connected":
            return
        if process.reconciled:  # a late handshake of a process already settled from its count file
            process.state = process.ended
            return
        process.state = "vanished"
        if self._has_count_file(process):
            # Settled exactly from its count file once the process is gone (_reconcile): soon, so
            # that its losses are reported within moments of its death, not within seconds.
            self._settle_until = time.monotonic() + _SETTLE_WINDOW
            return
        if process.checkpoint == (process.stamped, process.dropped) and process.lost == 0:
            process.state = "exited"  # it flushed everything, said so, and then left (os._exit)
        self._report_end(process)
        self._finish(process)

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
        welcome = _wire.frame(
            answer(self._authkey, payload[DIGEST_SIZE : DIGEST_SIZE + CHALLENGE_SIZE])
            + _wire.encode(self._welcome_plan())
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

    def _on_message(self, process: _Process, payload: bytes) -> None:
        # Decoding checks every field against the schema as it reads (linear time, bounded memory).
        message = _wire.decode_message(payload)
        if type(message) is _wire.Batch:
            levels, lines, records = message.levels, message.lines, message.records
            count = _check_batch(levels, lines, records, len(self._plan["formats"]))
            first = message.first
            if process.next_seq is None:
                process.base = first - 1
                process.lost_at_base = message.lost
            elif first < process.next_seq:
                raise ProtocolError(f"sequence number {first} went back (expected {process.next_seq})")
            # A jump forward skips a batch sent on a connection that broke; the worker reports it lost.
            process.next_seq = first + count
            process.received += count
            process.stamped = max(process.stamped, message.stamped)
            process.dropped = max(process.dropped, message.dropped)
            process.reported_lost = max(process.reported_lost, message.lost)
            process.truncated = max(process.truncated, message.truncated)
            process.last_seen = time.time()
            if count:
                try:
                    self._dispatch(levels, lines, records)  # type: ignore[arg-type]
                except Exception as exc:  # a failing handler must not take the listener down
                    banner(f"handling a batch of {count} records failed: {exc!r}")
                hub = self._control_hub
                if hub is not None and hub.tails:
                    hub.tap(levels, lines, records)  # type: ignore[arg-type]
            if (
                process.dropped > process.warned_dropped
                and time.monotonic() - process.warned_at > _WARN_INTERVAL
            ):
                self._report_drops(process)
        elif type(message) is _wire.Bye:
            process.stamped = max(process.stamped, message.stamped)
            process.dropped = max(process.dropped, message.dropped)
            process.reported_lost = max(process.reported_lost, message.lost)
            process.truncated = max(process.truncated, message.truncated)
            process.state = "exited"
            process.last_seen = time.time()
            self._report_end(process)
            if not self._has_count_file(process):
                self._finish(process)
        elif type(message) is _wire.Checkpoint:
            # Sent by flush_worker_logging() once everything accepted so far was on the wire.
            process.stamped = max(process.stamped, message.stamped)
            process.dropped = max(process.dropped, message.dropped)
            process.reported_lost = max(process.reported_lost, message.lost)
            process.checkpoint = (message.stamped, message.dropped)
            process.last_seen = time.time()
        else:  # decode_message refuses every other kind
            raise ProtocolError(f"unknown message {_wire.safe_repr(message)[:200]}")

    # -- processes that are gone: count files, and a bounded table -------------------------------

    def _has_count_file(self, process: _Process) -> bool:
        folder = self._counts_dir
        return bool(folder and process.counts and os.path.lexists(os.path.join(folder, process.counts)))

    def _reconcile(self, force: bool = False) -> None:
        """Settle the processes that are gone from their count files (DESIGN rule 10).

        Only files in the listener's own folder are read, under names it parses itself, and only
        once their process is gone and its connection (if any) has ended: everything it sent has
        been read by then, so what it accepted and this listener never received is lost, exactly.
        """
        folder = self._counts_dir
        if folder is None:
            return
        now = time.monotonic()
        if self._settle_until and now > self._settle_until:
            self._settle_until = 0.0
        interval = _SETTLE_POLL if self._settle_until else _RECONCILE_INTERVAL
        if not force and now - self._reconciled_at < interval:
            return
        self._reconciled_at = now
        for name, pid, incarnation in _counts.scan(folder):
            key = (pid, incarnation)
            process = self._processes.get(key)
            if process is not None and process.state == "connected":
                continue  # alive, or its last bytes are still to be read
            try:
                counts = _counts.read(folder, name)
            except OSError as exc:  # says nothing about the file: read it again on the next pass
                banner(f"could not read the count file {name}: {exc}")
                continue
            if counts is None:  # not (yet) a finished count file of ours: nothing in it can be used
                if not _counts.alive(pid, 0):
                    _counts.remove(folder, name)
                continue
            if _counts.alive(pid, counts.start):
                continue
            self._settle(key, process, counts)
            _counts.remove(folder, name)  # after: a file gone means its process is settled in stats()

    def _settle(self, key: tuple[int, bytes], process: _Process | None, counts: _counts.Counts) -> None:
        if process is None:
            if not (counts.accepted or counts.dropped):
                return  # it made no record: nothing to account for
            with self._stats_lock:  # a process this listener never heard from (killed early)
                process = self._processes[key] = _Process(counts.pid, counts.name, counts.ppid, key)
            process.state = "vanished"
        before = (process.stamped, process.dropped)
        process.stamped = max(process.stamped, counts.accepted)
        process.dropped = max(process.dropped, counts.dropped)
        process.reconciled = True
        process.last_seen = time.time()
        if process.state != "exited" or (process.stamped, process.dropped) != before:
            flushed = process.checkpoint == (counts.accepted, counts.dropped)
            process.state = "exited" if flushed and process.lost == 0 else "vanished"
            self._report_end(process)
        process.ended = process.state
        self._finish(process)

    def _finish(self, process: _Process) -> None:
        """Keep *process* listed among the most recent finished ones; fold the oldest into totals."""
        finished = self._finished
        finished.append(process)
        while len(finished) > self.max_finished_processes:
            old = finished.popleft()
            if old.state == "connected" or old.key is None or self._processes.get(old.key) is not old:
                continue  # it came back (or was folded already): not finished after all
            with self._stats_lock:
                del self._processes[old.key]
                folded = self._folded
                folded["processes"] += 1
                folded["received"] += old.received
                folded["dropped"] += old.dropped
                folded["lost"] += old.lost
                folded["truncated"] += old.truncated

    def _report_drops(self, process: _Process) -> None:
        new = process.dropped - process.warned_dropped
        process.warned_dropped = process.dropped
        process.warned_at = time.monotonic()
        self._emit_local(
            logging.WARNING,
            "process %d (%s) dropped %d log records (worker buffer full); %d in all",
            process.pid, process.name, new, process.dropped,
        )  # fmt: skip

    def _report_end(self, process: _Process) -> None:
        if process.dropped > process.warned_dropped:
            self._report_drops(process)
        lost = process.lost
        if lost:
            how = "vanished" if process.state == "vanished" else "exited"
            self._emit_local(
                logging.WARNING,
                "process %d (%s) %s with %d log records lost",
                process.pid, process.name, how, lost,
            )  # fmt: skip


#: Record attributes that handlers and formatters use as numbers or text, with the types they must
#: have when present; levelno and name must be present.
_RECORD_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("msg", (str,)),
    ("levelname", (str,)),
    ("created", (float,)),
    ("msecs", (float,)),
    ("relativeCreated", (float,)),
    ("lineno", (int,)),
    ("process", (int, type(None))),
    ("thread", (int, type(None))),
    ("exc_text", (str, type(None))),
    ("stack_info", (str, type(None))),
)
_ABSENT = object()
_KEYS = ("levelno", "name", *(key for key, _ in _RECORD_TYPES))
_FIELDS = operator.itemgetter(*_KEYS)
#: Tuples of the types of _KEYS' values already found valid (a few per run: records from one
#: program have the same shapes), so that checking a record costs one C-level fetch and a lookup.
_VALID_SHAPES: set[tuple[type, ...]] = set()
_MAX_SHAPES = 4096


def _check_record(state: dict[str, Any]) -> None:
    """The full check of one record's attribute types (the slow path, for a shape not seen yet)."""
    level = state.get("levelno")
    if type(level) is not int or type(state.get("name")) is not str:
        raise ProtocolError("malformed batch: a record is not an attribute dict")
    for key, kinds in _RECORD_TYPES:
        value = state.get(key, _ABSENT)
        if value is not _ABSENT and type(value) not in kinds:
            raise ProtocolError(
                f"malformed batch: record attribute {key} is {type(value).__name__}, "
                f"expected {' or '.join(kind.__name__ for kind in kinds)}"
            )


def _check_batch(
    levels: list[int], lines: list[list[Any]], records: list[dict[str, Any]] | None, formats: int
) -> int:
    """Check what the schema cannot: that the lists match each other and the plan, and the types of
    the record attributes that are used as numbers; return the batch's record count."""
    count = len(levels)
    if len(lines) != formats:
        raise ProtocolError(f"malformed batch: expected {formats} lists of lines")
    for chunk in lines:
        if len(chunk) != count:
            raise ProtocolError("malformed batch: a list of lines does not match the levels")
    if records is not None:
        if len(records) != count:
            raise ProtocolError("malformed batch: records do not match the levels")
        shapes = _VALID_SHAPES
        for state in records:
            try:
                values = _FIELDS(state)
            except KeyError:  # a record without some of the fields (a Python without taskName...)
                _check_record(state)
            else:
                shape = tuple(map(type, values))
                if shape not in shapes:
                    _check_record(state)
                    if len(shapes) < _MAX_SHAPES:
                        shapes.add(shape)
            level = state["levelno"]
            if not 0 <= level < 2**31:
                raise ProtocolError("malformed batch: a record is not an attribute dict")
    return count
