"""Celery: one call in the app's module funnels the logging of the worker and of every prefork child.

::

    from celery import Celery
    from logfunnel.integrations.celery import install

    app = Celery("proj", broker=...)
    install(app)                                 # or install(app, config=DICT_CONFIG), handlers=[...]

What happens, and where:

- **The worker's main process** (``celery worker``, recognised by celery's ``celeryd_init`` signal)
  starts a ``LogManager`` when celery sets up logging (its ``setup_logging`` signal: with a receiver
  connected, celery leaves the root logger alone) and sends its own records there. The manager owns
  the handlers: *handlers* (objects, at celery's ``--loglevel``), the dictConfig *config*, or, with
  neither, what celery would have made: its ``worker_log_format`` on the root logger and its
  ``TaskFormatter`` with ``worker_task_log_format`` on ``celery.task``, to stderr or ``--logfile``.
- **Every prefork child** (the first ones, and each replacement after ``--max-tasks-per-child`` or a
  killed task) installs in ``worker_process_init`` and flushes in ``worker_process_shutdown``: billiard
  leaves a pool process through ``os._exit`` right after that signal, without ``atexit`` or billiard's
  own finalizers, so that signal is the last moment a child's buffered records can leave.
- **Every other process** (the client that calls ``.delay()``, ``celery inspect``, ``celery beat``) is
  left exactly as celery configures it: nothing starts there.

Why a manager process and not a listener thread: the worker's main process forks a child for every
replacement while it runs the pool's own threads (task, result and timeout handlers); a listener there
would share their GIL with the log handlers (a slow handler delays the enforcement of time limits) and
every child would inherit a copy of its sockets, buffers and handler locks. The manager keeps the
handlers out of the process that forks, and drains within two seconds even if the main process is
SIGKILLed.

Records logged inside a task are stamped with ``task_id`` and ``task_name`` where they are made (the
worker), so celery's ``TaskFormatter`` (and any format with ``%(task_id)s``) renders them in the
manager, where no task is running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

# celery ships no type hints.
from celery import Celery, signals  # type: ignore[import-untyped]
from celery._state import get_current_task  # type: ignore[import-untyped]
from celery.utils.log import get_multiprocessing_logger  # type: ignore[import-untyped]

from .. import worker as _worker
from .._handling import banner
from .._sink import SocketSink
from .._transport import QueueHandle
from ..manager import LogManager

__all__ = [
    "CeleryLogging",
    "TaskLoggers",
    "TaskStamp",
    "celery_config",
    "install",
    "task_logger_names",
    "with_task_loggers",
]

_UID = "logfunnel.integrations.celery"


class TaskStamp(logging.Filter):
    """Give each record made inside a task its ``task_id`` and ``task_name``, as celery's
    ``TaskFormatter`` would at format time; records made outside a task are left alone (the
    formatter then writes ``???``, as it does in one process)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        if task and task.request:
            record.__dict__.update(task_id=task.request.id, task_name=task.name)
        return True


class TaskLoggers(logging.Filter):
    """Built by the manager's dictConfig: make the loggers *names* children of ``celery.task`` there.

    ``celery.utils.log.get_task_logger(name)`` gives its logger the parent ``celery.task`` (whose
    handler has the ``TaskFormatter`` and which does not propagate). In the manager, a logger made by
    name alone would have the root as its parent, and task records would lose their format; so the
    worker lists its task loggers and this rebuilds the same tree. It filters nothing.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        super().__init__()
        task_logger = logging.getLogger("celery.task")
        for name in names:
            logging.getLogger(name).parent = task_logger


def task_logger_names() -> list[str]:
    """The loggers of this process that ``get_task_logger`` made children of ``celery.task``."""
    task_logger = logging.getLogger("celery.task")
    names = []
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (
            isinstance(logger, logging.Logger)
            and logger.parent is task_logger
            and not name.startswith("celery.task.")
        ):
            names.append(name)
    return sorted(names)


def with_task_loggers(config: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of the dictConfig *config* that also rebuilds the task loggers *names* (``TaskLoggers``)."""
    filters = dict(config.get("filters") or {})
    filters["logfunnel.celery.task_loggers"] = {"()": f"{__name__}.TaskLoggers", "names": list(names)}
    return {**config, "filters": filters}


def celery_config(
    app: Celery,
    loglevel: int | str = logging.WARNING,
    logfile: str | None = None,
    format: str | None = None,  # the name celery's setup_logging signal gives it
    colorize: bool = False,
) -> dict[str, Any]:
    """The dictConfig of what celery itself configures in a worker: *format* (the app's
    ``worker_log_format`` by default) on the root logger, ``TaskFormatter`` with
    ``worker_task_log_format`` on ``celery.task`` (which does not propagate), both at *loglevel*, to
    ``sys.__stderr__`` or, given *logfile*, a ``WatchedFileHandler`` on it."""
    conf = app.conf
    if logfile:
        target: dict[str, Any] = {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": logfile,
            "encoding": "utf-8",
        }
    else:
        target = {"class": "logging.StreamHandler", "stream": "ext://sys.__stderr__"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "celery": {
                "()": "celery.utils.log.ColorFormatter",
                "fmt": format or conf.worker_log_format,
                "datefmt": conf.worker_log_datefmt,
                "use_color": bool(colorize),
            },
            "celery.task": {
                "()": "celery.app.log.TaskFormatter",
                "fmt": conf.worker_task_log_format,
                "datefmt": conf.worker_task_log_datefmt,
                "use_color": bool(colorize),
            },
        },
        "handlers": {
            "celery": {**target, "formatter": "celery"},
            "celery.task": {**target, "formatter": "celery.task"},
        },
        "root": {"level": loglevel, "handlers": ["celery"]},
        "loggers": {"celery.task": {"level": loglevel, "handlers": ["celery.task"], "propagate": False}},
    }


class CeleryLogging:
    """What ``install`` set up for one app. ``manager`` is the ``LogManager``, in the worker's main
    process once celery has set up logging (None anywhere else)."""

    def __init__(self, app: Celery, config: dict[str, Any] | None, handlers: list[logging.Handler] | None):
        self.app = app
        self.config = config
        self.handlers = handlers
        self.manager: LogManager | None = None
        self._worker_pid = 0  # the worker's main process, once celeryd_init has said so

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The manager's ``stats()``: received, dropped and lost records, per process."""
        if self.manager is None or self._worker_pid != os.getpid():
            raise RuntimeError(
                "CeleryLogging.stats() works in the celery worker's main process, after celery set up "
                "logging; this process has no log manager"
            )
        return self.manager.stats(timeout)

    # -- celery's signals ---------------------------------------------------------------------------

    def _on_celeryd_init(self, **_: Any) -> None:
        # Sent by `celery worker` (celery.apps.worker.Worker) before it sets up logging, and by no
        # other program: connecting setup_logging only now leaves beat, inspect and clients alone.
        self._worker_pid = os.getpid()
        signals.setup_logging.connect(self._on_setup_logging, weak=False, dispatch_uid=_UID)

    def _on_setup_logging(
        self,
        loglevel: int | None = None,
        logfile: str | None = None,
        format: str | None = None,
        colorize: bool | None = None,
        **_: Any,
    ) -> None:
        # A child sets up logging again when --logfile has %i in it; the child joins in
        # worker_process_init instead.
        if os.getpid() != self._worker_pid or self.manager is not None:
            return
        level = loglevel or logging.WARNING
        if self.handlers is not None:
            manager = LogManager(self.handlers, level=level)
        else:
            config = self.config
            if config is None:
                config = celery_config(self.app, level, logfile, format, bool(colorize))
            manager = LogManager(config=with_task_loggers(config, task_logger_names()))
        manager.start()
        self.manager = manager
        # billiard's own logger ("multiprocessing": "Process ... exited with ...") is made with
        # propagate=0 and no handler, so its lines went to stderr through logging's lastResort. Made
        # now, before install, it propagates to the funnel, at ERROR as celery sets it (MP_LOG: all).
        billiard_logger = get_multiprocessing_logger()
        if billiard_logger is not None:
            billiard_logger.setLevel(level if os.environ.get("MP_LOG") else logging.ERROR)
        self._join(manager)

    def _on_process_init(self, **_: Any) -> None:
        if self.manager is not None:  # a fork child: the handle came with the fork
            self._join(self.manager)
            return
        handle = QueueHandle.from_environment()  # a child that billiard spawned
        if handle is not None and self._worker_pid == 0:
            self._join(handle)

    def _on_process_shutdown(self, **_: Any) -> None:
        # billiard calls os._exit right after this signal: no atexit, no Finalize runs after it.
        if not _worker.flush_worker_logging(_worker.EXIT_TIMEOUT):
            banner("a celery pool process could not hand its last log records over in time")

    def _join(self, queue: Any) -> None:
        handler = _worker.install_worker_logging(queue)
        if not any(isinstance(f, TaskStamp) for f in handler.filters):
            handler.addFilter(TaskStamp())
        # A fork child reuses the handler it inherited, which connects at its first record. Connect
        # now: the listener then knows this child by its name (ForkPoolWorker-N, set by billiard
        # after the fork) even if it is killed before its first batch, and its levels apply at once.
        sink = handler._sink  # noqa: SLF001
        if isinstance(sink, SocketSink):
            sink.connect_now()


_installed: CeleryLogging | None = None


def install(
    app: Celery,
    config: dict[str, Any] | None = None,
    handlers: Iterable[logging.Handler] | None = None,
) -> CeleryLogging:
    """Funnel the logging of *app*'s worker and of every prefork child into a ``LogManager``.

    Call it in the app's module. *handlers* (handler objects) or *config* (a
    ``logging.config.dictConfig`` dict) are what the manager writes with; with neither, it writes what
    celery would (see ``celery_config``). In a process that is not a worker nothing starts. Calling it
    again is harmless: the first call's arguments stay in force.
    """
    global _installed
    if not isinstance(app, Celery):
        raise TypeError(f"install() expected a celery.Celery app, got {type(app).__name__!r}")
    if config is not None and handlers is not None:
        raise TypeError("install() takes handlers or a config, not both")
    if config is not None and not isinstance(config, dict):
        raise TypeError(
            f"install() expected config as a logging.config.dictConfig dict, got {type(config).__name__!r}"
        )
    listed = None if handlers is None else list(handlers)
    for handler in listed or ():
        if not isinstance(handler, logging.Handler):
            raise TypeError(f"install() expected logging.Handler objects, got {type(handler).__name__!r}")
    if _installed is not None:
        same = _installed.config == config and (
            [type(h) for h in _installed.handlers or ()] == [type(h) for h in listed or ()]
        )
        if not same:
            banner("logfunnel.integrations.celery.install() was called again with other arguments; "
                   "the first call's stay in force")  # fmt: skip
        return _installed
    installed = CeleryLogging(app, config, listed)
    signals.celeryd_init.connect(installed._on_celeryd_init, weak=False, dispatch_uid=_UID)  # noqa: SLF001
    signals.worker_process_init.connect(installed._on_process_init, weak=False, dispatch_uid=_UID)  # noqa: SLF001
    signals.worker_process_shutdown.connect(
        installed._on_process_shutdown,  # noqa: SLF001
        weak=False,
        dispatch_uid=_UID,
    )
    _installed = installed
    return installed
