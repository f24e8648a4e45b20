"""The worker side: ``FunnelHandler`` and ``install_worker_logging``.

A worker's logging call only copies the record, merges its message and appends it to a bounded
buffer; a sender thread of the worker's own renders the lines the listener asked for, pickles what
has gathered as one batch and ships it over the process's own connection. Records at ERROR and
above are on the wire before ``emit`` returns, so a crash's last words arrive.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.queues
import multiprocessing.util
import os
import queue as queue_module
import sys
import threading
import time
import weakref
from typing import Any, ClassVar, Literal

from . import _sigterm
from ._checks import check_level, check_seconds
from ._exit import at_exit
from ._handling import UnlockedHandle
from ._queue_sink import QueueSink
from ._sink import SocketSink
from ._transport import QueueHandle, authkey_from_environment, parse_address

__all__ = [
    "FunnelHandler",
    "flush_worker_logging",
    "install_worker_logging",
    "uninstall_worker_logging",
]

OnFull = Literal["block", "drop"]

#: How long an exit hook waits for buffered records to reach the listener.
EXIT_TIMEOUT = 5.0
_exception_formatter = logging.Formatter()
# Threads that run a listener in this process; a FunnelHandler ignores their records, which would
# otherwise travel back to the listener that is handling them, forever.
listener_threads: set[int] = set()
# The QueueHandler seams whose override makes the socket path go through them (see _own_seams).
_SEAMS = ("prepare", "enqueue", "emit")


def _merge(record: logging.LogRecord) -> logging.LogRecord:
    """The socket path's own preparation: merge the message now and render any exception apart.

    No copy is needed: it only sets ``message`` and ``exc_text``, the two attributes every
    ``Formatter`` caches on a record anyway. The merged message is what travels, so arguments mutated
    after the call cannot change it, and the listener's formatters still see the exception apart
    from the message (DESIGN rule 6).
    """
    record.message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = _exception_formatter.formatException(record.exc_info)
    return record


class FunnelHandler(UnlockedHandle, logging.handlers.QueueHandler):
    """A ``QueueHandler`` that ships records to a logfunnel listener over the process's own connection.

    Given a listener's queue handle, ``emit`` merges each record's message (rendering any exception
    to ``exc_text``, kept apart from the message) and appends it to a bounded buffer that a sender
    thread ships; the listener's handlers do the formatting. Given any other queue (anything with
    ``put_nowait``), it behaves as the standard library's ``QueueHandler``: ``emit`` calls
    ``self.enqueue(self.prepare(record))``. A subclass that overrides ``prepare``, ``enqueue`` or
    ``emit`` gets those seams on a listener's queue handle too.
    """

    #: Whether this class keeps FunnelHandler's own ``prepare``, ``enqueue`` and ``emit``; decided
    #: once per class, so the socket path can skip the standard library's copy-and-format ``prepare``.
    _own_seams: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_seams = all(getattr(cls, name) is getattr(FunnelHandler, name) for name in _SEAMS)

    def __init__(
        self,
        queue: Any,
        *,
        on_full: OnFull = "block",
        block_timeout: float = 5.0,
        capacity: int = 10_000,
    ) -> None:
        block_timeout = _check_options(on_full, block_timeout, capacity, "FunnelHandler()")
        target = _resolve_queue(queue)
        super().__init__(target)
        self.on_full = on_full
        self.block_timeout = block_timeout
        self.capacity = capacity
        self._sink: SocketSink | QueueSink
        if isinstance(target, QueueHandle):
            self._sink = SocketSink(target, self, on_start=_register_exit_hooks, on_plan=_apply_plan)
        else:
            self._sink = QueueSink(target, self)
        # emit() skips prepare() and enqueue() only where nobody can tell: the socket path of a class
        # that keeps all three seams as they are here.
        self._direct = isinstance(target, QueueHandle) and self._own_seams

    def prepare(self, record: logging.LogRecord) -> Any:
        """Return a copy of *record* ready for the queue, exactly as ``QueueHandler.prepare`` does.

        The copy's ``msg`` and ``message`` are ``self.format(record)`` (the handler's formatter,
        or the default one), and its ``args``, ``exc_info``, ``exc_text`` (and ``stack_info``) are
        None; *record* itself is left alone for the other handlers. Override it to send something
        else; the socket path then calls it for every record, as ``QueueHandler.emit`` does.
        """
        return super().prepare(record)

    def enqueue(self, record: Any) -> None:
        """Put a prepared record on the queue.

        On a listener's queue handle it is appended to the buffer (for ERROR and above, this waits
        until it is on the wire); on any other queue it is put as ``QueueHandler.enqueue`` does,
        blocking up to ``block_timeout`` or dropping when the queue is full, as ``on_full`` says.
        """
        sink = self._sink
        if isinstance(sink, QueueSink):
            sink.put(record, False)
            return
        if not isinstance(record, logging.LogRecord):
            raise TypeError(
                f"FunnelHandler.enqueue() expected a LogRecord for a logfunnel listener, got "
                f"{type(record).__name__!r} (a prepare() that returns something else needs a plain queue)"
            )
        if "message" not in record.__dict__:
            _merge(record)
        sink.put(record, record.levelno >= logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue *record*: ``self.enqueue(self.prepare(record))``, or the socket path's shortcut."""
        if listener_threads and threading.get_ident() in listener_threads:
            return
        try:
            if self._direct:
                self._sink.put(_merge(record), record.levelno >= logging.ERROR)
            else:
                self.enqueue(self.prepare(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self._sink.flush(EXIT_TIMEOUT)

    def close(self) -> None:
        try:
            self._sink.close(EXIT_TIMEOUT)
        finally:
            super().close()

    @property
    def dropped(self) -> int:
        """Records this process refused because its buffer was full."""
        sink = self._sink
        return sink._dropped if isinstance(sink, SocketSink) else sink.dropped  # noqa: SLF001


def _check_options(on_full: object, block_timeout: object, capacity: object, caller: str) -> float:
    """The buffer's options checked (a NaN block_timeout would wait for ever); block_timeout as a float."""
    if on_full not in ("block", "drop"):
        raise ValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity!r}")
    return check_seconds(block_timeout, caller, "block_timeout", zero=True)


# -- what a worker may be given ---------------------------------------------------------------------

_QUEUE_TYPES: tuple[type, ...] = (
    multiprocessing.queues.Queue,
    multiprocessing.queues.SimpleQueue,
    queue_module.Queue,
)


def _queue_types() -> tuple[type, ...]:
    kinds = list(_QUEUE_TYPES)
    for name in ("multiprocess.queues",):
        module = sys.modules.get(name)
        if module is not None:
            kinds += [module.Queue, module.SimpleQueue]
    return tuple(kinds)


def _is_queue_proxy(obj: Any) -> bool:
    for name in ("multiprocessing.managers", "multiprocess.managers"):
        module = sys.modules.get(name)
        if module is not None and isinstance(obj, module.BaseProxy) and hasattr(obj, "put"):
            return True
    return False


def _resolve_queue(queue: Any) -> Any:
    if queue is None:
        handle = QueueHandle.from_environment()
        if handle is None:
            raise TypeError(
                "install_worker_logging() needs a queue: none was given and LOGFUNNEL_ADDRESS is not set "
                "(start a listener in a parent process, or pass its .queue)"
            )
        return handle
    if isinstance(queue, QueueHandle):
        return queue
    if isinstance(queue, str):
        parse_address(queue)
        key = authkey_from_environment()
        if not key:
            raise ValueError(
                f"to join {queue!r} by address, LOGFUNNEL_AUTHKEY must hold the listener's auth key"
            )
        return QueueHandle(queue, key)
    inner = getattr(queue, "worker_queue", None)
    if not isinstance(inner, QueueHandle):
        inner = getattr(queue, "queue", None)
    if isinstance(inner, QueueHandle):  # a listener or manager given in place of its .queue
        return inner
    config = sys.modules.get("logfunnel.config")
    handle = None if config is None else config.handle_reading(queue)
    if handle is not None:  # the queue.Queue a FunnelListener reads: a fork child could not reach it
        return handle
    if isinstance(queue, _queue_types()) or _is_queue_proxy(queue):
        return queue
    if callable(getattr(queue, "put_nowait", None)):  # any queue-like object, as QueueHandler takes
        return queue  # (3.12+ dictConfig hands in user classes that only have put_nowait and get)
    raise TypeError(
        "install_worker_logging() expected a logfunnel queue, an address like 'unix:/path' or a "
        f"multiprocessing queue, got {type(queue).__name__!r}"
    )


# -- process-wide state and hooks -------------------------------------------------------------------

_install_lock = threading.RLock()
_hooks_pid = 0
_flush_on_sigterm = False


def _after_fork_in_child() -> None:
    global _install_lock
    _install_lock = threading.RLock()
    _sigterm.after_fork_in_child()
    listener_threads.clear()  # the parent's listener threads are not ours; their idents get reused


os.register_at_fork(after_in_child=_after_fork_in_child)


#: Funnel handlers not on the root logger that this process's exit (atexit, a multiprocessing
#: child's finalizers, SIGTERM) must flush too: config's fork-child stand-in for a parent's queue.
also_closed: weakref.WeakSet[FunnelHandler] = weakref.WeakSet()


def _close_all(timeout: float = EXIT_TIMEOUT) -> None:
    for handler in [*_installed_handlers(), *also_closed]:
        handler._sink.close(timeout)  # noqa: SLF001


def _register_exit_hooks() -> None:
    """Flush at every normal exit of this process, including a fork child's ``os._exit``."""
    global _hooks_pid
    if _hooks_pid == os.getpid():
        return
    _hooks_pid = os.getpid()
    if _flush_on_sigterm:  # re-arm in a fork child that inherited the handler (main thread only)
        _sigterm.install(_close_all)
    at_exit(_close_all)


def _installed_handlers() -> list[FunnelHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, FunnelHandler)]


# -- levels and handlers: the listener decides ------------------------------------------------------
#
# A worker's records all go to the funnel, once: install takes every handler off every logger (a fork
# child inherits its parent's, which would write each line again) and lets every logger propagate to
# the root, where the FunnelHandler is. Levels come from the listener when the worker connects; a
# level that the worker's own code set stays, and a level set here is changed again only while it is
# still the one set here.

_explicit_root = False  # install_worker_logging(level=...) was given: the worker's root level stays
_applied: dict[str, int] = {}  # logger name -> the level the listener's plan set on it
_disabled: set[str] = set()  # loggers the listener's plan disabled
_saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []  # what install took off


def _apply_plan(plan: dict[str, Any]) -> None:
    """Set the levels (and disabled loggers) that the listener's plan asks for, where ours are free."""
    levels = plan.get("levels")
    if type(levels) is not dict:
        return
    for name, level in levels.items():
        if type(name) is not str or type(level) is not int:
            continue
        if name == "" and _explicit_root:
            continue
        logger = logging.getLogger(name)  # "" is the root
        if logger.level == logging.NOTSET or _applied.get(name) == logger.level or name == "":
            if logger.level != level:
                logger.setLevel(level)
            _applied[name] = level
    for name in [n for n in _applied if n not in levels]:
        logger = logging.getLogger(name)  # "" is the root
        if logger.level == _applied.pop(name):
            logger.setLevel(logging.NOTSET)
    disabled = {n for n in plan.get("disabled") or () if type(n) is str and n}
    for name in disabled - _disabled:
        logger = logging.getLogger(name)
        if not logger.disabled:
            logger.disabled = True
            _disabled.add(name)
    for name in _disabled - disabled:
        logging.getLogger(name).disabled = False
        _disabled.discard(name)


def _take_over_loggers(root: logging.Logger) -> None:
    """Take every handler off every logger and let every logger propagate to the root."""
    loggers = [root] + [
        logger for logger in list(root.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        keep = [
            h for h in logger.handlers if logger is not root and type(h) is logging.NullHandler
        ]  # a library's NullHandler writes nothing; leave it where the library put it
        taken = [h for h in logger.handlers if h not in keep and not isinstance(h, FunnelHandler)]
        if taken or not logger.propagate:
            _saved.append((logger, taken, logger.propagate))
        for handler in taken:
            logger.removeHandler(handler)  # not closed: in a fork child they are the parent's objects
        if logger is not root:
            logger.propagate = True


def _give_back_loggers() -> None:
    """Undo ``_take_over_loggers``: the handlers and ``propagate`` each logger had before install."""
    while _saved:
        logger, handlers, propagate = _saved.pop()
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = propagate
    for name, level in list(_applied.items()):
        logger = logging.getLogger(name)  # "" is the root
        if logger.level == level and name:
            logger.setLevel(logging.NOTSET)
    _applied.clear()
    for name in _disabled:
        logging.getLogger(name).disabled = False
    _disabled.clear()


def install_worker_logging(
    queue: Any = None,
    *,
    level: int | str | None = None,
    on_full: OnFull = "block",
    block_timeout: float = 5.0,
    capacity: int = 10_000,
    flush_on_sigterm: bool = True,
) -> FunnelHandler:
    """Send this process's logging to a listener; return the installed ``FunnelHandler``.

    *queue* is a listener's ``.queue`` handle, an address string (``unix:/path``,
    ``tcp://127.0.0.1:PORT``, with the key in ``LOGFUNNEL_AUTHKEY``), None to join the listener
    named by ``LOGFUNNEL_ADDRESS``, or a ``multiprocessing``/``multiprocess`` queue or queue proxy.

    Every record of this process then goes to the listener exactly once: the handler replaces the
    root logger's handlers and takes the handlers off every other logger too (a fork child inherits
    its parent's, which would write each line twice), and every logger propagates to the root. The
    listener does the routing. With *level* None, the listener decides the levels: it tells this
    process, when it connects, the levels of its configuration (or of its handlers), so that no
    record is made that it would discard; a level that this process's own code sets still wins
    here. An explicit *level* sets the root logger's level and keeps it. Calling it again with the
    same queue returns the same handler, so it is safe as a ``Pool`` initializer and in every task.

    When the buffer holds *capacity* records, ``on_full="block"`` waits up to *block_timeout*
    seconds for room and then drops; ``"drop"`` drops at once. Drops are counted and reported to the
    listener. With *flush_on_sigterm*, a process whose SIGTERM handler is the default one ships its
    buffer before it dies of SIGTERM (``Pool.terminate()``).
    """
    _check_options(on_full, block_timeout, capacity, "install_worker_logging()")
    target = _resolve_queue(queue)
    root_level = None if level is None else check_level(level, "install_worker_logging()")
    root = logging.getLogger()
    global _explicit_root
    with _install_lock:
        current = _installed_handlers()
        if len(current) == 1 and len(root.handlers) == 1 and current[0].queue == target:
            handler = current[0]
            new = False
        else:
            handler = FunnelHandler(target, on_full=on_full, block_timeout=block_timeout, capacity=capacity)
            for old in current:
                root.removeHandler(old)
                old.close()
            _take_over_loggers(root)
            root.addHandler(handler)
            new = True
        _explicit_root = root_level is not None
        if root_level is not None:
            root.setLevel(root_level)
        elif new:
            root.setLevel(logging.NOTSET)  # nothing is decided here until the listener has spoken
            _applied.pop("", None)
        _register_exit_hooks()
        global _flush_on_sigterm
        _flush_on_sigterm = flush_on_sigterm
        if flush_on_sigterm:
            _sigterm.install(_close_all)
    if new and isinstance(handler._sink, SocketSink):  # noqa: SLF001
        handler._sink.connect_now()  # noqa: SLF001
    return handler


def flush_worker_logging(timeout: float | None = None) -> bool:
    """Wait until this process's buffered records are on their way; False if *timeout* ran out.

    Call it before ``os._exit()``, which skips every exit hook. After a complete flush the listener
    is also told this process's totals, so that an ``os._exit()`` right after is reported as an
    exit with nothing lost rather than as a process that vanished.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    handlers = _installed_handlers()
    for handler in handlers:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not handler._sink.flush(remaining):  # noqa: SLF001
            return False
    for handler in handlers:  # the totals, so that an os._exit() now is reported as an exit
        sink = handler._sink  # noqa: SLF001
        if isinstance(sink, SocketSink):
            sink.checkpoint(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return True


def uninstall_worker_logging() -> None:
    """Flush and remove the handler that ``install_worker_logging`` installed."""
    root = logging.getLogger()
    with _install_lock:
        for handler in _installed_handlers():
            root.removeHandler(handler)
            handler.close()
        _give_back_loggers()
        _sigterm.uninstall()
