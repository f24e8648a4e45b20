"""The listener side: ``LogListener`` and ``start_listener``.

One thread serves every worker connection through a selector: it authenticates each peer, reads
frames, decodes them with an unpickler that refuses every global, keeps per-process accounting and
hands the records to the handlers. Plain ``StreamHandler``/``FileHandler`` objects with a plain
``Formatter`` get the lines the workers already rendered, written batch by batch; every other handler
gets whole ``LogRecord`` objects, as from the standard library's ``QueueListener``.

Given a ``multiprocessing`` queue instead, a ``LogListener`` reads it like ``QueueListener`` does.
"""

from __future__ import annotations

import atexit
import collections
import logging
import logging.handlers
import os
import queue as queue_module
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from . import _counts, _wire, worker
from ._checks import check_address, check_handlers, check_level
from ._handling import banner
from ._serving import SocketServing, _Connection, _Process
from ._transport import (
    QueueHandle,
    Saved,
    create_server,
    publish,
    withdraw,
)
from .handlers._disk import losses_of, write_lines

__all__ = ["LogListener", "start_listener"]

_FAST_TYPES = (logging.StreamHandler, logging.FileHandler)


#: How long a listener left running drains at interpreter exit before it gives up.
EXIT_DRAIN_TIMEOUT = 5.0
_running: weakref.WeakSet[LogListener] = weakref.WeakSet()


def _release(
    server: socket.socket | None, private_dir: str | None, address: str | None, owner: int, counts: str | None
) -> None:
    """Close a listener's server socket and remove its socket file and private folders (once)."""
    if server is None:
        return
    server.close()
    if owner != os.getpid():
        return  # a fork child's copy: the files belong to the parent's listener
    if counts:
        shutil.rmtree(counts, ignore_errors=True)
    if private_dir:
        shutil.rmtree(private_dir, ignore_errors=True)
    elif address and address.startswith("unix:"):
        try:
            os.unlink(address[len("unix:") :])
        except OSError:
            pass


def _stop_running() -> None:
    # A listener started and never stopped still handles what its workers sent before exit.
    for listener in list(_running):
        if listener._owner == os.getpid():  # noqa: SLF001
            listener.stop(timeout=EXIT_DRAIN_TIMEOUT)


atexit.register(_stop_running)


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


class LogListener(SocketServing, logging.handlers.QueueListener):
    """Receive the records of many processes and hand them to *handlers* in this process.

    With *queue* None (the usual case) it listens on a fresh Unix socket (mode 0600) or on *address*
    (``unix:/path`` or ``tcp://127.0.0.1:PORT``) and ``.queue`` is the picklable handle to give to
    workers. A TCP address beyond loopback is refused unless *allow_remote* is True (records and
    the handshake are not encrypted). Given a ``multiprocessing`` queue it reads that queue
    instead, like ``QueueListener``.
    With no handlers, each record goes through this process's own logging configuration
    (``logging.getLogger(record.name).handle(record)``). Records below *level* are skipped;
    ``respect_handler_level`` defaults to True here, unlike in the standard library.
    """

    _sentinel = None  # what enqueue_sentinel() puts on a multiprocessing queue, as in QueueListener
    #: How many finished processes ``stats()`` lists one by one; older ones are folded into its totals.
    max_finished_processes = 1_000

    def __init__(
        self,
        queue: Any = None,
        *handlers: logging.Handler,
        respect_handler_level: bool = True,
        level: int | str = logging.NOTSET,
        address: str | None = None,
        max_frame: int = _wire.MAX_FRAME,
        authkey: bytes | None = None,
        allow_remote: bool = False,
    ) -> None:
        if isinstance(queue, str):
            queue, address = None, queue
        checked = check_handlers(handlers, "LogListener()")
        self.level: int = check_level(level, "LogListener()")
        if queue is None:
            check_address(address, "LogListener()", allow_remote)
        super().__init__(queue, *checked, respect_handler_level=respect_handler_level)
        self.max_frame = max_frame
        self.address: str | None = None
        self._server: socket.socket | None = None
        self._private_dir: str | None = None
        self._authkey = authkey or os.urandom(32)
        self.queue: Any
        self._wake_r: socket.socket | None = None  # made at start: a listener never started holds none
        self._wake_w: socket.socket | None = None
        self._counts_dir: str | None = None
        if queue is None:
            self._server, self.address, self._private_dir = create_server(address, allow_remote)
            try:
                self._counts_dir = _counts.make_folder(self.address, self._private_dir)
            except OSError as exc:
                banner(
                    f"cannot make a folder for the workers' count files ({exc}); a hard exit may go uncounted"
                )
            self.queue = QueueHandle(self.address, self._authkey, self._counts_dir)
        # Whatever happens to this object (never started, never stopped, start() failed), its socket
        # file and private folder go when it does, or at the latest when the interpreter exits.
        self._owner = os.getpid()
        self._cleanup = weakref.finalize(
            self, _release, self._server, self._private_dir, self.address, self._owner, self._counts_dir
        )
        self._state = "new"
        self._stopping = False
        self._processes: dict[tuple[int, bytes], _Process] = {}
        self._connections: dict[int, _Connection] = {}
        self._queue_processes: dict[int, _Process] = {}
        self._finished: collections.deque[_Process] = collections.deque()
        self._folded = {"processes": 0, "received": 0, "dropped": 0, "lost": 0, "truncated": 0}
        self._reconciled_at = 0.0
        self._stats_lock = threading.Lock()
        self._rejected = 0
        self._saved_env: Saved | None = None
        self._fast: list[tuple[logging.Handler, int]] = []
        self._slow: list[logging.Handler] = []
        self._wrapped: list[tuple[logging.Handler, _Prerendered]] = []
        self._plan: dict[str, Any] = {"formats": [], "full": True, "level": self.level}
        self._seams = False

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> LogListener:  # type: ignore[override]
        """Start the listening thread; publish ``LOGFUNNEL_ADDRESS`` for child processes."""
        if self._state != "new":
            raise RuntimeError(f"this LogListener was already started (it is {self._state})")
        try:
            self._plan_dispatch()
            if self._server is not None:
                self._wake_r, self._wake_w = socket.socketpair()
            target = self._serve if self._server is not None else self._monitor
            self._thread = threading.Thread(target=target, name="logfunnel-listener", daemon=True)
            self._thread.start()
        except BaseException:
            self._unwrap()
            self._close_server()
            self._state = "stopped"
            raise
        self._state = "running"
        _running.add(self)
        if self._server is not None:
            self._saved_env = publish(self.queue)
        if not self.handlers and not logging.getLogger().handlers:
            banner(
                "the log listener has no handlers and the root logger has none: records go to "
                "logging.lastResort (stderr, WARNING and above) and those below WARNING are discarded; "
                "pass handlers=[...] or configure logging before starting the listener"
            )
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
        _running.discard(self)

    def __enter__(self) -> LogListener:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wake(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"x")
        except OSError:
            pass

    def _close_server(self) -> None:
        self._cleanup()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        withdraw(self.address, self._saved_env)
        self._saved_env = None

    # -- statistics --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Totals and per-process figures: received, dropped (full buffers), lost (never arrived).

        Each process also has its ``state``: ``connected``, ``exited`` (said goodbye, or flushed
        everything before it left) or ``vanished`` (it ended without a goodbye: killed, or crashed).
        A dead process's figures are exact once its count file has been read; the totals include
        the finished processes no longer listed one by one (at most ``max_finished_processes``
        are kept), whose number is ``folded_processes``. ``lines_lost`` counts the lines this
        listener's handlers received but could not write (a full disk, an unencodable line), with
        ``handler_failures`` by reason.
        """
        with self._stats_lock:
            processes = [p.as_dict() for p in [*self._processes.values(), *self._queue_processes.values()]]
            folded = dict(self._folded)
        return {
            "received": folded["received"] + sum(p["received"] for p in processes),
            "dropped": folded["dropped"] + sum(p["dropped"] for p in processes),
            "lost": folded["lost"] + sum(p["lost"] for p in processes),
            "truncated": folded["truncated"] + sum(p.get("truncated", 0) for p in processes),
            "rejected": self._rejected,
            "processes": processes,
            "folded_processes": folded["processes"],
            **self._handler_losses(),
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
        self._seams = self._seams_overridden()  # fixed for the listener's life: decide once
        # Only workers on the socket render lines; records from a queue are formatted here.
        plain = bool(self.handlers) and not self._seams and self._server is not None
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

    def _welcome_plan(self) -> dict[str, Any]:
        """The plan a worker gets when it connects, with the levels it should log at.

        Routed through this process's logging configuration (no handlers), the levels are every
        level set explicitly in it, and the loggers it disabled: the worker sets them where its own
        code has not, so it never builds a record this listener would discard. With handlers, the
        root level is the lowest level any handler (and the listener) would take.
        """
        plan = dict(self._plan)
        if self.handlers:
            floor = min(h.level for h in self.handlers) if self.respect_handler_level else logging.NOTSET
            plan["levels"] = {"": max(self.level, floor)}
            plan["disabled"] = []
            return plan
        root = logging.getLogger()
        levels = {"": max(self.level, root.level)}
        disabled = []
        for name, logger in list(root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                if logger.level != logging.NOTSET:
                    levels[name] = max(self.level, logger.level)
                if logger.disabled:
                    disabled.append(name)
        plan["levels"] = levels
        plan["disabled"] = disabled
        return plan

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
            # Exactly what this process would do with the call that made the record: its logger's
            # level (and logging.disable), then Logger.handle (disabled, filters, propagate, handler
            # levels). Logger.handle alone checks no level.
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
            return
        respect = self.respect_handler_level
        for handler in handlers:
            if not respect or record.levelno >= handler.level:
                handler.handle(record)

    def _emit_local(self, level: int, message: str, *args: object) -> None:
        """A record of the listener's own (a loss report) through the same handlers."""
        record = logging.LogRecord("logfunnel", level, __file__, 0, message, args, None, "listener")
        try:
            if self._seams:
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
        seams = self._seams
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
        # What StreamHandler.emit does for each record, once for the whole batch: whole lines or
        # none when the disk fills up, losses counted, one unencodable line costing only itself
        # (handlers._disk.write_lines).
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
            kept = write_lines(handler, stream, lines, terminator)
            if kept is None and isinstance(handler, logging.FileHandler):
                handler.stream = None  # dropped after a failed write: reopened with the next batch
        except Exception:
            losses_of(handler).lose(len(lines), "error", episode=False)
            handler.handleError(_failure_record(f"a batch of {len(lines)} lines"))
        finally:
            handler.release()

    def _handler_losses(self) -> dict[str, Any]:
        """Lines the handlers could not write (a full disk, an unencodable line): ``lines_lost``, and
        ``handler_failures`` by reason, summed over the handlers (this process's share of each)."""
        total = 0
        reasons: dict[str, int] = {}
        for handler in self.handlers:
            figures = losses_of(handler).as_dict()
            total += figures["lines_lost"]
            for reason, count in figures["by_reason"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        return {"lines_lost": total, "handler_failures": reasons}

    # -- reading a multiprocessing queue -----------------------------------------------------------

    def _monitor(self) -> None:
        worker.listener_threads.add(threading.get_ident())
        q: Any = self.queue
        has_task_done = hasattr(q, "task_done")
        try:
            while True:
                try:
                    record = self.dequeue(True)
                except queue_module.Empty:  # a dequeue() override that times out: stop, as QueueListener
                    return
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


def start_listener(
    handlers: Iterable[logging.Handler] | None = None,
    *,
    level: int | str = logging.NOTSET,
    respect_handler_level: bool = True,
    address: str | None = None,
    allow_remote: bool = False,
) -> LogListener:
    """Start a ``LogListener`` thread in this process and return it.

    Give each worker ``listener.queue`` (or let it find the listener through
    ``LOGFUNNEL_ADDRESS``). With *handlers* None, records go through this process's logging
    configuration, so per-logger routing keeps working. *allow_remote* True lets *address* be a TCP
    address beyond loopback (the port is then open to whoever can reach it, unencrypted).
    """
    checked = check_handlers(handlers, "start_listener()")
    check_level(level, "start_listener()")
    check_address(address, "start_listener()", allow_remote)
    listener = LogListener(
        None,
        *checked,
        respect_handler_level=respect_handler_level,
        level=level,
        address=address,
        allow_remote=allow_remote,
    )
    return listener.start()
