"""The listener side: ``LogListener`` and ``start_listener``.

One thread serves every worker connection through a selector: it authenticates each peer, reads
frames, decodes them with an unpickler that refuses every global, keeps per-process accounting and
hands the records to the handlers. Plain ``StreamHandler``/``FileHandler`` objects with a plain
``Formatter`` get the lines the workers already rendered, written batch by batch; every other handler
gets whole ``LogRecord`` objects, as from the standard library's ``QueueListener``.

Given a ``multiprocessing`` queue instead, a ``LogListener`` reads it like ``QueueListener`` does.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import logging.handlers
import os
import selectors
import shutil
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterable
from typing import Any

from . import _wire, worker
from ._handling import banner
from ._transport import (
    CHALLENGE_SIZE,
    DIGEST_SIZE,
    GREETING,
    HANDSHAKE_TIMEOUT,
    QueueHandle,
    answer,
    create_server,
    publish,
    withdraw,
)

__all__ = ["LogListener", "start_listener"]

_READ_SIZE = 1 << 20
_HANDSHAKE_LIMIT = 64 * 1024
_WARN_INTERVAL = 5.0
_FAST_TYPES = (logging.StreamHandler, logging.FileHandler)


class ProtocolError(Exception):
    """A peer broke the protocol; its connection is closed, nobody else is affected."""


class _Process:
    """The accounting for one worker process (one pid, from one fork)."""

    __slots__ = (
        "acked", "base", "dropped", "first_seen", "last_seen", "lost_at_base", "name", "next_seq", "pid",
        "ppid", "received", "reported_lost", "stamped", "state", "warned_at", "warned_dropped",
    )  # fmt: skip

    def __init__(self, pid: int, name: str, ppid: int) -> None:
        self.pid, self.name, self.ppid = pid, name, ppid
        self.base = 0  # sequence numbers up to base went to an earlier listener (or connection)
        self.next_seq: int | None = None
        self.acked = 0
        self.received = self.stamped = self.dropped = self.warned_dropped = 0
        self.reported_lost = self.lost_at_base = 0
        self.state = "connected"
        self.first_seen = self.last_seen = time.time()
        self.warned_at = 0.0

    @property
    def lost(self) -> int:
        # The worker knows what it sent that no listener acknowledged, and says so. What it never
        # got to say (it vanished) is what it had accepted past our base and we never received.
        if self.state != "vanished":
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
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


class _Connection:
    __slots__ = ("buffer", "challenge", "deadline", "process", "sock", "unsent")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.challenge = os.urandom(CHALLENGE_SIZE)
        self.deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        self.process: _Process | None = None
        self.unsent = b""  # the tail of an acknowledgement the worker had no room for yet


def _new_record(state: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__ = state
    return record


class _RenderedRecord(logging.LogRecord):
    """A record that also carries the lines its worker rendered, kept outside ``__dict__`` so that
    formatters which dump a record's attributes never see them."""

    __slots__ = ("rendered",)


class _Prerendered:
    """Stands in for a handler's plain ``Formatter`` while a listener runs: returns the line the
    worker rendered with an identical formatter, or formats as the original would."""

    def __init__(self, formatter: logging.Formatter | None, index: int) -> None:
        self.original = formatter
        self.index = index

    def format(self, record: logging.LogRecord) -> str:
        rendered = getattr(record, "rendered", None)
        if rendered is not None:
            columns, position = rendered
            line = columns[self.index][position]
            if line is not None:
                return line  # type: ignore[no-any-return]
        return (self.original or _wire.DEFAULT_FORMATTER).format(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original or _wire.DEFAULT_FORMATTER, name)


def _failure_record(text: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": text, "args": None, "name": "logfunnel"})


class LogListener(logging.handlers.QueueListener):
    """Receive the records of many processes and hand them to *handlers* in this process.

    With *queue* None (the usual case) it listens on a fresh Unix socket (mode 0600) or on *address*
    (``unix:/path`` or ``tcp://127.0.0.1:PORT``) and ``.queue`` is the picklable handle to give to
    workers. Given a ``multiprocessing`` queue it reads that queue instead, like ``QueueListener``.
    With no handlers, each record goes through this process's own logging configuration
    (``logging.getLogger(record.name).handle(record)``). Records below *level* are skipped;
    ``respect_handler_level`` defaults to True here, unlike in the standard library.
    """

    _sentinel = None  # what enqueue_sentinel() puts on a multiprocessing queue, as in QueueListener

    def __init__(
        self,
        queue: Any = None,
        *handlers: logging.Handler,
        respect_handler_level: bool = True,
        level: int | str = logging.NOTSET,
        address: str | None = None,
        max_frame: int = _wire.MAX_FRAME,
        authkey: bytes | None = None,
    ) -> None:
        if isinstance(queue, str):
            queue, address = None, queue
        super().__init__(queue, *handlers, respect_handler_level=respect_handler_level)
        self.level: int = logging._checkLevel(level)  # type: ignore[attr-defined]  # noqa: SLF001
        self.max_frame = max_frame
        self.address: str | None = None
        self._server: socket.socket | None = None
        self._private_dir: str | None = None
        self._authkey = authkey or os.urandom(32)
        self.queue: Any
        if queue is None:
            self._server, self.address, self._private_dir = create_server(address)
            self.queue = QueueHandle(self.address, self._authkey)
        self._state = "new"
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._processes: dict[tuple[int, bytes], _Process] = {}
        self._connections: dict[int, _Connection] = {}
        self._queue_processes: dict[int, _Process] = {}
        self._stats_lock = threading.Lock()
        self._rejected = 0
        self._saved_env: tuple[str | None, str | None] | None = None
        self._fast: list[tuple[logging.Handler, int]] = []
        self._slow: list[logging.Handler] = []
        self._wrapped: list[tuple[logging.Handler, _Prerendered]] = []
        self._plan: dict[str, Any] = {"formats": [], "full": True, "level": self.level}

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> LogListener:  # type: ignore[override]
        """Start the listening thread; publish ``LOGFUNNEL_ADDRESS`` for child processes."""
        if self._state != "new":
            raise RuntimeError(f"this LogListener was already started (it is {self._state})")
        self._plan_dispatch()
        self._state = "running"
        target = self._serve if self._server is not None else self._monitor
        self._thread = threading.Thread(target=target, name="logfunnel-listener", daemon=True)
        self._thread.start()
        if self._server is not None:
            self._saved_env = publish(self.queue)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Handle everything already sent (by live and exited workers), then stop. Safe to repeat."""
        if self._state in ("stopped", "stopping"):
            return
        started = self._state == "running"
        self._state = "stopping"
        if started:
            if self._server is not None:
                self._stopping = True
                self._wake()
            else:
                self.enqueue_sentinel()
            thread = self._thread
            if thread is not None:
                thread.join(timeout)
                if thread.is_alive():
                    banner(f"the log listener did not finish draining within {timeout} s")
            self._thread = None
        self._unwrap()
        self._close_server()
        self._state = "stopped"

    def __enter__(self) -> LogListener:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            if self._private_dir:
                shutil.rmtree(self._private_dir, ignore_errors=True)
            elif self.address and self.address.startswith("unix:"):
                try:
                    os.unlink(self.address[len("unix:") :])
                except OSError:
                    pass
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        withdraw(self.address, self._saved_env)
        self._saved_env = None

    # -- statistics --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Totals and per-process figures: received, dropped (full buffers), lost (never arrived).

        Each process also has its ``state``: ``connected``, ``exited`` (said goodbye) or
        ``vanished`` (its connection ended without a goodbye: killed, or crashed).
        """
        with self._stats_lock:
            processes = [p.as_dict() for p in [*self._processes.values(), *self._queue_processes.values()]]
        return {
            "received": sum(p["received"] for p in processes),
            "dropped": sum(p["dropped"] for p in processes),
            "lost": sum(p["lost"] for p in processes),
            "rejected": self._rejected,
            "processes": processes,
        }

    def backlog_bytes(self) -> int:
        """Bytes received but not yet handled (parts of frames still arriving)."""
        return sum(len(conn.buffer) for conn in list(self._connections.values()))

    # -- dispatch ----------------------------------------------------------------------------------

    def _seams_overridden(self) -> bool:
        kind = type(self)
        return kind.handle is not LogListener.handle or kind.prepare is not LogListener.prepare

    def _plan_dispatch(self) -> None:
        # Decide, once, what the workers render (see _wire.Renderer). A plain Stream/FileHandler
        # gets whole batches of rendered lines; another handler with a plain Formatter gets records
        # whose formatting is already done; the rest get records, as from QueueListener.
        plain = bool(self.handlers) and not self._seams_overridden()
        specs: list[_wire.Spec] = []
        self._fast, self._slow, self._wrapped = [], [], []
        for handler in self.handlers:
            spec = _wire.formatter_spec(handler.formatter) if plain else None
            index = -1
            if spec is not None:
                if spec not in specs:
                    specs.append(spec)
                index = specs.index(spec)
            if index >= 0 and type(handler) in _FAST_TYPES and not handler.filters:
                self._fast.append((handler, index))
                continue
            self._slow.append(handler)
            if index >= 0:
                stand_in = _Prerendered(handler.formatter, index)
                handler.formatter = stand_in  # type: ignore[assignment]
                self._wrapped.append((handler, stand_in))
        self._plan = {"formats": specs, "full": not plain or bool(self._slow), "level": self.level}

    def _unwrap(self) -> None:
        for handler, stand_in in self._wrapped:
            if handler.formatter is stand_in:  # type: ignore[comparison-overlap]
                handler.formatter = stand_in.original
        self._wrapped = []

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Return the record to give the handlers; override to change records on the way in."""
        return record

    def handle(self, record: logging.LogRecord) -> None:
        """Offer a record (after ``prepare``) to every handler, or to its logger if there are none."""
        record = self.prepare(record)
        self._deliver(record, self.handlers)

    def _deliver(self, record: logging.LogRecord, handlers: Iterable[logging.Handler]) -> None:
        if record.levelno < self.level:
            return
        if not self.handlers:
            logging.getLogger(record.name).handle(record)  # the worker's logger already chose the level
            return
        respect = self.respect_handler_level
        for handler in handlers:
            if not respect or record.levelno >= handler.level:
                handler.handle(record)

    def _emit_local(self, level: int, message: str, *args: object) -> None:
        """A record of the listener's own (a loss report) through the same handlers."""
        record = logging.LogRecord("logfunnel", level, __file__, 0, message, args, None, "listener")
        try:
            if self._seams_overridden():
                self.handle(record)
            else:
                self._deliver(record, self.handlers)
        except Exception as exc:
            banner(f"could not report {record.getMessage()!r}: {exc!r}")

    def _dispatch(
        self, levels: list[int], lines: list[list[str | None]], records: list[dict[str, Any]] | None
    ) -> None:
        for handler, index in self._fast:
            threshold = max(self.level, handler.level if self.respect_handler_level else 0)
            chosen = lines[index]
            if threshold > min(levels):
                chosen = [line for line, level in zip(chosen, levels) if level >= threshold]
            if None in chosen:
                chosen = [line for line in chosen if line is not None]
            if chosen:
                self._write_lines(handler, chosen)  # type: ignore[arg-type]
        if records is None:
            return
        seams = self._seams_overridden()
        if not seams and not self._slow and self.handlers:
            return
        record: logging.LogRecord
        for position, state in enumerate(records):
            if self._wrapped:
                rendered = _RenderedRecord.__new__(_RenderedRecord)
                rendered.__dict__ = state
                rendered.rendered = (lines, position)
                record = rendered
            else:
                record = _new_record(state)
            if seams:
                self.handle(record)
            else:
                self._deliver(record, self._slow)

    @staticmethod
    def _write_lines(handler: logging.Handler, lines: list[str]) -> None:
        # What StreamHandler.emit does for each record, once for the whole batch.
        terminator = handler.terminator  # type: ignore[attr-defined]
        handler.acquire()
        try:
            stream = handler.stream  # type: ignore[attr-defined]
            if (
                stream is None
                and isinstance(handler, logging.FileHandler)
                and (handler.mode != "w" or not getattr(handler, "_closed", False))  # as FileHandler.emit
            ):
                stream = handler.stream = handler._open()  # noqa: SLF001
            if stream is None:
                return
            try:
                stream.write(terminator.join(lines) + terminator)
            except UnicodeError:  # one line the stream cannot encode must not cost the others
                for line in lines:
                    try:
                        stream.write(line + terminator)
                    except Exception:
                        handler.handleError(_failure_record(line))
            handler.flush()
        except Exception:
            handler.handleError(_failure_record(f"a batch of {len(lines)} lines"))
        finally:
            handler.release()

    # -- the socket read loop ----------------------------------------------------------------------

    def _serve(self) -> None:
        worker.listener_threads.add(threading.get_ident())
        selector = selectors.DefaultSelector()
        connections: dict[int, _Connection] = {}
        self._connections = connections
        assert self._server is not None
        self._server.setblocking(False)
        self._wake_r.setblocking(False)
        selector.register(self._server, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, _ in selector.select(timeout=1.0):
                    if key.data is None:
                        self._accept(selector, connections)
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._read(key.data, selector, connections)
                self._expire(selector, connections)
            self._drain(selector, connections)
        except Exception as exc:  # the listener must never die silently
            banner(f"the log listener failed: {exc!r}")
            raise
        finally:
            for conn in list(connections.values()):  # workers still alive: nothing about them is final
                self._close(conn, selector, connections, reason=None, shutting_down=True)
            selector.close()
            worker.listener_threads.discard(threading.get_ident())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
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
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                banner(f"accept() failed: {exc}")
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

    def _expire(self, selector: selectors.BaseSelector, connections: dict[int, _Connection]) -> None:
        now = time.monotonic()
        for conn in list(connections.values()):
            if conn.process is None and now > conn.deadline:
                self._close(conn, selector, connections, reason=f"no handshake within {HANDSHAKE_TIMEOUT} s")

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
                limit = self.max_frame if conn.process is not None else _HANDSHAKE_LIMIT
                if size > limit:
                    raise ProtocolError(f"a frame of {size} bytes exceeds the limit of {limit} bytes")
                end = offset + _wire.HEADER.size + size
                if len(buffer) < end:
                    break
                payload = bytes(buffer[offset + _wire.HEADER.size : end])
                offset = end
                if conn.process is None:
                    self._authenticate(conn, payload)
                else:
                    self._on_message(conn.process, payload)
        except (ProtocolError, _wire.FrameError) as exc:
            self._close(conn, selector, connections, reason=str(exc))
            return len(data)
        if offset:
            del buffer[:offset]
        process = conn.process
        if process is not None and process.next_seq is not None and process.next_seq - 1 > process.acked:
            self._acknowledge(conn, process)
        return len(data)

    @staticmethod
    def _acknowledge(conn: _Connection, process: _Process) -> None:
        # Everything up to next_seq - 1 is handled. Never wait for a worker to read: while its buffer
        # is full, the rest of a partly sent acknowledgement waits, and newer ones (they are
        # cumulative) are skipped until it has gone.
        try:
            if conn.unsent:
                conn.unsent = conn.unsent[conn.sock.send(conn.unsent) :]
                if conn.unsent:
                    return
            seq = (process.next_seq or 1) - 1
            data = _wire.frame(_wire.encode((_wire.ACK, seq)))
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
        conn.sock.close()
        if reason is not None:
            self._rejected += 1
            who = f"process {conn.process.pid}" if conn.process else "a peer"
            banner(f"closed the connection of {who}: {reason}")
        process = conn.process
        if process is not None and process.state == "connected" and not shutting_down:
            process.state = "vanished"
            self._report_end(process)

    def _authenticate(self, conn: _Connection, payload: bytes) -> None:
        if len(payload) < DIGEST_SIZE + CHALLENGE_SIZE:
            raise ProtocolError("short handshake reply: not a logfunnel worker")
        if not hmac.compare_digest(payload[:DIGEST_SIZE], answer(self._authkey, conn.challenge)):
            raise ProtocolError("authentication failed: the peer does not know the auth key")
        hello = _wire.decode(payload[DIGEST_SIZE + CHALLENGE_SIZE :])
        if not (
            type(hello) is tuple
            and len(hello) == 4
            and type(hello[0]) is int
            and type(hello[1]) is str
            and type(hello[2]) is bytes
            and type(hello[3]) is int
        ):
            raise ProtocolError(f"malformed hello {_wire.safe_repr(hello)[:200]}")
        pid, name, incarnation, ppid = hello
        welcome = _wire.frame(
            answer(self._authkey, payload[DIGEST_SIZE : DIGEST_SIZE + CHALLENGE_SIZE])
            + _wire.encode(self._plan)
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
                process = self._processes[key] = _Process(pid, name, ppid)
        process.name = name
        process.state = "connected"
        conn.process = process

    def _on_message(self, process: _Process, payload: bytes) -> None:
        message = _wire.decode(payload)
        if type(message) is not tuple or not message:
            raise ProtocolError(f"expected a message tuple, got {type(message).__name__}")
        kind = message[0]
        if kind == _wire.BATCH and len(message) == 8:
            _, first, stamped, dropped, lost, levels, lines, records = message
            formats = len(self._plan["formats"])
            count = _check_batch(first, stamped, dropped, lost, levels, lines, records, formats)
            if process.next_seq is None:
                process.base = first - 1
                process.lost_at_base = lost
            elif first < process.next_seq:
                raise ProtocolError(f"sequence number {first} went back (expected {process.next_seq})")
            # A jump forward skips a batch sent on a connection that broke; the worker reports it lost.
            process.next_seq = first + count
            process.received += count
            process.stamped = max(process.stamped, stamped)
            process.dropped = max(process.dropped, dropped)
            process.reported_lost = max(process.reported_lost, lost)
            process.last_seen = time.time()
            if count:
                try:
                    self._dispatch(levels, lines, records)
                except Exception as exc:  # a failing handler must not take the listener down
                    banner(f"handling a batch of {count} records failed: {exc!r}")
            if (
                process.dropped > process.warned_dropped
                and time.monotonic() - process.warned_at > _WARN_INTERVAL
            ):
                self._report_drops(process)
        elif kind == _wire.BYE and len(message) == 4 and all(type(n) is int for n in message[1:]):
            process.stamped = max(process.stamped, message[1])
            process.dropped = max(process.dropped, message[2])
            process.reported_lost = max(process.reported_lost, message[3])
            process.state = "exited"
            process.last_seen = time.time()
            self._report_end(process)
        else:
            raise ProtocolError(f"unknown message {_wire.safe_repr(message)[:200]}")

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

    # -- reading a multiprocessing queue -----------------------------------------------------------

    def _monitor(self) -> None:
        worker.listener_threads.add(threading.get_ident())
        q: Any = self.queue
        has_task_done = hasattr(q, "task_done")
        try:
            while True:
                try:
                    record = self.dequeue(True)
                except (EOFError, OSError) as exc:
                    banner(f"the log queue broke: {exc!r}")
                    return
                if record is self._sentinel:
                    if has_task_done:
                        q.task_done()
                    return
                self._count(record)
                try:
                    self.handle(record)
                except Exception as exc:
                    banner(f"handling a record failed: {exc!r}")
                if has_task_done:
                    q.task_done()
        finally:
            worker.listener_threads.discard(threading.get_ident())

    def _count(self, record: logging.LogRecord) -> None:
        pid = getattr(record, "process", None) or 0
        process = self._queue_processes.get(pid)
        if process is None:
            with self._stats_lock:
                process = self._queue_processes[pid] = _Process(
                    pid, str(getattr(record, "processName", "")), 0
                )
        process.received += 1
        process.last_seen = time.time()


def _check_batch(
    first: Any, stamped: Any, dropped: Any, lost: Any, levels: Any, lines: Any, records: Any, formats: int
) -> int:
    """Check a batch's shape before anything in it is used; return its record count."""
    if not (type(first) is int and first >= 1 and all(type(n) is int for n in (stamped, dropped, lost))):
        raise ProtocolError("malformed batch header")
    if type(levels) is not list or not all(type(level) is int for level in levels):
        raise ProtocolError("malformed batch: levels must be a list of int")
    count = len(levels)
    if type(lines) is not list or len(lines) != formats:
        raise ProtocolError(f"malformed batch: expected {formats} lists of lines")
    for chunk in lines:
        if type(chunk) is not list or len(chunk) != count:
            raise ProtocolError("malformed batch: a list of lines does not match the levels")
    if records is not None:
        if type(records) is not list or len(records) != count:
            raise ProtocolError("malformed batch: records do not match the levels")
        for state in records:
            if (
                type(state) is not dict
                or type(state.get("levelno")) is not int
                or type(state.get("name")) is not str
            ):
                raise ProtocolError("malformed batch: a record is not an attribute dict")
    return count


def start_listener(
    handlers: Iterable[logging.Handler] | None = None,
    *,
    level: int | str = logging.NOTSET,
    respect_handler_level: bool = True,
    address: str | None = None,
) -> LogListener:
    """Start a ``LogListener`` thread in this process and return it.

    Give each worker ``listener.queue`` (or let it find the listener through
    ``LOGFUNNEL_ADDRESS``). With *handlers* None, records go through this process's logging
    configuration, so per-logger routing keeps working.
    """
    listener = LogListener(
        None,
        *(handlers or ()),
        respect_handler_level=respect_handler_level,
        level=level,
        address=address,
    )
    return listener.start()
