"""The listener side: ``LogListener`` and ``start_listener``.

One thread serves every worker connection through a selector: it authenticates each peer, reads
frames, decodes them with an unpickler that refuses every global, keeps per-process accounting and
hands the records to its ``Dispatcher`` (``_dispatch``: where a record goes after it is decoded, local
files inline and every network handler on a lane of its own). This module is the life cycle and the
wiring.

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
from ._dispatch import Dispatcher, _write_lines
from ._exit import CleanUp
from ._handling import banner
from ._processes import _Process
from ._serving import SocketServing, _Connection
from ._transport import (
    QueueHandle,
    Saved,
    create_server,
    publish,
    withdraw,
)

__all__ = ["LogListener", "start_listener"]

#: How long a listener left running drains at interpreter exit before it gives up.
EXIT_DRAIN_TIMEOUT = 5.0
_running: weakref.WeakSet[LogListener] = weakref.WeakSet()
_made: weakref.WeakSet[LogListener] = weakref.WeakSet()  # every listener made, for its files at exit


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
            listener.stopped_at_exit = True
            listener.stop(timeout=EXIT_DRAIN_TIMEOUT)
    for listener in list(_made):  # never started, or stopped: its socket file and folders
        listener._cleanup()  # noqa: SLF001


atexit.register(_stop_running)


def tree_levels(level: int, root_level: int) -> tuple[dict[str, int], list[str]]:
    """What workers are told of this process's logger tree: *root_level* for the root, the level of
    every logger that sets one (at least *level*), and the names of the disabled loggers."""
    levels = {"": root_level}
    disabled = []
    for name, logger in list(logging.getLogger().manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            if logger.level != logging.NOTSET:
                levels[name] = max(level, logger.level)
            if logger.disabled:
                disabled.append(name)
    return levels, disabled


class LogListener(SocketServing, logging.handlers.QueueListener):
    """Receive the records of many processes and hand them to *handlers* in this process.

    With *queue* None (the usual case) it listens on a fresh Unix socket (mode 0600) or on *address*
    (``unix:/path`` or ``tcp://127.0.0.1:PORT``) and ``.queue`` (also ``.worker_queue``) is the
    picklable handle to give to workers. A TCP address beyond loopback is refused unless
    *allow_remote* is True (records and the handshake are not encrypted). Given a ``multiprocessing``
    queue it reads that queue instead, like ``QueueListener``.
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
        #: The picklable handle workers join with (``QueueHandle``); None when reading a queue.
        self.worker_queue: QueueHandle | None = None
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
            self.queue = self.worker_queue = QueueHandle(self.address, self._authkey, self._counts_dir)
        # Whatever happens to this object (never started, never stopped, start() failed), its socket
        # file and private folder go when it does, or at the latest when the interpreter exits: then
        # from _stop_running, after the listener stopped (not from weakref's exit hook, which may
        # run before ours and take the socket from a worker in this process not yet connected).
        self._owner = os.getpid()
        self._cleanup = CleanUp(
            self, _release, self._server, self._private_dir, self.address, self._owner, self._counts_dir
        )
        _made.add(self)
        self._state = "new"
        self._stopping = False
        self.stopped_at_exit = False  # stopped by the exit hook, before logging.shutdown closes handlers
        self._processes: dict[tuple[int, bytes], _Process] = {}
        self._connections: dict[int, _Connection] = {}
        self._queue_processes: dict[int, _Process] = {}
        self._finished: collections.deque[_Process] = collections.deque()
        self._folded = {"processes": 0, "received": 0, "dropped": 0, "lost": 0, "truncated": 0}
        self._reconciled_at = 0.0
        self._stats_lock = threading.Lock()
        self._rejected = 0
        self._saved_env: Saved | None = None
        # Where records go (made again at start, when a subclass's handlers and seams are final).
        self._dispatcher = Dispatcher(
            self.handlers, level=self.level, respect_handler_level=self.respect_handler_level
        )
        self._plan: dict[str, Any] = dict(self._dispatcher.plan)

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
            self._dispatcher.stop()
            self._close_server()
            self._state = "stopped"
            raise
        self._state = "running"
        _running.add(self)
        if self.worker_queue is not None:
            self._saved_env = publish(self.worker_queue)
        if not self.handlers and not _any_logger_has_handlers():
            banner(
                "the log listener has no handlers and the root logger has none (nor any other "
                "logger): records go to "
                "logging.lastResort (stderr, WARNING and above) and those below WARNING are discarded; "
                "pass handlers=[...] or configure logging before starting the listener"
            )
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Handle everything already sent (by live and exited workers), then stop. Safe to repeat.

        *timeout* bounds the wait for the listening thread; then each lane drains within its own
        ``drain_timeout`` (all at once), and what a lane could not deliver is reported on stderr and
        in ``stats()["lanes"]`` (``undelivered``). A lane stuck in a hung server is abandoned, so
        that the program can still exit.
        """
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
        # Each lane drains within its own deadline; what it could not deliver is reported and counted.
        self._dispatcher.stop()
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
        ``handler_failures`` by reason. ``lanes`` lists every lane (see ``Lane.lane_stats``): what
        each delivered, dropped (its buffer full), failed (gave up after retries) and could not
        deliver when the listener stopped (``undelivered``).
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
            **self._dispatcher.losses(),
            "lanes": self._dispatcher.lane_stats(),
        }

    def backlog_bytes(self) -> int:
        """Bytes received but not yet handled (parts of frames still arriving)."""
        return sum(len(conn.buffer) for conn in list(self._connections.values()))

    # -- dispatch (the Dispatcher decides where each record goes: see _dispatch) ------------------

    def _records_wanted(self) -> bool | None:
        hub = self._control_hub
        if hub is not None and hub.ever_tailed:
            # `logfunnel tail` shows whole records: while one follows, workers send them even when
            # the handlers need only lines (afterwards, as the plan and the lanes say).
            if hub.tails:
                return True
            if not self._plan.get("full"):
                return False
        if not self._plan.get("full"):
            return None
        return self._dispatcher.wants_records()

    def _seams_overridden(self) -> bool:
        kind = type(self)
        return kind.handle is not LogListener.handle or kind.prepare is not LogListener.prepare

    def _plan_dispatch(self) -> None:
        # Decided once, for the listener's life. Only workers on the socket render lines; records
        # from a queue are formatted here.
        seams = self._seams_overridden()
        self._dispatcher = Dispatcher(
            self.handlers,
            level=self.level,
            respect_handler_level=self.respect_handler_level,
            prerender=self._server is not None,
            seam=self.handle if seams else None,
        )
        self._plan = self._dispatcher.start()

    def _welcome_plan(self) -> dict[str, Any]:
        """The plan a worker gets when it connects, with the levels it should log at.

        Routed through this process's logging configuration (no handlers), the levels are every
        level set explicitly in it, and the loggers it disabled: the worker sets them where its own
        code has not, so it never builds a record this listener would discard. With handlers, the
        root level is the lowest level any handler (and the listener) would take.
        """
        plan = dict(self._plan)
        hub = self._control_hub
        if hub is not None and hub.tails:
            plan["full"] = True  # whole records from the first batch, for `logfunnel tail`
        if self.handlers:
            floor = min(h.level for h in self.handlers) if self.respect_handler_level else logging.NOTSET
            plan["levels"] = {"": max(self.level, floor)}
            plan["disabled"] = []
            return plan
        plan["levels"], plan["disabled"] = tree_levels(self.level, max(self.level, logging.getLogger().level))
        return plan

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Return the record to give the handlers; override to change records on the way in."""
        return record

    def set_level(self, level: int | str) -> None:
        """Skip records below *level*, from this process and from the workers (told at connection, and
        connected ones within about a second: ``SocketServing._push_levels``)."""
        self.level = check_level(level, "LogListener.set_level()")
        self._dispatcher.level = self.level

    def handle(self, record: logging.LogRecord) -> None:
        """Offer a record (after ``prepare``) to every handler (a network handler through its lane),
        or to its logger if there are none."""
        record = self.prepare(record)
        self._dispatcher.handle_record(record)

    def _emit_local(self, level: int, message: str, *args: object) -> None:
        """A record of the listener's own (a loss report) through the same handlers."""
        self._dispatcher.report(level, message, *args)

    # The batch writer and the loss figures, where the suite (and a subclass) reached them before.
    _write_lines = staticmethod(_write_lines)

    def _handler_losses(self) -> dict[str, Any]:
        return self._dispatcher.losses()

    def _dispatch(
        self, levels: list[int], lines: list[list[str | None]], records: list[dict[str, Any]] | None
    ) -> None:
        self._dispatcher.dispatch(levels, lines, records)

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


def _any_logger_has_handlers() -> bool:
    """Whether routing can reach a handler at all (gunicorn's loggers have their own, not the root)."""
    root = logging.getLogger()
    loggers = [root, *(x for x in list(root.manager.loggerDict.values()) if isinstance(x, logging.Logger))]
    return any(logger.handlers for logger in loggers)
