"""``logfunnel serve``: a listener for a whole host, as a foreground service; and start-or-join.

``serve(config)`` configures this process's logging from the file (``_configfile``), starts a listener
in routed mode (each received record goes through that configuration, as in one process) and the
receiver when the file asks for one (its records enter the listener as a worker's do, so the same
routing and levels apply, and ``logfunnel stats`` and ``tail`` see them), writes the state file
(``_host``) and waits: ``SIGHUP`` reopens
every log file that was moved or removed (logrotate), ``SIGTERM``/``SIGINT`` drain and exit 0 with a
one-line summary. It holds the state file's serve lock for its whole life, so a second serve for the
same state file refuses to start, and a joiner can tell a live serve from a dead one's leftovers.

``join_host_funnel(config, state_file=...)`` returns the handle of the serve running for the state
file, starting one first (a detached ``python -m logfunnel serve`` in a session of its own, which
outlives its starter) when none runs. Of many processes calling it at once, exactly one starts it:
the decision is taken under the state file's start lock.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from . import _configfile, _host
from ._configfile import ConfigError
from ._transport import ADDRESS_ENV, AUTHKEY_ENV, COUNTS_ENV, QueueHandle, publish

__all__ = ["FunnelNotRunning", "join_host_funnel", "reopen_files", "serve"]

_PROG = "logfunnel serve"
_POLL = 0.02
_LOCK_PATIENCE = 2.0  # seconds a starting serve waits for its lock before it says another one runs


class FunnelNotRunning(RuntimeError):
    """No serve runs for the state file, and none could be (or was asked to be) started."""


# -- SIGHUP: reopen ---------------------------------------------------------------------------------


def _moved(handler: logging.FileHandler) -> bool:
    """Whether the file at *handler*'s path is not the one it has open (rotated away, or removed)."""
    stream = handler.stream
    if stream is None:
        return False  # delay=True and nothing written yet: it opens the path when it first writes
    try:
        at_path = os.stat(handler.baseFilename)
        open_now = os.fstat(stream.fileno())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return (at_path.st_dev, at_path.st_ino) != (open_now.st_dev, open_now.st_ino)


def reopen_files() -> int:
    """Reopen every file handler of this process whose file was moved or removed (what
    ``WatchedFileHandler`` does, for all of them); flush the other stream handlers. Returns how many
    were reopened. What ``logfunnel serve`` does on ``SIGHUP``."""
    reopened = 0
    refs = list(logging._handlerList)  # type: ignore[attr-defined]  # noqa: SLF001
    for ref in refs:
        handler = ref()
        handler = getattr(handler, "target", handler)  # a Lane: its target
        if not isinstance(handler, logging.StreamHandler):
            continue
        try:
            if not isinstance(handler, logging.FileHandler):
                handler.flush()
            elif callable(getattr(handler, "_sync_stream", None)):
                handler.reopenIfNeeded()  # type: ignore[attr-defined]  # logfunnel's Locked*: its own lock
                reopened += 1
            else:
                with handler.lock:  # type: ignore[union-attr]
                    if _moved(handler):
                        old, handler.stream = handler.stream, None
                        try:
                            if old is not None:
                                old.close()
                        finally:
                            handler.stream = handler._open()  # noqa: SLF001
                        reopened += 1
        except Exception as exc:  # one bad handler must not stop the others, nor the service
            from ._handling import banner

            banner(f"{_PROG}: could not reopen {handler!r} on SIGHUP: {exc!r}")
    return reopened


# -- signals --------------------------------------------------------------------------------------------


class _Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reopen; the main loop waits on them."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.stop: str | None = None
        self.reopen = False
        self._saved: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._saved[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reopen = True
        else:
            self.stop = signal.Signals(signum).name
        self.event.set()

    def wait(self) -> None:
        self.event.wait(1.0)
        self.event.clear()

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)


# -- serve ----------------------------------------------------------------------------------------------


def _say(text: str, stream: IO[str] | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _count(n: int, noun: str) -> str:
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _join_text(handle: QueueHandle, state: Path, receiver: Any) -> str:
    lines = [
        f"{_PROG}: listening at {handle.address} (pid {os.getpid()}); state file {state}",
        "  join from Python:  logfunnel.install_worker_logging(logfunnel.join_host_funnel("
        f"state_file={os.fspath(state)!r}))",
        f"  or by environment: export {ADDRESS_ENV}={handle.address}",
        f"                     export {AUTHKEY_ENV}=\"$(python3 -c 'import json,sys; "
        f'print(json.load(open(sys.argv[1]))["authkey"])\' {os.fspath(state)})"',
        "                     and call logfunnel.install_worker_logging() with no argument",
    ]
    if receiver is not None:
        for kind, address, cls in (
            ("tcp", receiver.tcp_address, "SocketHandler"),
            ("udp", receiver.udp_address, "DatagramHandler"),
        ):
            if address is not None:
                lines.append(f"  stdlib {cls} clients: {address[0]}:{address[1]} ({kind})")
    return "\n".join(lines)


class _LoggerLevels(logging.Filter):
    """What ``Logger.handle`` checks, for a received record, before the funnel takes it (as a worker's
    logger does before its record is sent): its logger's level and ``disabled``. A name no logger has
    is judged by its nearest existing ancestor, so a peer cannot make this process create loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ._receiver import existing_logger

        logger = existing_logger(record.name)
        if logger.disabled and logger.name == record.name:
            return False
        return logger.isEnabledFor(record.levelno)


def _summary(stop: str, seconds: float, stats: dict[str, Any], received_stdlib: int | None) -> str:
    # The receiver's records reach the listener through this process's own connection: they are
    # counted as the stdlib clients', not as one more process's.
    own = [p for p in stats["processes"] if p.get("pid") == os.getpid()]
    processes = len(stats["processes"]) - len(own) + stats["folded_processes"]
    received = stats["received"] - sum(int(p.get("received", 0)) for p in own)
    text = (
        f"{_PROG}: stopped by {stop} after {seconds:.1f} s: {received} records received from "
        f"{_count(processes, 'process')}, {stats['dropped']} dropped, {stats['lost']} lost"
    )
    if received_stdlib is not None:
        text += f"; {received_stdlib} from stdlib socket clients"
    return text


def _state_pid(state: Path) -> int | None:
    try:
        pid = _host.read_state(state).get("pid")
    except (OSError, ValueError):
        return None
    return pid if isinstance(pid, int) else None


def serve(
    config: str | os.PathLike[str],
    *,
    check: bool = False,
    state_file: str | os.PathLike[str] | None = None,
) -> int:
    """Run ``logfunnel serve --config CONFIG`` in this process until SIGTERM or SIGINT; return the
    exit status (0 after a clean stop, 1 when it cannot start). With *check*, validate the file
    (see ``_configfile.check``) and return without starting anything."""
    try:
        loaded = _configfile.load(config)
        if check:
            _configfile.check(loaded)
            handlers = loaded.dict_config.get("handlers", {})
            _say(
                f"{loaded.name}: OK ({_count(len(handlers), 'handler')}, "
                f"{_count(len(loaded.dict_config.get('loggers', {})), 'logger')} besides the root, "
                f"{_count(len(loaded.lanes), 'lane')}); nothing was started or created"
            )
            return 0
    except ConfigError as exc:
        _say(f"{_PROG}: {exc}", sys.stderr)
        return 1
    import filelock

    state = Path(state_file) if state_file is not None else loaded.state_file or _host.default_state_file()
    state = state.absolute()
    try:
        _host.make_state_folder(state)
    except PermissionError as exc:
        _say(f"{_PROG}: {exc}", sys.stderr)
        return 1
    except OSError as exc:
        _say(f"{_PROG}: cannot make the folder of the state file {state}: {exc.strerror or exc}", sys.stderr)
        return 1
    lock = filelock.FileLock(_host.serve_lock_path(state))
    try:
        # Not 0: a joiner probing for a live serve (``serve_alive``) holds the lock for an instant.
        lock.acquire(timeout=_LOCK_PATIENCE)
    except filelock.Timeout:
        pid = _state_pid(state)
        who = f"another {_PROG} (pid {pid})" if pid else f"another {_PROG}"
        _say(
            f"{_PROG}: {who} is already running for {state}; stop it first"
            f"{f' (kill -TERM {pid})' if pid else ''}, or give this one another state_file",
            sys.stderr,
        )
        return 1
    try:
        return _run(loaded, state)
    finally:
        lock.release()


def _run(loaded: _configfile.FileConfig, state: Path) -> int:
    from .listener import start_listener

    signals = _Signals()  # first, so that a SIGTERM during start-up is not the default (death)
    started = time.monotonic()
    listener = receiver = funnel = None
    try:
        try:
            _configfile.apply(loaded)
        except ConfigError as exc:
            _say(f"{_PROG}: {exc}", sys.stderr)
            return 1
        address = loaded.address or _host.default_address(state)
        try:
            listener = start_listener(level=loaded.level, address=address, allow_remote=loaded.allow_remote)
            if loaded.receiver:
                from ._receiver import start_receiver
                from .worker import FunnelHandler

                # The stdlib clients' records enter the listener as a worker's do: through its
                # routing and levels, seen by `logfunnel stats` and `tail`. A listener that cannot
                # keep up holds the receiver back (and so the clients' sockets), dropping nothing.
                funnel = FunnelHandler(listener.queue, on_full="block", block_timeout=60.0)
                funnel.addFilter(_LoggerLevels())
                receiver = start_receiver(
                    [funnel],
                    tcp=loaded.receiver.get("tcp"),
                    udp=loaded.receiver.get("udp"),
                    allow_remote=loaded.allow_remote,
                    level=loaded.level,
                    **({"max_frame": loaded.receiver["max_frame"]} if "max_frame" in loaded.receiver else {}),
                )
        except (OSError, ValueError, TypeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            _say(f"{_PROG}: {loaded.name}: cannot start: {reason}", sys.stderr)
            return 1
        extra: dict[str, Any] = {"config": os.fspath(loaded.path.absolute()), "started": time.time()}
        if receiver is not None:
            extra["receiver"] = {
                kind: None if address is None else f"{address[0]}:{address[1]}"
                for kind, address in (("tcp", receiver.tcp_address), ("udp", receiver.udp_address))
            }
        _host.write_state(state, listener.queue, os.getpid(), extra)
        _say(_join_text(listener.queue, state, receiver))
        while signals.stop is None:
            signals.wait()
            if signals.reopen:
                signals.reopen = False
                reopen_files()
        stats_stdlib = None
        if receiver is not None:
            receiver.stop()
            stats_stdlib = int(receiver.stats()["received"])
        if funnel is not None:
            funnel.close()  # what the receiver handed over reaches the listener, then goodbye
        listener.stop()
        _host.remove_state(state, os.getpid())
        stats = listener.stats()
        logging.shutdown()
        _say(_summary(signals.stop, time.monotonic() - started, stats, stats_stdlib))
        return 0
    finally:
        if receiver is not None:
            receiver.stop()
        if funnel is not None:
            funnel.close()
        if listener is not None:
            listener.stop()
        _host.remove_state(state, os.getpid())
        signals.restore()


# -- start-or-join --------------------------------------------------------------------------------------


def _ready(state: Path, pid: int | None = None) -> QueueHandle | None:
    """The handle in *state* if a live serve (holding its lock) wrote it (process *pid*, if given)."""
    try:
        if pid is not None and _host.read_state(state).get("pid") != pid:
            return None
        handle = _host.handle_from_state(state)
    except (OSError, ValueError, TypeError):
        return None
    return handle if _host.serve_alive(state) else None


def _output_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no output)"
    return text[-2000:] or "(no output)"


def _start_detached(config: Path, state: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``python -m logfunnel serve`` for *state* in a session of its own, its output in
    ``<state>.out``; a thread reaps it if it ends while this process still runs."""
    out_path = state.with_name(state.name + ".out")
    env = {k: v for k, v in os.environ.items() if k not in (ADDRESS_ENV, AUTHKEY_ENV, COUNTS_ENV)}
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "logfunnel",
                "serve",
                "--config",
                os.fspath(config),
                "--state-file",
                os.fspath(state),
            ],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the starter's process group: a Ctrl-C or killpg there spares it
            close_fds=True,
            env=env,
        )
    finally:
        os.close(fd)
    threading.Thread(target=proc.wait, name="logfunnel-serve-reaper", daemon=True).start()
    return proc, out_path


def join_host_funnel(
    config: str | os.PathLike[str] | None = None,
    *,
    state_file: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> QueueHandle:
    """The handle of the host's funnel: the ``logfunnel serve`` running for *state_file*, started
    from *config* first when none runs (or the last one died); give it to ``install_worker_logging``.

    *state_file* defaults to the file's ``logfunnel.state_file``, else ``_host.default_state_file()``
    (``$XDG_RUNTIME_DIR/logfunnel/serve.json``). Of many processes calling this at once, exactly one
    starts the serve (a detached process, in a session of its own, that outlives it; its output
    goes to ``<state_file>.out``); the others wait for it and join it. Without *config* it only
    joins, and raises ``FunnelNotRunning`` when no serve runs. Raises ``ConfigError`` for a bad
    file, ``FunnelNotRunning`` with the serve's own output when it could not start, ``TimeoutError``
    after *timeout* seconds. Like a listener, it names the funnel in ``LOGFUNNEL_ADDRESS`` and
    ``LOGFUNNEL_AUTHKEY`` for the processes this one starts.
    """
    import filelock

    loaded = _configfile.load(config) if config is not None else None
    if state_file is not None:
        state = Path(state_file)
    elif loaded is not None and loaded.state_file is not None:
        state = loaded.state_file
    else:
        state = _host.default_state_file()
    state = state.absolute()
    deadline = time.monotonic() + timeout
    while True:
        handle = _ready(state)
        if handle is not None:
            publish(handle)
            return handle
        if loaded is None:
            if not _host.serve_alive(state):
                raise FunnelNotRunning(
                    f"no {_PROG} is running for {state}: start one (logfunnel serve --config FILE), or "
                    "pass config=FILE to start it"
                )
        else:
            _host.make_state_folder(state)
            lock = filelock.FileLock(_host.start_lock_path(state))
            try:
                lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except filelock.Timeout:
                raise TimeoutError(f"no {_PROG} for {state} became ready within {timeout:g} s") from None
            try:
                handle = _ready(state)
                if handle is None and not _host.serve_alive(state):
                    handle = _start_and_wait(loaded.path.absolute(), state, deadline, timeout)
            finally:
                lock.release()
            if handle is not None:
                publish(handle)
                return handle
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {_PROG} for {state} did not become ready within {timeout:g} s")
        time.sleep(_POLL)  # a serve holds the lock but has not written its state yet (or is stopping)


def _start_and_wait(config: Path, state: Path, deadline: float, timeout: float) -> QueueHandle:
    try:
        os.unlink(state)  # a dead serve's: never hand it out while the new one starts
    except FileNotFoundError:
        pass
    proc, out_path = _start_detached(config, state)
    while True:
        handle = _ready(state, proc.pid)
        if handle is not None:
            return handle
        if proc.returncode is not None:  # set by the reaper thread's wait() (poll() would race it)
            raise FunnelNotRunning(
                f"{_PROG} --config {config} exited with status {proc.returncode} before it was ready; "
                f"its output ({out_path}):\n{_output_tail(out_path)}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{_PROG} (pid {proc.pid}) for {state} did not become ready within {timeout:g} s; its output "
                f"({out_path}):\n{_output_tail(out_path)}"
            )
        time.sleep(_POLL)


# -- the command line ---------------------------------------------------------------------------------

SERVE_DESCRIPTION = """\
Run a listener for this host's processes as a foreground service, configured by FILE (TOML, YAML or
JSON: a logging dictConfig plus a [logfunnel] table). It writes its address and key to a state file
that only this user can read and prints how to join it. SIGHUP reopens the log files that were moved
or removed (for logrotate); SIGTERM or Ctrl-C delivers what has arrived, prints a summary and exits.
It refuses to start when another serve runs for the same state file. --check only validates FILE."""


def add_serve_parser(commands: Any) -> None:
    """Register ``serve`` on the ``logfunnel`` command's subparsers."""
    parser = commands.add_parser(
        "serve", help="run a listener for this host, configured by a file", description=SERVE_DESCRIPTION
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="the configuration file")
    parser.add_argument(
        "--check", action="store_true", help="validate FILE and exit (0 if it is good), starting nothing"
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        help="where to write the address and key (default: the file's state_file, else "
        "$LOGFUNNEL_STATE_FILE, else $XDG_RUNTIME_DIR/logfunnel/serve.json)",
    )


def run_serve(args: Any) -> int:
    """Run ``logfunnel serve`` with its parsed *args*."""
    return serve(args.config, check=args.check, state_file=args.state_file)
