"""The listener's accounting per worker process: what each one sent, dropped and lost.

A ``_Process`` is one worker process (one pid, from one fork). ``ProcessAccounting``, a mixin of
``LogListener`` through ``SocketServing``, keeps it up to date from the messages an authenticated
worker sends (``_on_message``: batches, checkpoints and goodbyes, each checked before use by
``_check_batch``), settles it exactly from its count file once the process is gone (``_reconcile``,
``_settle``: DESIGN rule 10), keeps a bounded table of finished processes (``_finish``) and reports
every drop and loss through the listener's ``_emit_local``. Sockets are ``_serving``'s business.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _control, _counts, _wire
from ._handling import banner

if TYPE_CHECKING:
    from ._serving import _Connection

__all__ = ["ProcessAccounting", "ProtocolError"]

_WARN_INTERVAL = 5.0
_RECONCILE_INTERVAL = 0.5  # how often the count files of dead processes are looked for
_SETTLE_POLL = 0.05  # ... and how often just after a connection ended without a goodbye
_SETTLE_WINDOW = 2.0  # for how long after that (a killed process is gone within it, mostly)


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


class ProcessAccounting:
    """The per-process accounting of a ``LogListener`` (a mixin: the listener provides what it declares)."""

    _processes: dict[tuple[int, bytes], _Process]
    _stats_lock: threading.Lock
    _plan: dict[str, Any]
    _counts_dir: str | None
    _finished: deque[_Process]
    _folded: dict[str, int]
    _reconciled_at: float
    max_finished_processes: int
    _dispatch: Callable[[list[int], list[list[str | None]], list[dict[str, Any]] | None], None]
    _emit_local: Callable[..., None]
    _settle_until = 0.0  # until then, count files are looked for every _SETTLE_POLL (a vanished process)
    _control_hub: _control.ControlHub | None = None  # the stats and tail clients (see _control)

    # -- what an authenticated worker says -------------------------------------------------------

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
