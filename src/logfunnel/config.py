"""The names a ``logging.config.dictConfig`` refers to, to declare the funnel.

Two forms declare the listener side; both start the listener at configuration, stop it at exit
(after the parent's own records are in) and stop it when a later, non-incremental ``dictConfig``
replaces the handlers:

- ``{"()": "logfunnel.config.funnel", "handlers": [...]}``, on every Python version: the handler
  the process's own loggers use is a ``ConfiguredFunnelHandler`` (a ``FunnelHandler`` whose
  ``listener`` owns the named handlers), and its ``.queue`` is what workers are given.
- ``{"class": "logging.handlers.QueueHandler", "listener": "logfunnel.config.FunnelListener",
  "handlers": [...]}``, Python 3.12 and later: the standard library builds the queue, the handler
  and the listener; ``FunnelListener`` starts itself and also serves workers on its own socket.

The worker side is ``{"()": "logfunnel.config.worker_handler"}``: a handler that sends to the
listener named by *address* or by ``LOGFUNNEL_ADDRESS``.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import queue as queue_module
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import worker
from ._checks import check_level
from ._handling import banner
from ._lanes import Lane, Retry, inline, is_lane
from ._transport import QueueHandle
from .listener import LogListener, tree_levels
from .worker import EXIT_TIMEOUT, FunnelHandler, OnFull

if TYPE_CHECKING:
    from .manager import LogManager

__all__ = [
    "ConfiguredFunnelHandler",
    "FunnelListener",
    "funnel",
    "funnel_handler",
    "listener",
    "worker_handler",
]

_configured: weakref.WeakSet[ConfiguredFunnelHandler] = weakref.WeakSet()
#: id(queue) -> the FunnelListener that reads it (the 3.12+ form's queue.Queue)
_reading: weakref.WeakValueDictionary[int, FunnelListener] = weakref.WeakValueDictionary()


def handle_reading(queue: Any) -> QueueHandle | None:
    """The workers' handle of the FunnelListener that reads *queue*, if one does (in this process or
    the parent this one was forked from): what to send to instead of that process-local queue."""
    listener = _reading.get(id(queue))
    if listener is None or listener.local_queue is not queue:
        return None
    return listener.worker_queue


class _ToListener:
    """Stands in, in a fork child, for the ``queue.Queue`` of its parent's FunnelListener.

    The child's copy of that queue has no reader (and may hold a lock the parent's reader had at the
    fork): a ``QueueHandler`` there would put its records where nobody takes them. This sends each
    one to the listener instead, through a funnel handler made at the first record and flushed as a
    worker's is: at the child's exit (also a multiprocessing child's ``os._exit``) and on SIGTERM.
    """

    def __init__(self, handle: QueueHandle) -> None:
        self._handle = handle
        self._funnel: ConfiguredFunnelHandler | None = None
        self._lock = threading.Lock()

    def _sender(self) -> ConfiguredFunnelHandler:
        with self._lock:
            if self._funnel is None:
                # Flushed at exit and on SIGTERM (Pool.terminate()), as a worker's: the SIGTERM
                # handler is set when the funnel first sends, from this thread.
                worker._flush_on_sigterm = True  # noqa: SLF001
                self._funnel = ConfiguredFunnelHandler(self._handle)
                worker.also_closed.add(self._funnel)
            return self._funnel

    def put_nowait(self, record: logging.LogRecord) -> None:
        self._sender().handle(record)

    def put(self, record: logging.LogRecord, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(record)


def _after_fork_in_child() -> None:
    # A fork child (a Pool worker started without an initializer) inherits the funnel handler and
    # is a worker: like install_worker_logging's, it ships its buffer before SIGTERM kills it
    # (Pool.terminate()). The handler is armed when the child first sends, from its main thread.
    if any(h.listener is not None for h in list(_configured)):
        worker._flush_on_sigterm = True  # noqa: SLF001
    # The 3.12+ form: a QueueHandler that fills the parent's FunnelListener's thread queue sends to
    # the listener from here instead (multiprocessing queues work across the fork as they are).
    if not _reading:
        return
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]  # noqa: SLF001
        handler = ref()
        if isinstance(handler, logging.handlers.QueueHandler) and not isinstance(handler, FunnelHandler):
            handle = handle_reading(handler.queue) if _thread_queue(handler.queue) else None
            if handle is not None:
                handler.queue = _ToListener(handle)  # type: ignore[assignment]


def _thread_queue(queue: Any) -> bool:
    return isinstance(queue, (queue_module.Queue, queue_module.SimpleQueue))


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Closer(logging.Handler):
    """A handler that emits nothing and whose ``close()`` stops a listener.

    Made when the listener is, it sits in ``logging._handlerList`` after the handlers the listener
    owns and before the handler the loggers use: ``logging.shutdown()`` at exit, and a later
    ``dictConfig`` (which closes every existing handler), close the loggers' handler first, then
    this one (the listener drains into its handlers), then the listener's handlers.
    """

    def __init__(self, target: FunnelListener) -> None:
        super().__init__()
        self._target = weakref.ref(target)

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        target = self._target()
        if target is not None:
            target.stop(timeout=EXIT_TIMEOUT)
        super().close()


class ConfiguredFunnelHandler(FunnelHandler):
    """The ``FunnelHandler`` a dictConfig-declared funnel gives the process's own loggers.

    ``listener`` is the listener (a ``FunnelListener``, or a ``LogManager`` with ``manager=True``)
    and ``queue`` the handle to give workers. It leaves the levels to this process's configuration:
    unlike ``install_worker_logging``, it never applies the levels the listener suggests.
    """

    listener: Any

    def __init__(
        self,
        queue: Any,
        *,
        on_full: OnFull = "block",
        block_timeout: float = 5.0,
        capacity: int = 10_000,
    ) -> None:
        super().__init__(queue, on_full=on_full, block_timeout=block_timeout, capacity=capacity)
        sink = self._sink
        if hasattr(sink, "_on_plan"):
            sink._on_plan = None  # noqa: SLF001  (the configuration decides the levels here)
        self.listener: FunnelListener | LogManager | None = None
        self._checked = False

    def setLevel(self, level: int | str) -> None:
        """Set this handler's level and the listener's: the workers' records obey it too."""
        super().setLevel(level)
        target = self.listener
        if target is not None:  # a FunnelListener, or a LogManager (manager: true)
            target.set_level(self.level)

    def handle(self, record: logging.LogRecord) -> bool:
        if not self._checked:
            self._checked = True
            if isinstance(self.listener, FunnelListener):
                self.listener.check_owned()
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        target = self.listener
        if isinstance(target, FunnelListener) and target.stopped_at_exit and target.owner == os.getpid():
            try:
                target.handle_late(self.prepare(record))
            except Exception:
                self.handleError(record)
            return
        super().emit(record)


class FunnelListener(LogListener):
    """A ``LogListener`` for ``dictConfig``: it starts when it is made and serves two sources.

    Workers connect to its socket (``.queue``, ``.address``, and ``LOGFUNNEL_ADDRESS`` for child
    processes). Given a *queue* (the one the standard library's 3.12+ ``QueueHandler`` form builds),
    a thread of its own also reads that queue: the records this process's loggers put there.
    ``start()`` is a no-op once it runs (the standard library's documentation says to call it).
    *lanes* maps handler names to ``"inline"``, ``"lane"`` or a dict of ``Lane`` options.
    """

    def __init__(
        self,
        queue: Any = None,
        *handlers: logging.Handler,
        respect_handler_level: bool = True,
        level: int | str = logging.NOTSET,
        address: str | None = None,
        allow_remote: bool = False,
        lanes: Mapping[str, Any] | None = None,
        where: str = "listener",
    ) -> None:
        # With no handlers, as QueueListener(q): records are taken and handled by none. (Routed by
        # name instead, they would go through this process's loggers back to the handler that feeds
        # the queue, in a loop.)
        placed = _place_on_lanes(list(handlers), lanes, where) if handlers else [logging.NullHandler()]
        if not handlers:
            banner(
                f"{where}: a FunnelListener with no handlers takes the records and writes none (as a "
                "QueueListener with none does); name the handlers that should write them, e.g. "
                "'handlers': ['file']"
            )
        super().__init__(
            None,
            *placed,
            respect_handler_level=respect_handler_level,
            level=level,
            address=address,
            allow_remote=allow_remote,
        )
        self.where = where
        self.owned: list[logging.Handler] = list(handlers)
        self.local_queue = queue
        if queue is not None:
            # QueueListener's contract (and 3.12+ dictConfig's): .queue is the queue it reads.
            # Workers join through .worker_queue (install_worker_logging also takes this queue for it).
            self.queue = queue
            _reading[id(queue)] = self
        self.local_handlers: weakref.WeakSet[logging.Handler] = weakref.WeakSet()
        self._pump: threading.Thread | None = None
        self._checked = False
        self._closer = _Closer(self)
        self.start()

    def start(self) -> FunnelListener:  # type: ignore[override]
        """Start the listener (and the reader of the local queue); a no-op once it runs."""
        if self._state != "new":
            return self
        super().start()
        if self.local_queue is not None:
            self._pump = threading.Thread(target=self._read_local, name="logfunnel-config-queue", daemon=True)
            self._pump.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Send this process's own records in, then stop as ``LogListener.stop`` does. Safe to repeat."""
        if self._owner != os.getpid():
            return  # a fork child's copy: the listener is the parent's
        if self._state != "running":
            super().stop(timeout)
            return
        pump = self._pump
        if pump is not None and pump.is_alive():
            try:
                self.local_queue.put_nowait(self._sentinel)
            except Exception as exc:
                banner(f"{self.where}: could not stop the reader of its queue: {exc!r}")
            pump.join(timeout)
        for handler in self.local_handlers:
            if isinstance(handler, FunnelHandler):
                handler._sink.close(timeout)  # noqa: SLF001  (ship, say goodbye, hang up)
        super().stop(timeout)

    @property
    def owner(self) -> int:
        """The pid of the process that made this listener (a fork child has a copy that is not its)."""
        return self._owner

    def handle_late(self, record: logging.LogRecord) -> None:
        """Write a record this process logs after the exit hook stopped the listener: one from an
        ``atexit`` hook registered before logfunnel's (a library's last words). Its handlers are
        still open until ``logging.shutdown``, which runs after every such hook, so they write it
        here and now, on the caller's thread, as they would in one process."""
        if record.levelno < self.level:
            return
        for handler in self.owned:
            if not self.respect_handler_level or record.levelno >= handler.level:
                handler.handle(record)

    def check_owned(self) -> None:
        """Say on stderr, once, if a handler this listener owns is also on a logger (lines twice)."""
        if self._checked:
            return
        self._checked = True
        root = logging.getLogger()
        loggers = [("root", root)] + [
            (name, logger)
            for name, logger in list(root.manager.loggerDict.items())
            if isinstance(logger, logging.Logger)
        ]
        for owned in self.owned:
            for name, logger in loggers:
                if owned in logger.handlers:
                    label = owned.get_name() or type(owned).__name__
                    banner(
                        f"{self.where}: handler {label!r} belongs to the funnel and is also on logger "
                        f"{name!r}, so its lines are written twice; remove it from that logger's handlers"
                    )

    def _read_local(self) -> None:
        # QueueListener's loop, with its seams: dequeue(), then handle() (prepare(), then every
        # handler, through its lane), then task_done(): once queue.join() returns, an inline
        # handler has written what was put before it (3.12+ dictConfig's own tests wait so).
        q = self.local_queue
        has_task_done = hasattr(q, "task_done")
        while True:
            try:
                record = self.dequeue(True)
            except queue_module.Empty:  # a dequeue() override that times out: stop, as QueueListener
                return
            except (EOFError, OSError) as exc:
                banner(f"{self.where}: its queue broke: {exc!r}")
                return
            if record is self._sentinel:
                if has_task_done:
                    q.task_done()
                return
            self.check_owned()
            try:
                self.handle(record)
            except Exception as exc:
                banner(f"{self.where}: handling a record of its queue failed: {exc!r}")
            if has_task_done:
                q.task_done()

    def _welcome_plan(self) -> dict[str, Any]:
        # A worker mirrors this process's configuration: its logger levels and disabled loggers, and
        # at the root the highest of the root's level, this listener's and its handlers' floor.
        self.check_owned()
        plan = super()._welcome_plan()
        root_level = max(plan["levels"][""], logging.getLogger().level)
        plan["levels"], plan["disabled"] = tree_levels(self.level, root_level)
        return plan


def listener(**options: Any) -> Callable[..., FunnelListener]:
    """A ``FunnelListener`` with *options*, for ``"listener": {"()": "logfunnel.config.listener", ...}``.

    The options are ``FunnelListener``'s: ``level``, ``address``, ``allow_remote``, ``lanes``.
    """
    unknown = sorted(set(options) - {"level", "address", "allow_remote", "lanes"})
    if unknown:
        raise TypeError(
            f"logfunnel.config.listener() got unknown options {unknown}; "
            "expected level, address, allow_remote or lanes"
        )
    return functools.partial(FunnelListener, **options)


# -- the factory form, for every Python version ------------------------------------------------------


def funnel(
    handlers: Iterable[str] = (),
    *,
    respect_handler_level: bool = True,
    lanes: Mapping[str, Any] | None = None,
    listener_level: int | str = logging.NOTSET,
    address: str | None = None,
    allow_remote: bool = False,
    manager: bool = False,
    on_full: OnFull = "block",
    block_timeout: float = 5.0,
    capacity: int = 10_000,
) -> ConfiguredFunnelHandler:
    """Start a listener that owns the dictConfig handlers named in *handlers*; return the loggers' handler.

    For ``{"()": "logfunnel.config.funnel", "handlers": ["file"], ...}`` in a dictConfig's
    ``handlers``. The returned ``ConfiguredFunnelHandler`` sends this process's records to the
    listener, as every worker does (``handler.queue``; children also find it through
    ``LOGFUNNEL_ADDRESS``). *lanes* maps handler names to ``"inline"``, ``"lane"`` or a dict of
    ``Lane`` options (``capacity``, ``when_full``, ``retry`` as a dict of ``Retry`` options,
    ``drain_timeout``, ``block_timeout``). With *manager* True the listener is a ``LogManager``
    process. The dictConfig's ``level``, ``filters`` and ``formatter`` keys apply to the returned
    handler; its level also holds for the workers' records.
    """
    configurator = getattr(handlers, "configurator", None)
    where = _where(handlers, configurator)
    if isinstance(handlers, (str, bytes)) or not isinstance(handlers, Iterable):
        raise TypeError(
            f"{where}.handlers: expected a list of handler names, got {type(handlers).__name__!r}"
        )
    names = list(handlers)
    owned = [_owned_handler(name, configurator, f"{where}.handlers") for name in names]
    level = check_level(listener_level, f"{where}.listener_level")
    result: ConfiguredFunnelHandler
    if manager:
        from .manager import LogManager

        if not respect_handler_level:
            raise ValueError(
                f"{where}.respect_handler_level: a LogManager always respects its handlers' levels; "
                "remove respect_handler_level: false, or remove manager: true"
            )
        if not owned:
            raise ValueError(
                f"{where}: expected the names of the handlers the funnel owns under 'handlers', got none; "
                "list the handlers that should write the records, e.g. 'handlers': ['file']"
            )

        placed = _place_on_lanes(owned, lanes, where)
        logman = LogManager(placed, level=level, address=address, allow_remote=allow_remote)
        logman.start()
        result = ConfiguredFunnelHandler(
            logman.queue, on_full=on_full, block_timeout=block_timeout, capacity=capacity
        )
        result.listener = logman
        result._manager_closer = _ManagerCloser(logman, result)  # type: ignore[attr-defined]  # noqa: SLF001
    else:
        if not owned:
            raise ValueError(
                f"{where}: expected the names of the handlers the funnel owns under 'handlers', got none; "
                "list the handlers that should write the records, e.g. 'handlers': ['file']"
            )
        made = FunnelListener(
            None,
            *owned,
            respect_handler_level=respect_handler_level,
            level=level,
            address=address,
            allow_remote=allow_remote,
            lanes=lanes,
            where=where,
        )
        try:
            result = ConfiguredFunnelHandler(
                made.worker_queue, on_full=on_full, block_timeout=block_timeout, capacity=capacity
            )
        except BaseException:
            made.stop()
            raise
        result.listener = made
        made.local_handlers.add(result)
    _configured.add(result)
    return result


class _ManagerCloser(logging.Handler):
    """Stops a ``LogManager`` when ``logging.shutdown`` (or a later dictConfig) closes the handlers."""

    def __init__(self, target: Any, local: ConfiguredFunnelHandler) -> None:
        super().__init__()
        self._target = target
        self._local = weakref.ref(local)
        self._owner = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        if self._owner == os.getpid():
            local = self._local()
            if local is not None:
                local._sink.close(EXIT_TIMEOUT)  # noqa: SLF001
            self._target.stop()
        super().close()


def funnel_handler(name: str | None = None) -> ConfiguredFunnelHandler:
    """The funnel handler a dictConfig made: the one named *name*, or the only one.

    Its ``.queue`` is the handle to give workers and its ``.listener`` the listener (``stats()``).
    """
    live = [h for h in list(_configured) if h.listener is not None and _running(h.listener)]
    if name is not None:
        live = [h for h in live if h.get_name() == name]
    if len(live) == 1:
        return live[0]
    names = sorted(str(h.get_name()) for h in live)
    wanted = "a funnel" if name is None else f"the funnel {name!r}"
    raise LookupError(
        f"logfunnel.config.funnel_handler() looked for {wanted} made by dictConfig and found "
        f"{len(live)} running ({', '.join(names) or 'none'}); "
        + ("pass its name" if len(live) > 1 else "configure one with '()': 'logfunnel.config.funnel'")
    )


def _running(target: Any) -> bool:
    if isinstance(target, LogListener):
        return target._state == "running"  # noqa: SLF001
    return getattr(target, "_conn", None) is not None  # a LogManager: its pipe is open while it runs


# -- the worker side --------------------------------------------------------------------------------


def worker_handler(
    address: str | None = None,
    *,
    on_full: OnFull = "block",
    block_timeout: float = 5.0,
    capacity: int = 10_000,
    flush_on_sigterm: bool = True,
) -> ConfiguredFunnelHandler:
    """A handler that sends to the listener at *address* (None: ``LOGFUNNEL_ADDRESS``).

    For a worker's dictConfig: ``{"()": "logfunnel.config.worker_handler"}`` on the root logger. The
    key comes from ``LOGFUNNEL_AUTHKEY``. Levels stay the worker's configuration's. With
    *flush_on_sigterm*, as with ``install_worker_logging``, a process whose SIGTERM handler is the
    default one ships its buffer before it dies of SIGTERM.
    """
    handler = ConfiguredFunnelHandler(
        address, on_full=on_full, block_timeout=block_timeout, capacity=capacity
    )
    if flush_on_sigterm:
        worker._flush_on_sigterm = True  # noqa: SLF001  (armed when this process first sends)
    return handler


# -- helpers ----------------------------------------------------------------------------------------


def _where(handlers: object, configurator: Any) -> str:
    """``handlers.NAME`` for the dictConfig entry that made this call, if it can be told."""
    parent = getattr(handlers, "parent", None)
    table = getattr(configurator, "config", {}).get("handlers") if configurator is not None else None
    if isinstance(table, dict) and parent is not None:
        for key, value in dict.items(table):
            if value is parent:
                return f"handlers.{key}"
    return "logfunnel.config.funnel()"


def _owned_handler(name: object, configurator: Any, where: str) -> logging.Handler:
    """The handler *name* of the dictConfig being applied, configured now if it is not yet."""
    if isinstance(name, logging.Handler):
        return name
    if not isinstance(name, str):
        raise TypeError(f"{where}: expected handler names, got {type(name).__name__!r}")
    table = getattr(configurator, "config", {}).get("handlers") if configurator is not None else None
    if not isinstance(table, dict):
        raise ValueError(
            f"{where}: cannot look up handler {name!r}: logfunnel.config.funnel() is meant to be called "
            "by dictConfig ('()': 'logfunnel.config.funnel'); called directly, pass handler objects"
        )
    if name not in table:
        raise ValueError(
            f"{where}: no handler named {name!r} in this configuration "
            f"(it has {', '.join(sorted(map(str, table))) or 'none'}); "
            "add it under 'handlers' or fix the name"
        )
    value = table[name]  # a ConvertingDict until dictConfig has made it, then the handler
    if isinstance(value, logging.Handler):
        return value
    # dictConfig makes handlers in sorted name order: make this one now, and leave in its place an
    # entry that hands back the same object when dictConfig reaches it.
    try:
        made: logging.Handler = configurator.configure_handler(value)
    except Exception as exc:
        raise ValueError(f"{where}: handler {name!r} could not be configured: {exc}") from exc
    made.name = name
    table[name] = {"()": functools.partial(_same, made)}
    return made


def _same(handler: logging.Handler) -> logging.Handler:
    return handler


_LANE_OPTIONS = {"capacity", "when_full", "retry", "drain_timeout", "block_timeout", "name"}


def _place_on_lanes(
    handlers: list[logging.Handler], lanes: Mapping[str, Any] | None, where: str
) -> list[logging.Handler]:
    """*handlers* with each one named in *lanes* put on its lane or marked inline, as it says."""
    if lanes is None:
        return handlers
    if not isinstance(lanes, Mapping):
        raise TypeError(
            f"{where}.lanes: expected a mapping of handler names to 'inline', 'lane' or lane options, "
            f"got {type(lanes).__name__!r}"
        )
    by_name = {h.get_name(): h for h in handlers if h.get_name()}
    for name in lanes:
        if name not in by_name:
            raise ValueError(
                f"{where}.lanes.{name}: not one of the funnel's handlers "
                f"({', '.join(sorted(map(str, by_name))) or 'none'}); list it under handlers or remove it"
            )
    placed = []
    for handler in handlers:
        name = handler.get_name()
        if name not in lanes or is_lane(handler):
            placed.append(handler)
            continue
        spec = lanes[name]
        key = f"{where}.lanes.{name}"
        if spec == "inline":
            placed.append(inline(handler))
        elif spec == "lane":
            placed.append(Lane(handler, name=name))
        elif isinstance(spec, Mapping):
            options = dict(spec)
            unknown = sorted(set(options) - _LANE_OPTIONS)
            if unknown:
                raise ValueError(
                    f"{key}: unknown lane options {unknown}; expected {', '.join(sorted(_LANE_OPTIONS))}"
                )
            retry = options.get("retry")
            if isinstance(retry, Mapping):
                try:
                    options["retry"] = Retry(**dict(retry))
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{key}.retry: {exc}") from exc
            options.setdefault("name", name)
            try:
                placed.append(Lane(handler, **options))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key}: {exc}") from exc
        else:
            raise ValueError(f"{key}: expected 'inline', 'lane' or a mapping of lane options, got {spec!r}")
    return placed
