"""``LogManager``: the listener in a process of its own.

The parent of a real application is busy (a web master, a celery main process, a training loop). A
manager process keeps the listener off its GIL, outlives nothing it should not (it drains and exits
within two seconds of its parent's death, even by SIGKILL), and can be started again on the same
address, where the workers find it and deliver what their buffers still hold.

Handlers cross to the manager with their attributes (lambdas and closures included, through ``dill``)
but not their locks or open streams: each gets a fresh lock, and files are reopened in the manager.
"""

from __future__ import annotations

import atexit
import collections
import functools
import io
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._checks import check_address, check_handlers, check_level
from ._exit import CleanUp
from ._handling import banner
from ._lane_delivery import _Intercept
from ._lanes import Lane
from ._transport import QueueHandle, Saved, publish, withdraw
from .listener import LogListener

if TYPE_CHECKING:
    # multiprocess, dill and psutil are imported where a manager starts, never by `import logfunnel`:
    # together they cost ~100 modules and ~60 ms, and dill keeps `__main__` alive until late in the
    # interpreter's shutdown, after `logging` is torn down, so a `__del__` that logs at exit is lost.
    import psutil

__all__ = ["LogManager", "ManagerStartError"]

_POLL = 0.2  # how often the manager looks at its parent and its control pipe
_READY_TIMEOUT = 60.0
_RATE_WINDOW = 5.0  # seconds over which stats() reports records per second and CPU
_STD_STREAMS = {"<stdout>": "stdout", "<stderr>": "stderr"}


# -- handlers across a process boundary ------------------------------------------------------------


def _rebuild_handler(cls: type[logging.Handler], state: dict[str, Any], std: str | None) -> logging.Handler:
    handler = cls.__new__(cls)
    handler.__dict__.update(state)
    handler.createLock()
    if std is not None:
        handler.stream = getattr(sys, std)  # type: ignore[attr-defined]
    logging._addHandlerRef(handler)  # type: ignore[attr-defined]  # noqa: SLF001  (flushed at shutdown)
    return handler


def _reduce_handler(obj: Any) -> Any:
    """A handler travels without its lock and its open stream; anything else as dill sees fit."""
    if not isinstance(obj, logging.Handler):
        return NotImplemented
    if isinstance(obj, Lane):
        return obj.__reduce__()  # its target and options; its thread and buffer stay here
    state = dict(obj.__dict__)
    state.pop("lock", None)
    if isinstance(state.get("handleError"), _Intercept):
        del state["handleError"]  # a lane's hook on its target, not part of the handler
    std = None
    stream = state.get("stream")
    if isinstance(obj, logging.FileHandler):
        state["stream"] = None  # reopened in the manager, on the first record
        if stream is not None and obj.mode == "w":
            state["mode"] = "a"  # the parent already truncated it; do not lose what is there
    elif stream is not None:
        std = next((name for key, name in _STD_STREAMS.items() if getattr(stream, "name", None) == key), None)
        if std is not None:
            state["stream"] = None
    if "sock" in state:
        state["sock"] = None  # SocketHandler and friends reconnect on their own
    return _rebuild_handler, (type(obj), state, std)


@functools.cache
def _handler_pickler() -> Any:
    import dill

    class _HandlerPickler(dill.Pickler):  # type: ignore[misc]
        """dill, except that a handler travels without its lock and its open stream."""

        def reducer_override(self, obj: Any) -> Any:
            return _reduce_handler(obj)

    return _HandlerPickler


def _dump_handlers(handlers: list[logging.Handler]) -> bytes:
    pickler = _handler_pickler()
    for handler in handlers:  # one at a time first, so that a failure can name its handler
        try:
            pickler(io.BytesIO(), recurse=True).dump(handler)
        except Exception as exc:
            raise TypeError(
                f"LogManager() cannot send {handler!r} to the manager process ({type(exc).__name__}: "
                f"{exc}); an object such as an ssl.SSLContext or an open socket cannot cross a process "
                "boundary: pass config= (a dictConfig dict, built in the manager) instead of handlers="
            ) from exc
    buffer = io.BytesIO()
    pickler(buffer, recurse=True).dump(handlers)
    return buffer.getvalue()


# -- the manager process ---------------------------------------------------------------------------


class _Health:
    """The manager's own figures, for stats(): pid, memory, CPU, recent records per second.

    Rates are measured from a sample taken at the manager's launch (no records, no CPU time: a new
    process starts both at zero), so the first stats() already reads real figures, not 0.0.
    """

    def __init__(self, launched: float) -> None:
        import psutil

        self.process = psutil.Process()
        # time.process_time() is this process's CPU time to the nanosecond; psutil reads it in clock
        # ticks (10 ms), which makes a first reading after a quick start look like 0.0.
        self.samples: collections.deque[tuple[float, int, float]] = collections.deque([(launched, 0, 0.0)])

    def __call__(self, listener: LogListener) -> dict[str, Any]:
        stats = listener.stats()
        now, cpu = time.monotonic(), time.process_time()
        samples = self.samples
        samples.append((now, stats["received"], cpu))
        # Measure from the latest sample at least _RATE_WINDOW old (or the oldest there is).
        while len(samples) > 2 and samples[1][0] <= now - _RATE_WINDOW:
            samples.popleft()
        then, received_then, cpu_then = samples[0]
        elapsed = now - then
        stats["manager"] = {
            "pid": self.process.pid,
            "rss": self.process.memory_info().rss,
            "cpu_percent": 100.0 * (cpu - cpu_then) / elapsed if elapsed > 0 else 0.0,
            "records_per_second": (stats["received"] - received_then) / elapsed if elapsed > 0 else 0.0,
            "backlog": listener.backlog_bytes(),
            # A handler inline keeps no queue (0); one on a lane has the records waiting there.
            "handlers": listener._dispatcher.handler_figures(),  # noqa: SLF001
            "lanes": stats["lanes"],
        }
        return stats


def _qualified_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _serve(
    conn: Any,
    payload: bytes,
    config: dict[str, Any] | None,
    options: dict[str, Any],
    parent_pid: int,
    launched: float,
    private_dir: str | None = None,
) -> None:
    """The manager process: run a listener until told to stop, or until the parent is gone.

    A module-level function, so that spawn and forkserver children can import it.
    """
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    listener = None
    try:
        import dill
        import psutil

        health = _Health(launched)
        parent = psutil.Process(parent_pid)
        handlers = dill.loads(payload)
        if config is not None:
            logging.config.dictConfig(config)
        listener = LogListener(None, *handlers, **options)
        listener.start()
    except BaseException as exc:
        if listener is not None:
            listener.stop()  # closes the socket and removes its file
        try:
            conn.send(("error", _qualified_name(type(exc)), str(exc), traceback.format_exc()))
        except OSError:
            pass  # the parent gave up on us
        return
    conn.send(("ready", listener.address, os.getpid()))
    # Under fork and spawn the parent is our parent; under forkserver it is not, so ask psutil.
    direct_child = os.getppid() == parent_pid
    while not stopping.is_set():
        try:
            if conn.poll(_POLL):
                request = conn.recv()
                if request == "stop":
                    break
                if isinstance(request, tuple) and request[0] == "stats":
                    conn.send(("stats", request[1], health(listener)))
                elif isinstance(request, tuple) and request[0] == "level":
                    listener.set_level(request[1])
        except (EOFError, OSError):
            break  # the parent closed its end: it is gone, or it gave up on us
        if (direct_child and os.getppid() != parent_pid) or not _alive(parent):
            banner(f"the parent {parent_pid} is gone; draining and exiting")
            break
    listener.stop()
    final = health(listener)
    # Not a handler stuck in a hung server (its lane was abandoned): closing it would wait forever.
    listener._dispatcher.close_handlers()  # noqa: SLF001
    logging.shutdown()
    if private_dir is not None:
        # Made by the parent, which removes it at stop(); but a parent killed outright never will.
        shutil.rmtree(private_dir, ignore_errors=True)
    try:
        conn.send(("stopped", final))
    except OSError:
        pass


def _alive(process: psutil.Process) -> bool:
    import psutil

    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


# -- the parent's side -----------------------------------------------------------------------------

_managers: weakref.WeakSet[LogManager] = weakref.WeakSet()


class ManagerStartError(RuntimeError):
    """The manager process failed to start. The message begins with the manager's own exception
    (type and message), then its traceback; ``child_type`` names that exception's type."""

    def __init__(self, message: str, child_type: str | None = None) -> None:
        super().__init__(message)
        self.child_type = child_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.child_type))


class LogManager:
    """A ``LogListener`` in a process of its own, started through ``multiprocess``.

    Give it *handlers* (they cross to the manager process with their lambdas and closures, even
    under spawn and forkserver) or a ``logging.config.dictConfig`` *config* to build there; with
    neither, records go through the manager process's own logging configuration. Give workers
    ``manager.queue``. Start it again with the same *address* and *authkey* after it died, and the
    workers reconnect and deliver what they still hold. A TCP *address* beyond loopback is refused
    unless *allow_remote* is True.

    The arguments are checked here, in the caller, before any process or folder exists; a manager
    that fails to start leaves neither a process nor a temporary folder behind.
    """

    def __init__(
        self,
        handlers: Iterable[logging.Handler] | None = None,
        *,
        config: dict[str, Any] | None = None,
        level: int | str = logging.NOTSET,
        respect_handler_level: bool = True,
        address: str | None = None,
        authkey: bytes | None = None,
        start_method: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        caller = "LogManager()"
        if handlers is not None and config is not None:
            raise TypeError("LogManager() takes handlers or a config, not both")
        self.handlers = check_handlers(handlers, caller)
        if config is not None and not isinstance(config, dict):
            raise TypeError(
                f"{caller} expected config as a logging.config.dictConfig dict, got {type(config).__name__!r}"
            )
        checked_level = check_level(level, caller)
        self.address = check_address(address, caller, allow_remote)
        if authkey is not None and (not isinstance(authkey, bytes) or not authkey):
            raise TypeError(
                f"{caller} expected authkey as non-empty bytes (or None for a fresh key), "
                f"got {type(authkey).__name__!r}"
                + (": pass bytes.fromhex(key)" if isinstance(authkey, str) else "")
            )
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise ValueError(
                f"{caller} got an unknown start_method {start_method!r} "
                f"(expected None or one of {', '.join(methods)})"
            )
        self.config = config
        self.authkey = authkey or os.urandom(32)
        self.start_method = start_method
        self._options = {
            "level": checked_level,
            "respect_handler_level": respect_handler_level,
            "allow_remote": allow_remote,
        }
        self._process: Any = None
        self._conn: Any = None
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._final: dict[str, Any] | None = None
        self._died = False  # it had died when stop() came
        self._saved_env: Saved | None = None
        self._requests = 0
        self._private_dir: CleanUp | None = None
        self.pid: int | None = None

    @property
    def queue(self) -> QueueHandle:
        """The picklable handle to give workers (known once the manager has started)."""
        if self.address is None or self.pid is None:
            raise RuntimeError("start the LogManager before asking for its queue")
        return QueueHandle(self.address, self.authkey)

    def start(self, timeout: float = _READY_TIMEOUT) -> LogManager:
        """Start the manager process and wait until it listens."""
        if self._process is not None:
            raise RuntimeError("this LogManager was already started")
        import multiprocess

        address, private = self.address, None
        if address is None:
            # The folder of the private socket is made and removed here, in the parent, so that it
            # goes even when the manager process is killed, or dies before it could listen.
            private = tempfile.mkdtemp(prefix="logfunnel-")  # mode 0700
            # Removed by stop() (at exit, _stop_all()), after the manager has drained.
            self._private_dir = CleanUp(self, shutil.rmtree, private, True)
            address = f"unix:{os.path.join(private, 'listener.sock')}"
        try:
            ctx = multiprocess.get_context(self.start_method)
            payload = _dump_handlers(self.handlers)
            self._conn, child_end = ctx.Pipe()
            options = dict(self._options, address=address, authkey=self.authkey)
            process = ctx.Process(
                target=_serve,
                args=(child_end, payload, self.config, options, os.getpid(), time.monotonic(), private),
                name="logfunnel-manager",
                daemon=True,
            )
            try:
                process.start()
            finally:
                child_end.close()
            self._process = process  # only a process that started is one to join or kill
            reply = self._wait_until_ready(timeout)
        except BaseException:
            self._abandon()
            raise
        _, self.address, self.pid = reply
        self._saved_env = publish(self.queue)
        _managers.add(self)
        return self

    def _wait_until_ready(self, timeout: float) -> tuple[Any, ...]:
        process = self._process
        if not self._conn.poll(timeout):
            process.kill()
            raise ManagerStartError(f"the log manager (pid {process.pid}) did not start within {timeout} s")
        try:
            reply: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError):
            process.join(5)
            raise ManagerStartError(
                f"the log manager (pid {process.pid}) exited with code {process.exitcode} before it "
                "listened; its stderr above says why"
            ) from None
        if reply[0] != "ready":
            _, kind, message, child_traceback = reply
            raise ManagerStartError(
                f"{kind}: {message}\n\nThe log manager (pid {process.pid}) failed to start:\n"
                f"{child_traceback}",
                kind,
            )
        return reply

    def _abandon(self) -> None:
        """After a failed start: no process, no pipe, no folder left; the manager may start again."""
        process, self._process = self._process, None
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._private_dir is not None:
            self._private_dir()
            self._private_dir = None

    def _ended(self, timeout: float) -> bool:
        """Whether the manager process has ended within *timeout* s (its sentinel, which a reap by
        someone else does not hide, unlike ``is_alive()``)."""
        import multiprocess.connection

        process = self._process
        if process is None:
            return True
        try:
            return bool(multiprocess.connection.wait([process.sentinel], timeout))
        except (OSError, ValueError):
            return not process.is_alive()

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The listener's figures, fetched from the manager, with its own health under ``manager``:
        ``pid``, ``rss``, ``cpu_percent`` and ``records_per_second`` (over the last 5 s, or since the
        manager started), ``backlog`` (bytes received but not yet handled), ``handlers`` (each
        handler's repr and ``backlog``: records waiting on its lane, 0 for one inline) and ``lanes``
        (every lane's figures, as in ``LogListener.stats()``)."""
        if self._final is not None:
            return self._final
        if self._died:
            raise RuntimeError(
                f"the log manager (pid {self.pid}) died before it was stopped; its figures are lost"
            )
        if self._conn is None:
            raise RuntimeError("the LogManager is not running")
        with self._lock:
            self._requests += 1
            request = self._requests
            deadline = time.monotonic() + timeout
            try:
                self._conn.send(("stats", request))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._conn.poll(remaining):
                        raise TimeoutError(
                            f"the log manager (pid {self.pid}) did not answer within {timeout} s"
                        )
                    reply = self._conn.recv()
                    # The late answer to a request that timed out is stale: it is not this one's.
                    if reply[0] == "stats" and reply[1] == request:
                        return reply[2]  # type: ignore[no-any-return]
            except (EOFError, BrokenPipeError, ConnectionResetError):
                raise RuntimeError(f"the log manager (pid {self.pid}) is gone") from None

    def set_level(self, level: int | str) -> None:
        """Have the manager's listener skip records below *level* (``LogListener.set_level``)."""
        checked = check_level(level, "LogManager.set_level()")
        if self._conn is None or self._final is not None:
            raise RuntimeError("the LogManager is not running")
        with self._lock:
            try:
                self._conn.send(("level", checked))
            except (BrokenPipeError, ConnectionResetError, OSError):
                raise RuntimeError(f"the log manager (pid {self.pid}) is gone") from None
        self._options["level"] = checked

    def stop(self, timeout: float | None = None) -> None:
        """Have the manager handle everything already sent, close its handlers and exit."""
        if self._process is None or self._conn is None or os.getpid() != self._owner:
            return
        with self._lock:
            try:
                self._conn.send("stop")
                deadline = None if timeout is None else time.monotonic() + timeout
                while True:  # skip a stats reply still in the pipe
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if not self._conn.poll(remaining):
                        break
                    reply = self._conn.recv()
                    if reply[0] == "stopped":
                        self._final = reply[1]
                        break
            except (EOFError, OSError):
                pass  # it is already gone
            wait = timeout if timeout is not None else 30
            if self._final is None and self._ended(0.5):
                # It ended before it was stopped: drained and left after a SIGTERM (status 0), or
                # died (killed, OOM). Someone else may have reaped it (a gunicorn master reaps every
                # child; its status is then unknown here), so join() would wait in vain and its pid may
                # be another process's already: it is neither waited for nor killed.
                self._process.join(0.1)
                code = self._process.exitcode
                if code != 0:
                    self._died = True
                    how = "its exit status is unknown here" if code is None else f"exit status {code}"
                    banner(
                        f"the log manager (pid {self.pid}) had died before it was stopped ({how}): "
                        "records it had received and not yet written are lost (the workers report "
                        "what they could not send)"
                    )
            elif not self._ended(wait):
                banner(f"the log manager (pid {self.pid}) did not exit; killing it")
                self._process.kill()
            self._process.join(0.1 if self._died else 5)
            self._conn.close()
            self._conn = None
            if self._private_dir is not None:
                self._private_dir()
                self._private_dir = None
        withdraw(self.address, self._saved_env)
        self._saved_env = None

    def __enter__(self) -> LogManager:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _forget_after_fork(self) -> None:
        # A forked child must not hold the parent's end of the pipe (the manager would not see the
        # parent's death) and must never stop the parent's manager at its own exit.
        # A raw os.fork (gunicorn's workers) keeps multiprocess's list of the parent's children, and
        # at the child's exit multiprocess's atexit handler sent SIGTERM to every daemonic one (our
        # manager: it drained and stopped, for every worker) and then failed on "can only join a
        # child process", which aborted the finalizers that flush the child's records.
        children = getattr(sys.modules.get("multiprocess.process"), "_children", None)
        if self._process is not None and children is not None:
            children.discard(self._process)
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
        if self._private_dir is not None:
            self._private_dir.detach()  # the parent's to remove
            self._private_dir = None


def _after_fork_in_child() -> None:
    for manager in list(_managers):
        manager._forget_after_fork()  # noqa: SLF001


def _stop_all() -> None:
    for manager in list(_managers):
        manager.stop(timeout=10)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_all)
