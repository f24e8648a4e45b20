"""gunicorn hooks: ``from logfunnel.integrations.gunicorn import *`` in a gunicorn config file.

The star import brings the server hooks gunicorn looks for in its config module:

- ``on_starting`` (master, after gunicorn has set up its logging, before it listens or forks): a
  ``LogManager`` process is forked from the master, so it owns the master's logging configuration
  exactly as gunicorn built it (``errorlog``, ``accesslog``, ``loglevel``, ``syslog``,
  ``logconfig_dict``/``logconfig_json``/``logconfig``, a custom ``logger_class``) and routes every record
  by its logger's name. The master's own handlers are set aside: its records (``gunicorn.error``)
  are sent to the manager from the calling thread, with no thread of ours, so the master stays as
  single-threaded as gunicorn made it and its forks stay safe.
- ``post_fork`` (each worker): ``install_worker_logging`` to the manager. Installing there, never at
  import, is what makes ``--preload`` work: a thread or socket made at import would be the master's.
  Until gunicorn's worker sets its own signal handlers (after ``post_fork``), a stop signal would
  reach the master's handler copy and be lost, and the master would wait ``graceful_timeout`` and
  SIGKILL the worker; ``post_fork`` first sets handlers that stop the worker as gunicorn's would.
- ``worker_exit`` (a worker's last hook) and ``worker_abort`` (``--timeout``'s SIGABRT) flush;
  the worker's exit hooks then say goodbye. A worker SIGKILLed has its loss counted by the manager.
- ``on_reload`` (``HUP``): gunicorn has applied the new configuration; a new manager is forked
  with it, new workers join it, and the old one serves the old workers until ``child_exit`` has seen
  the last of them. ``on_exit`` flushes the master, stops every manager and gives the master back
  its handlers.

Each hook is a plain function: a config file that defines a hook of the same name calls ours from
it (``logfunnel.integrations.gunicorn.post_fork(server, worker)``). ``manager_stats()`` gives each
manager's figures (for an ``on_exit`` of your own that records them). ``manager_stats`` is the one
name the star import brings that is not a hook; gunicorn ignores names that are not settings.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import multiprocessing.process
import os
import signal
import sys
from typing import Any

from .._handling import banner
from .._sink import SocketSink
from .._transport import QueueHandle
from ..manager import LogManager
from ..worker import FunnelHandler, flush_worker_logging, install_worker_logging

__all__ = [
    "child_exit",
    "manager_stats",
    "on_exit",
    "on_reload",
    "on_starting",
    "post_fork",
    "worker_abort",
    "worker_exit",
]

#: How long a worker's last hook waits for its records to reach the manager.
EXIT_TIMEOUT = 5.0
#: After SIGABRT (``--timeout``) gunicorn sends SIGKILL on its next round, within about a second.
ABORT_TIMEOUT = 0.5
#: Records a fork of the master may log before ``post_fork`` that are kept for it (more are dropped).
_EARLY_LIMIT = 1000


# -- the master's records: sent from the calling thread --------------------------------------------


class _InlineSink(SocketSink):
    """A ``SocketSink`` that never starts a thread: each record is shipped by the thread that logs it.

    For gunicorn's master, which logs little (boots, signals, timeouts) and forks often.
    """

    def _start_sender(self) -> None:
        self._ship_inline()  # called under self._lock, which is re-entrant

    def after_fork_in_child(self) -> None:
        # The master's: a worker (or a manager forked at HUP) never sends through it. Close our copy
        # of the master's connection, or the manager would not see the master hang up; make nothing,
        # not even a count file, for a process that will never use it.
        sock, self._sock = self._sock, None
        self._pid = -self._pid  # flush() and close() are no-ops in any process but the master
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class _MasterHandler(FunnelHandler):
    """The master's ``FunnelHandler``: records go out before ``emit`` returns, from the caller's thread.

    It stands in for every handler on the master's loggers, so a record that propagates through
    several of them is sent once (the manager does the propagation, with the real handlers).
    """

    def __init__(self, handle: QueueHandle) -> None:
        logging.handlers.QueueHandler.__init__(self, handle)  # type: ignore[arg-type]
        self.on_full, self.block_timeout, self.capacity = "drop", 1.0, 10_000
        self._sink = _InlineSink(handle, self, on_start=lambda: None)
        self._direct = True
        self._last: logging.LogRecord | None = None
        self._owner = os.getpid()
        # Records a worker logs between the fork and post_fork ("Booting worker with pid: ..."): kept
        # for the worker's own handler, so they travel with its other records, under its own counts.
        self.early: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:  # the same record, propagating to a parent logger
            return
        self._last = record
        logger = logging.Logger.manager.loggerDict.get(record.name)
        if isinstance(logger, logging.Logger) and any(h is not self for h in logger.handlers):
            # Reconfigured under us (HUP: gunicorn's Logger.setup, before on_reload): the handlers
            # there now write the record in this process; sending it too would write it twice.
            return
        if os.getpid() != self._owner:
            if len(self.early) < _EARLY_LIMIT:
                self.early.append(record)
            return
        super().emit(record)


class _Swap:
    """The master's handlers, taken off its loggers and replaced by one ``_MasterHandler``."""

    def __init__(self, handler: _MasterHandler) -> None:
        self.handler = handler
        self.saved: list[tuple[logging.Logger, list[logging.Handler]]] = []
        for logger in _all_loggers():
            if logger.handlers:
                self.saved.append((logger, list(logger.handlers)))
                for old in list(logger.handlers):
                    logger.removeHandler(old)  # not closed: the manager writes through its own copies
                logger.addHandler(handler)

    def undo(self, after_setup: bool = False) -> None:
        """Give the handlers back where ours still stands; *after_setup*: gunicorn has run its
        ``Logger.setup`` again (HUP), which replaced its own handlers (marked ``_gunicorn``)."""
        handler = self.handler
        for logger, originals in self.saved:
            if handler not in logger.handlers:
                continue  # reconfigured since (logconfig_dict at HUP): what is there now is right
            if after_setup and logger.name in ("gunicorn.error", "gunicorn.access"):
                originals = [h for h in originals if not getattr(h, "_gunicorn", False)]
            logger.removeHandler(handler)
            for old in originals:
                logger.addHandler(old)
        self.saved = []


def _all_loggers() -> list[logging.Logger]:
    root = logging.getLogger()
    found = list(root.manager.loggerDict.values())
    return [root] + [item for item in found if isinstance(item, logging.Logger)]


# -- the master's state ----------------------------------------------------------------------------


class _Master:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.manager: LogManager | None = None
        self.swap: _Swap | None = None
        self.retiring: list[tuple[LogManager, set[int]]] = []  # (old manager, pids of its workers)
        self.managers: list[LogManager] = []
        self.lent: list[logging.Handler] = []  # gunicorn.error's handlers, lent to the "logfunnel" logger

    def start_manager(self) -> None:
        """Fork a manager that owns the master's logging as it is now, then send the master's records
        to it. Forked (not spawned), so that it has every handler gunicorn made, whatever made them."""
        self.lend_error_handlers()
        manager = LogManager(start_method="fork").start()
        # Out of the master's process group: a SIGTERM sent to the group (timeout(1), a terminal, a
        # supervisor's `kill -TERM -PGID`) would stop the manager at once, before the master's and
        # the workers' last lines. The master stops it at on_exit; if the master dies, the manager
        # drains and exits within two seconds all the same.
        try:
            os.setpgid(manager.pid or 0, 0)
        except OSError:
            pass  # it is gone already, or not ours to move: it still works, only group signals reach it
        self.manager = manager
        self.managers.append(manager)
        self.swap = _Swap(_MasterHandler(manager.queue))

    def lend_error_handlers(self) -> None:
        """The manager's own reports (a worker killed with records lost) go where gunicorn's errors go,
        when the root logger has no handler to take them (gunicorn's defaults): not to lastResort."""
        own = logging.getLogger("logfunnel")
        for handler in self.lent:
            own.removeHandler(handler)
        self.lent = []
        if logging.getLogger().handlers or own.handlers:
            return
        self.lent = list(logging.getLogger("gunicorn.error").handlers)
        for handler in self.lent:
            own.addHandler(handler)

    def close_handler(self, after_setup: bool = False) -> None:
        swap, self.swap = self.swap, None
        if swap is not None:
            swap.handler.close()  # ships what it holds and says goodbye: the master's totals
            swap.undo(after_setup)

    def shutdown(self) -> None:
        """The master's last words are sent; every manager drains and stops; its handlers come back."""
        if os.getpid() != self.pid:
            return
        self.close_handler()
        for manager, _ in self.retiring:
            manager.stop()
        self.retiring = []
        if self.manager is not None:
            self.manager.stop()
            self.manager = None

    def forget_worker(self, pid: int) -> None:
        for entry in list(self.retiring):
            manager, pids = entry
            pids.discard(pid)
            if not pids:
                self.retiring.remove(entry)
                manager.stop()


_master: _Master | None = None


def _in_master() -> _Master | None:
    return _master if _master is not None and _master.pid == os.getpid() else None


# -- the hooks -------------------------------------------------------------------------------------


def on_starting(server: Any) -> None:
    """Master: fork the manager, which takes over gunicorn's logging configuration."""
    global _master
    if _in_master() is not None:
        return
    _master = _Master()
    try:
        _master.start_manager()
    except Exception as exc:
        banner(f"could not start the log manager for gunicorn ({exc!r}); gunicorn logs as it would alone")
        _master = None
        return
    atexit.register(_master.shutdown)  # a master that leaves without on_exit (a crash in its loop)


def on_reload(server: Any) -> None:
    """Master, after ``HUP`` re-applied the configuration: a new manager for the new workers."""
    master = _in_master()
    if master is None or master.manager is None:
        return
    old = master.manager
    master.close_handler(after_setup=True)
    master.retiring.append((old, set(getattr(server, "WORKERS", {}))))
    try:
        master.start_manager()
    except Exception as exc:
        banner(f"could not start a new log manager after HUP ({exc!r}); keeping the old one")
        master.retiring.pop()
        master.manager = old
        master.swap = _Swap(_MasterHandler(old.queue))
        return
    if not master.retiring[-1][1]:  # no old workers: the old manager has nobody left to serve
        master.retiring.pop()
        old.stop()


def _catch_early_stop(worker: Any) -> None:
    """Stop *worker* on a stop signal that comes before gunicorn's ``init_signals``.

    From the fork until then the worker runs the master's signal handler, which only queues the
    signal for a master loop this process never runs: a SIGTERM sent then (a deploy, a scale-down,
    a stop while a replacement boots) is lost, the worker serves on, and the master waits
    ``graceful_timeout`` and SIGKILLs it, with its records. Joining the manager makes that window
    longer on a loaded machine, so this handler, set first, does what gunicorn's ``handle_exit``
    does: the worker leaves its loop as soon as it enters it, through ``worker_exit`` as usual.
    """

    def stop_early(signum: int, frame: Any) -> None:
        worker.alive = False

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        try:
            signal.signal(number, stop_early)
        except (ValueError, OSError):  # not the main thread (a custom arbiter): leave gunicorn's way
            return


def post_fork(server: Any, worker: Any) -> None:
    """Worker: join the manager. The master's handlers are given back first, and then taken off
    every logger by ``install_worker_logging``, so that each record is sent once, by this process."""
    master = _master
    if master is None or master.manager is None:
        return
    _catch_early_stop(worker)
    # A raw os.fork keeps multiprocessing's list of the master's children; at this worker's exit its
    # atexit handler would SIGTERM the daemonic ones and fail on "can only join a child process".
    for module in (multiprocessing.process, sys.modules.get("multiprocess.process")):
        children = getattr(module, "_children", None)
        if children is not None:
            children.clear()
    queue = master.manager.queue
    early: list[logging.LogRecord] = []
    if master.swap is not None:
        early = master.swap.handler.early
        master.swap.undo()
        master.swap = None
    # gunicorn handles SIGTERM itself, and a worker leaves through its normal exit.
    handler = install_worker_logging(queue, flush_on_sigterm=False)
    for record in early:
        handler.handle(record)


def worker_exit(server: Any, worker: Any) -> None:
    """Worker (its last hook): flush. In the master (a worker found already gone): forget it."""
    if os.getpid() == getattr(worker, "pid", None):
        if not flush_worker_logging(EXIT_TIMEOUT):
            banner(f"gunicorn worker {os.getpid()}: log records still unsent after {EXIT_TIMEOUT} s")
        return
    master = _in_master()
    if master is not None:
        master.forget_worker(getattr(worker, "pid", -1))


def worker_abort(worker: Any) -> None:
    """Worker, on ``--timeout``'s SIGABRT: send what it holds before SIGKILL may come."""
    flush_worker_logging(ABORT_TIMEOUT)


def child_exit(server: Any, worker: Any) -> None:
    """Master, a worker reaped: an old manager (before ``HUP``) whose last worker this was stops."""
    master = _in_master()
    if master is not None:
        master.forget_worker(getattr(worker, "pid", -1))


def on_exit(server: Any) -> None:
    """Master, the last hook: flush the master, stop every manager (each drains what it was sent)."""
    master = _in_master()
    if master is not None:
        master.shutdown()


def manager_stats() -> list[dict[str, Any]]:
    """The figures of every manager this master started, oldest first (final once it stopped).

    A manager that died (killed, OOM) has lost its figures: its entry says so under ``error``, with
    ``received``, ``dropped`` and ``lost`` None, so an ``on_exit`` that prints them still works.
    """
    master = _in_master()
    if master is None:
        return []
    figures = []
    for manager in master.managers:
        try:
            figures.append(manager.stats())
        except (RuntimeError, TimeoutError) as exc:
            figures.append(
                {
                    "manager": {"pid": manager.pid},
                    "error": str(exc),
                    "received": None,
                    "dropped": None,
                    "lost": None,
                }
            )
    return figures
