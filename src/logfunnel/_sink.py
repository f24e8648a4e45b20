"""A worker process's side of the transport: its buffer, its sender thread and its connection.

The caller appends to a bounded buffer without a lock; a sender thread of the process takes what has
gathered as one batch, has it rendered and encoded (``_frames_out``), ships it over the process's own
connection, and reads the listener's acknowledgements. Everything here is rebuilt in a fork child.
``_queue_sink.QueueSink`` is the plain alternative for people who hand in a ``multiprocessing`` queue.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import _counts, _frames_out, _wire
from ._handling import banner
from ._transport import HANDSHAKE_TIMEOUT, QueueHandle, connect

__all__ = ["SocketSink", "sinks"]

_BATCH_BYTES = 4 * 1024 * 1024
_RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
#: The largest message a worker takes from its listener: acknowledgements are a few bytes, LEVELS
#: lists the loggers with a level of their own.
_LISTENER_MESSAGE_LIMIT = 4 * 1024 * 1024
_INSTALL_CONNECT_TIMEOUT = 2.0  # a listener busier than this at install is joined by the sender later
_ACCEPTED, _DROPPED = _counts.ACCEPTED, _counts.DROPPED  # the hot path reads one global each


class SocketSink:
    """Buffer, sender thread and connection of one process; rebuilt in a child after ``fork``."""

    def __init__(
        self,
        handle: QueueHandle,
        handler: Any,
        on_start: Callable[[], None],
        on_plan: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.handle = handle
        self._on_start = on_start  # the worker's exit hooks, registered once this process sends
        self._on_plan = on_plan  # applies the levels the listener asks for
        self._handler = weakref.ref(handler)
        self._capacity = handler.capacity
        self._block = handler.on_full == "block"
        self._block_timeout = handler.block_timeout
        self._reset()
        sinks.add(self)

    def _reset(self, count_file: bool = True) -> None:
        # Called in __init__ and in a child after fork: nothing inherited from the parent survives,
        # neither its records (the parent still owns them) nor its locks, thread or connection.
        self._pid = os.getpid()
        self._lock = threading.RLock()  # re-entrant: a SIGTERM handler may flush mid-append
        self._work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        # Callers append without a lock (deque.append is atomic); the sender takes under _lock.
        self._buffer: collections.deque[logging.LogRecord] = collections.deque()
        self._taken = 0  # records the sender has taken; the last one's sequence number
        self._handed = 0  # records the sender has finished with (shipped, or failed to)
        self._dropped = 0  # records refused because the buffer was full
        self._lost = 0  # records known never to have reached a listener
        self._truncated = 0  # records cut down to fit a frame (issue 8)
        self._sent = 0  # the last sequence number handed to the current connection
        self._acked = 0  # the last one the current connection's listener has handled
        self._acks = bytearray()
        self._levels_update: dict[str, Any] | None = None  # LEVELS the listener sent, not applied yet
        self._sender: threading.Thread | None = None
        self._idle = False
        self._stalled = False  # a wait for room timed out, and no room has been made since
        self._unreachable = False  # the last attempt to connect failed
        self._closing = False
        self._sock: Any = None
        self._renderers: list[logging.Formatter | None] = []
        self._full = self._plan_full = True
        self._incarnation = os.urandom(8)
        self._hooked = False
        # One writer at a time: the sender, a checkpoint, or the goodbye. Re-entrant, because a SIGTERM
        # handler may run in a thread that is in the middle of a write; _in_send keeps that handler
        # from writing into the middle of the frame being written (see _send).
        self._send_lock = threading.RLock()
        self._in_send = False
        self._counted = self._count_file() if count_file else None
        # The counts the listener reads if this process dies hard: accepted and dropped records.
        self._slots = (
            self._counted.slots if self._counted is not None else memoryview(bytearray(64)).cast("Q")
        )

    def _count_file(self) -> _counts.CountFile | None:
        # Made here, at install (or in a fork child, before its first record), so that a process
        # killed before its first batch is still known to the listener (DESIGN rule 10).
        folder = self.handle.counts
        if folder is None:
            return None
        try:
            name = multiprocessing.current_process().name
            return _counts.CountFile(folder, self._pid, self._incarnation, name, os.getppid())
        except Exception as exc:
            banner(
                f"cannot keep a count file in {folder} ({exc!r}); "
                "a hard exit of this process may go uncounted"
            )
            return None

    def after_fork_in_child(self) -> None:
        sock = self._sock
        inherited = self._counted
        # A sink whose handler the parent closed (a dictConfig that replaced its funnel, whose
        # listener may be gone with its folder) is not this child's: no count file for it.
        handler = self._handler()
        self._reset(count_file=handler is not None and not getattr(handler, "_closed", False))
        if inherited is not None:
            inherited.release()  # the parent's file: what this child accepts is not the parent's
        if sock is not None:
            try:  # close our copy of the parent's descriptor, or its listener never sees EOF
                sock.close()
            except OSError:
                pass

    # -- the caller's side -------------------------------------------------------------------------

    def put(self, record: logging.LogRecord, wait: bool) -> None:
        # The hot path: no lock, one append. The sender publishes _idle before it re-checks the
        # buffer and sleeps, so a caller that sees it busy can rely on it to find the record.
        # Counted before it is appended, so that the sender can never ship a record not yet counted:
        # a kill between the two costs one record counted and lost, never one delivered uncounted.
        # Under the GIL, `slots[i] += 1` has no call or backward jump in it, so no other thread runs
        # between its read and its write.
        buffer = self._buffer
        if len(buffer) < self._capacity:
            self._slots[_ACCEPTED] += 1
            buffer.append(record)
        else:
            with self._lock:
                if len(buffer) >= self._capacity and not self._wait_for_space():
                    self._dropped += 1
                    self._slots[_DROPPED] += 1
                    return
                self._slots[_ACCEPTED] += 1
                buffer.append(record)
        if self._idle or self._sender is None:
            with self._lock:
                if self._sender is None:
                    self._start_sender()
                elif self._idle:
                    self._work.notify()
        # With no listener to reach, waiting cannot help. A stalled one costs one timeout, not one per
        # ERROR record: later flushes wait again once the sender has made progress (it has taken
        # another batch: _ship_some clears _stalled).
        if wait and not self._stalled and not self._unreachable and not self.flush(self._block_timeout):
            self._stalled = True

    @property
    def _stamped(self) -> int:
        """Records accepted so far (exact under _lock): taken by the sender, or still buffered."""
        return self._taken + len(self._buffer)

    def _wait_for_space(self) -> bool:
        # Wait once for room; if none came, drop without waiting until the sender makes room again,
        # so a dead or stalled listener costs a worker one timeout, not one per record.
        if not self._block or self._stalled:
            return False
        if self._sender is None:
            self._start_sender()
        deadline = time.monotonic() + self._block_timeout
        while len(self._buffer) >= self._capacity:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._pid != os.getpid():
                self._stalled = True
                return False
            self._progress.wait(remaining)
        return True

    def _start_sender(self) -> None:
        if not self._hooked:
            self._on_start()
            self._hooked = True
        self._closing = False
        thread = threading.Thread(target=self._run, name="logfunnel-sender", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: no new threads; the exit hook ships inline
            return
        self._sender = thread

    def connect_now(self) -> bool:
        """Open the connection from the calling thread (once, at install), so that the listener's
        levels apply before the first record is made and a wrong address is reported at once."""
        with self._lock:
            if self._sock is None and self._pid == os.getpid():
                self._connect(_INSTALL_CONNECT_TIMEOUT)
            if self._sock is not None and self._sender is None and self._on_plan is not None:
                # The sender also reads what the listener says while this process is idle: a level
                # lowered there reaches a worker that has logged nothing yet (LEVELS).
                self._start_sender()
            return self._sock is not None

    def flush(self, timeout: float | None) -> bool:
        """Wait until every record accepted so far has been handed to the socket; False on timeout."""
        if self._pid != os.getpid():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._stamped
            if self._sender is None and self._handed < target:
                self._ship_inline()
                if self._handed < target:
                    return False  # no thread to wait for, and no listener to reach
            while self._handed < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def checkpoint(self, timeout: float | None) -> bool:
        """Tell the listener this process's totals (after a complete flush), so that a process that
        leaves through ``os._exit`` right after is known to have lost nothing; False if it could not."""
        if self._pid != os.getpid():
            return True
        with self._lock:  # before the send lock: _say_goodbye takes them in this order
            totals = (_wire.CHECKPOINT, self._stamped, self._dropped, self._lost)
        if not self._send_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        try:
            return self._send(_wire.frame(_wire.encode(totals)))
        except OSError:
            return False
        finally:
            self._send_lock.release()

    def _send(self, data: bytes, then_close: bool = False) -> bool:
        """Write *data* whole on the connection, one writer at a time; False if there is none, or if
        this thread is already writing (a signal handler that interrupted our own write must not
        put its bytes into the middle of that frame). Raises OSError as ``sendall`` does."""
        with self._send_lock:
            if self._in_send or self._sock is None:
                return False
            self._in_send = True
            try:
                self._sock.sendall(data)
                if then_close:
                    self._sock.close()
            finally:
                self._in_send = False
        return True

    def close(self, timeout: float | None) -> None:
        """Ship what is buffered, tell the listener this process is done (with its totals), hang up.

        The sender thread leaves once its buffer is empty and the goodbye is sent, so waiting for it
        is the flush; records logged afterwards start a new sender and connection.
        """
        if self._pid != os.getpid():
            return
        with self._lock:
            sender = self._sender
            self._closing = True
            self._work.notify()
            if sender is None:
                self._ship_inline()
                self._say_goodbye()
        if sender is not None:
            sender.join(timeout)
        pending = len(self._buffer)
        if pending:
            banner(f"{pending} log records could not be sent to {self.handle.address} in time")

    # -- the sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        delays = iter(_RECONNECT_DELAYS)
        while True:
            with self._lock:
                while not self._buffer:
                    if self._closing:
                        self._say_goodbye()
                        self._sender = None
                        self._progress.notify_all()
                        return
                    self._idle = True
                    if not self._buffer:  # a caller may have appended before it saw _idle
                        self._work.wait(1.0)
                    self._idle = False
                    if not self._buffer and self._sock is not None and self._on_plan is not None:
                        break  # idle: read what the listener said (outside the lock), then wait again
            if not self._buffer:
                self._read_acks()
                self._take_levels()
                continue
            if self._sock is None and not self._connect():
                with self._lock:
                    if self._closing:  # exiting with no listener to reach: give up at once
                        self._give_up()
                        return
                    self._work.wait(next(delays, _RECONNECT_DELAYS[-1]))
                continue
            delays = iter(_RECONNECT_DELAYS)
            self._ship_some()

    def _give_up(self) -> None:
        pending = len(self._buffer)
        self._buffer.clear()
        self._lost += pending
        self._taken += pending
        self._handed += pending
        self._sender = None
        self._progress.notify_all()

    def _ship_inline(self) -> None:
        # For when no thread can be started (interpreter shutdown): the caller ships itself.
        while self._buffer and (self._sock is not None or self._connect()):
            self._ship_some()

    def _ship_some(self) -> None:
        with self._lock:
            batch = _take(self._buffer)
            first = self._taken + 1
            self._taken += len(batch)
            stamped, dropped = self._stamped, self._dropped
            self._stalled = False
            self._progress.notify_all()  # room in the buffer for blocked callers
        if self._sock is not None:
            self._read_acks()  # whether to send whole records: as fresh as the listener said it
            self._take_levels()
        try:
            frames = self._encode(batch, first, stamped, dropped)
        except Exception as exc:  # the sender thread must survive anything a record holds
            banner(f"{len(batch)} log records could not be encoded; sending placeholders: {exc!r}")
            frames = self._encode([_frames_out.placeholder(r, exc) for r in batch], first, stamped, dropped)
        self._read_acks()
        self._sent = first + len(batch) - 1
        failed: Exception | str | None = None
        try:
            if not self._send(b"".join(frames) if len(frames) > 1 else frames[0]):
                failed = "interrupted by a signal handler in the middle of a write"
        except OSError as exc:
            failed = exc
        if failed is not None:
            self._hang_up(f"lost the connection to {self.handle.address} ({failed})")
        with self._lock:
            self._handed += len(batch)
            self._progress.notify_all()

    def _take_levels(self) -> None:
        """Apply the levels the listener last sent, if it sent new ones (on the sender's thread, with
        no lock of ours held: setting a level takes logging's own lock)."""
        update, self._levels_update = self._levels_update, None
        if update is not None and self._on_plan is not None:
            try:
                self._on_plan(update)
            except Exception as exc:
                banner(f"could not apply the log listener's new levels: {exc!r}")

    def _read_acks(self) -> None:
        """Take in the listener's acknowledgements without waiting (the listener never waits either)."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except OSError:  # nothing to read yet, or a broken connection that the next send reports
                break
            if not data:
                break
            self._acks += data
        acks, offset = self._acks, 0
        while len(acks) - offset >= _wire.HEADER.size:
            (size,) = _wire.HEADER.unpack_from(acks, offset)
            end = offset + _wire.HEADER.size + size
            if size > _LISTENER_MESSAGE_LIMIT:  # not the listener's: ignore the rest rather than trust it
                acks.clear()
                return
            if len(acks) < end:
                break
            try:
                message = _wire.decode(bytes(acks[offset + _wire.HEADER.size : end]))
            except _wire.FrameError:
                message = None
            offset = end
            if (
                type(message) is tuple
                and len(message) == 3
                and message[0] == _wire.LEVELS
                and type(message[1]) is dict
                and type(message[2]) is list
            ):
                self._levels_update = {"levels": message[1], "disabled": message[2]}
                continue
            if (
                type(message) is tuple
                and len(message) in (2, 3)
                and message[0] == _wire.ACK
                and type(message[1]) is int
            ):
                self._acked = max(self._acked, message[1])
                if len(message) == 3 and type(message[2]) is bool:
                    # The listener's lanes that need whole records are saturated (False), or have
                    # room again (True): send lines alone meanwhile (Dispatcher.wants_records);
                    # or a `logfunnel tail` follows a listener whose handlers need only lines (True).
                    self._full = message[2]
        del acks[:offset]

    def _connect(self, timeout: float | None = None) -> bool:
        hello = (os.getpid(), multiprocessing.current_process().name, self._incarnation, os.getppid())
        try:
            sock, plan = connect(self.handle, hello, timeout or HANDSHAKE_TIMEOUT)
            self._renderers = [_frames_out.renderer(spec) for spec in plan["formats"]]
            self._full = self._plan_full = bool(plan["full"])
        except Exception as exc:
            if timeout is not None and isinstance(exc, TimeoutError):
                return False  # a busy listener, not a wrong address: the sender tries again later
            if not self._unreachable:
                banner(
                    f"cannot reach the log listener at {self.handle.address}: {exc}; records wait in "
                    f"this process's buffer (at most {self._capacity}) and are sent once it answers"
                )
                self._unreachable = True
            return False
        if self._on_plan is not None:
            try:
                self._on_plan(plan)
            except Exception as exc:
                banner(f"could not apply the log listener's levels: {exc!r}")
        self._unreachable = False
        self._sock = sock
        self._acks = bytearray()
        self._sent = self._acked = self._taken  # earlier records belong to earlier connections
        return True

    def _hang_up(self, why: str) -> None:
        # What this connection was given and its listener never acknowledged is lost; say how much
        # to whichever listener comes next.
        self._read_acks()
        unacknowledged = max(0, self._sent - self._acked)
        self._lost += unacknowledged
        banner(f"{why}; {unacknowledged} records sent but never acknowledged")
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    def _say_goodbye(self) -> None:
        if self._sock is None:
            return
        try:
            goodbye = (_wire.BYE, self._stamped, self._dropped, self._lost, self._truncated)
            if not self._send(_wire.frame(_wire.encode(goodbye)), then_close=True):
                return  # this thread is mid-write below us: the process's count file tells the rest
        except OSError:
            pass
        self._sock = None

    def _encode(self, batch: list[logging.LogRecord], first: int, stamped: int, dropped: int) -> list[bytes]:
        """Encode *batch* as frames of at most ``MAX_FRAME`` bytes (see ``_frames_out``), counting in
        ``truncated`` the records cut down to fit."""
        outgoing = _frames_out.OutgoingBatch(batch, self._renderers, self._full, self._handler)
        cut = outgoing.cut
        if cut:
            self._truncated += len(cut)
            banner(
                f"{len(cut)} log records held a text longer than {_wire.MAX_TEXT} characters, which exceeds "
                "the frame limit; the text was truncated (counted in the listener's stats as 'truncated')"
            )
        return outgoing.frames(first, stamped, dropped, self._lost, self._truncated)


def _take(buffer: collections.deque[logging.LogRecord]) -> list[logging.LogRecord]:
    """Remove and return the front of *buffer*, about ``_BATCH_BYTES`` of messages at most."""
    batch: list[logging.LogRecord] = []
    size = 0
    popleft = buffer.popleft
    while buffer and size < _BATCH_BYTES and len(batch) < _wire.MAX_RECORDS:
        record = popleft()
        batch.append(record)
        size += len(record.message) + 200
    return batch


sinks: weakref.WeakSet[SocketSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sink in list(sinks):
        sink.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
