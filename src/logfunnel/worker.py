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
from typing import Any, ClassVar, Literal

from . import _sigterm
from ._exit import at_exit
from ._handling import UnlockedHandle
from ._sink import QueueSink, SocketSink
from ._transport import QueueHandle, parse_address

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
        if on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        target = _resolve_queue(queue)
        super().__init__(target)
        self.on_full = on_full
        self.block_timeout = block_timeout
        self.capacity = capacity
        self._sink: SocketSink | QueueSink
        if isinstance(target, QueueHandle):
            self._sink = SocketSink(target, self, on_start=_register_exit_hooks)
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
        key = os.environ.get("LOGFUNNEL_AUTHKEY")
        if not key:
            raise ValueError(
                f"to join {queue!r} by address, LOGFUNNEL_AUTHKEY must hold the listener's auth key"
            )
        return QueueHandle(queue, bytes.fromhex(key))
    inner = getattr(queue, "queue", None)
    if isinstance(inner, QueueHandle):  # a listener or manager given in place of its .queue
        return inner
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


def _close_all(timeout: float = EXIT_TIMEOUT) -> None:
    for handler in _installed_handlers():
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


def install_worker_logging(
    queue: Any = None,
    *,
    level: int | str = logging.NOTSET,
    on_full: OnFull = "block",
    block_timeout: float = 5.0,
    capacity: int = 10_000,
    flush_on_sigterm: bool = True,
) -> FunnelHandler:
    """Send this process's logging to a listener; return the installed ``FunnelHandler``.

    *queue* is a listener's ``.queue`` handle, an address string (``unix:/path``,
    ``tcp://127.0.0.1:PORT``, with the key in ``LOGFUNNEL_AUTHKEY``), None to join the listener
    named by ``LOGFUNNEL_ADDRESS``, or a ``multiprocessing``/``multiprocess`` queue or queue proxy.
    The handler replaces the root logger's handlers (ones inherited from a parent would write every
    line twice) and the root level is set to *level*. Calling it again with the same queue returns the
    same handler, so it is safe as a ``Pool`` initializer and inside every task.

    When the buffer holds *capacity* records, ``on_full="block"`` waits up to *block_timeout*
    seconds for room and then drops; ``"drop"`` drops at once. Drops are counted and reported to the
    listener. With *flush_on_sigterm*, a process whose SIGTERM handler is the default one ships its
    buffer before it dies of SIGTERM (``Pool.terminate()``).
    """
    target = _resolve_queue(queue)
    root = logging.getLogger()
    with _install_lock:
        current = _installed_handlers()
        if len(current) == 1 and len(root.handlers) == 1 and current[0].queue == target:
            handler = current[0]
        else:
            for old in list(root.handlers):
                root.removeHandler(old)  # not closed: in a fork child they are the parent's objects
                if isinstance(old, FunnelHandler):
                    old.close()
            handler = FunnelHandler(target, on_full=on_full, block_timeout=block_timeout, capacity=capacity)
            root.addHandler(handler)
        root.setLevel(level)
        _register_exit_hooks()
        global _flush_on_sigterm
        _flush_on_sigterm = flush_on_sigterm
        if flush_on_sigterm:
            _sigterm.install(_close_all)
    return handler


def flush_worker_logging(timeout: float | None = None) -> bool:
    """Wait until this process's buffered records are on their way; False if *timeout* ran out.

    Call it before ``os._exit()``, which skips every exit hook.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for handler in _installed_handlers():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not handler._sink.flush(remaining):  # noqa: SLF001
            return False
    return True


def uninstall_worker_logging() -> None:
    """Flush and remove the handler that ``install_worker_logging`` installed."""
    root = logging.getLogger()
    with _install_lock:
        for handler in _installed_handlers():
            root.removeHandler(handler)
            handler.close()
        _sigterm.uninstall()
