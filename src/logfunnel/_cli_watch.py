"""``logfunnel stats`` and ``logfunnel tail``: a control client of a running listener.

Both find the listener the same way (``resolve``): an ``unix:/…`` or ``tcp://…`` address with its key
in ``LOGFUNNEL_AUTHKEY``, or the state file of a ``logfunnel serve``; by default ``LOGFUNNEL_ADDRESS``,
then this user's default state file. They then speak the control protocol of ``_control`` over the
listener's own socket. Failures are one line on stderr and an exit status: 2 for what the user must
change (no listener named, no key, a bad option), 1 for a listener that cannot be reached or refuses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from . import _host, _wire
from ._control import CONTROL_HELLO, TAIL_FIELDS
from ._transport import (
    ADDRESS_ENV,
    AUTHKEY_ENV,
    AuthenticationError,
    QueueHandle,
    authkey_from_environment,
    connect,
    recv_frame,
)

__all__ = ["TAIL_FORMAT", "Control", "WatchError", "render_table", "resolve", "stats_command", "tail_command"]

#: What ``logfunnel tail`` prints for each record unless ``--format`` says otherwise.
TAIL_FORMAT = "%(asctime)s %(levelname)-8s %(processName)s[%(process)s] %(name)s: %(message)s"
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 10.0


class WatchError(Exception):
    """A failure to report as one line on stderr, with the exit status to end with."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- finding the listener --------------------------------------------------------------------------


def resolve(address: str | None) -> QueueHandle:
    """The handle of the listener named by *address* (an address, a state file path, or None)."""
    if address is None:
        address = os.environ.get(ADDRESS_ENV) or None
        if address is None:
            state = _host.default_state_file()
            if not state.exists():
                raise WatchError(
                    f"no listener given: pass its address (unix:/path or tcp://host:port, with its key in "
                    f"{AUTHKEY_ENV}) or its state file, set {ADDRESS_ENV}, or start `logfunnel serve` "
                    f"(its state file {state} does not exist)",
                    status=2,
                )
            return _from_state(state)
    if address.startswith(("unix:", "tcp://")):
        try:
            key = authkey_from_environment()
        except ValueError as exc:
            raise WatchError(str(exc), status=2) from None
        if key is None:
            raise WatchError(
                f"{address} needs the listener's auth key: set {AUTHKEY_ENV} to it (hex), or pass the "
                "listener's state file instead of its address",
                status=2,
            )
        try:
            return QueueHandle(address, key)
        except (TypeError, ValueError) as exc:
            raise WatchError(str(exc), status=2) from None
    return _from_state(Path(address))


def _from_state(path: Path) -> QueueHandle:
    try:
        return _host.handle_from_state(path)
    except FileNotFoundError:
        raise WatchError(
            f"no state file at {path}: expected an address like unix:/path or tcp://host:port, or the state "
            "file of a running `logfunnel serve`",
            status=2,
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise WatchError(f"cannot read the state file {path}: {exc}", status=2) from None


# -- the connection --------------------------------------------------------------------------------


class Control:
    """An authenticated control connection to a listener (``_control`` is the listener's side)."""

    def __init__(self, handle: QueueHandle, timeout: float = CONNECT_TIMEOUT) -> None:
        self.address = handle.address
        try:
            self.sock, welcome = connect(handle, CONTROL_HELLO, timeout)
        except AuthenticationError:
            raise WatchError(
                f"the listener at {self.address} did not prove that it knows the auth key"
            ) from None
        except FileNotFoundError:
            raise WatchError(f"no listener at {self.address}: the socket file does not exist") from None
        except ConnectionRefusedError:
            raise WatchError(
                f"no listener at {self.address}: connection refused (a socket file left by a listener that "
                "has stopped, or nothing listens on that port)"
            ) from None
        except TimeoutError:
            raise WatchError(f"the listener at {self.address} did not answer within {timeout:g} s") from None
        except (ConnectionError, _wire.FrameError) as exc:
            if "is not a logfunnel listener" in str(exc):
                raise WatchError(str(exc)) from None
            raise WatchError(
                f"the listener at {self.address} closed the connection during the handshake: the auth key is "
                f"wrong (check {AUTHKEY_ENV} or the state file), or the listener is too old to answer "
                "stats and tail"
            ) from None
        except OSError as exc:
            raise WatchError(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        if type(welcome) is not dict or welcome.get("control") != 1:
            self.sock.close()
            raise WatchError(
                f"the listener at {self.address} does not answer stats and tail (an older version)"
            )
        self.pid = welcome.get("pid")

    def close(self) -> None:
        self.sock.close()

    def send(self, request: tuple[Any, ...]) -> None:
        try:
            self.sock.sendall(_wire.frame(_wire.encode(request)))
        except OSError:
            raise WatchError(f"the listener at {self.address} has gone away") from None

    def receive(self, timeout: float | None = None) -> tuple[Any, ...]:
        """The next message; a ``WatchError`` when the listener has gone or says something odd."""
        self.sock.settimeout(timeout)
        try:
            message = _wire.decode(recv_frame(self.sock, _wire.MAX_FRAME))
        except TimeoutError:
            raise WatchError(f"the listener at {self.address} did not answer within {timeout:g} s") from None
        except (ConnectionError, OSError):
            raise WatchError(f"the listener at {self.address} has gone away", status=0) from None
        except _wire.FrameError as exc:
            raise WatchError(f"the listener at {self.address} sent something unreadable: {exc}") from None
        if type(message) is not tuple or not message or type(message[0]) is not str:
            raise WatchError(
                f"the listener at {self.address} sent an unexpected {_wire.safe_repr(message)[:80]}"
            )
        if message[0] == "error":
            raise WatchError(
                f"the listener at {self.address} refused: {message[1] if len(message) > 1 else ''}"
            )
        return message

    def stats(self) -> dict[str, Any]:
        self.send(("stats",))
        message = self.receive(ANSWER_TIMEOUT)
        if message[0] != "stats" or len(message) != 2 or type(message[1]) is not dict:
            raise WatchError(f"the listener at {self.address} answered stats with {message[0]!r}")
        return message[1]


def _gone(exc: WatchError) -> WatchError:
    """A listener that went away in the middle of `stats` is a failure (status 1), unlike in `tail`."""
    exc.status = exc.status or 1
    return exc


# -- stats -----------------------------------------------------------------------------------------


def _key(process: dict[str, Any]) -> tuple[Any, Any]:
    return process.get("pid"), process.get("first_seen")


def add_rates(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """*current* with ``rate`` (records per second) per process and the listener's ``cpu_percent``,
    measured since *previous* (None where there is nothing to measure from)."""
    listener = current.setdefault("listener", {})
    listener["cpu_percent"] = listener["thread_cpu_percent"] = None
    before: dict[tuple[Any, Any], int] = {}
    elapsed = 0.0
    if previous is not None:
        then = previous.get("listener", {})
        elapsed = float(listener.get("at", 0.0)) - float(then.get("at", 0.0))
        if elapsed > 0:
            for key in ("cpu", "thread_cpu"):
                used = float(listener.get(key, 0.0)) - float(then.get(key, 0.0))
                listener[f"{key}_percent"] = 100.0 * used / elapsed
        before = {_key(p): int(p.get("received", 0)) for p in previous.get("processes", [])}
    for process in current.get("processes", []):
        old = before.get(_key(process))
        rate = None
        if elapsed > 0:
            rate = (int(process.get("received", 0)) - (old or 0)) / elapsed
        process["rate"] = rate
    current["interval"] = elapsed if elapsed > 0 else None
    return current


# Control characters (C0 but tab and newline, DEL, C1) as the text "\x1b": what a worker or a peer put
# in a record or its process name must not move a terminal's cursor, retitle it or clear it.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}
_CONTROLS_AND_NEWLINES = {**_CONTROLS, 0x0A: "\\n"}


def printable(text: str, newlines: bool = True) -> str:
    """*text* with its control characters written out (``\\x1b``); newlines kept if *newlines*."""
    return text.translate(_CONTROLS if newlines else _CONTROLS_AND_NEWLINES)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _mb(value: Any) -> str:
    return f"{value / 1e6:,.1f} MB" if isinstance(value, int) else "unknown"


def render_table(stats: dict[str, Any], width: int | None = None, height: int | None = None) -> list[str]:
    """The lines of the stats table (``add_rates`` first for rates and CPU)."""
    listener = stats.get("listener", {})
    processes = list(stats.get("processes", []))
    connected = sum(1 for p in processes if p.get("state") == "connected")
    cpu, thread = listener.get("cpu_percent"), listener.get("thread_cpu_percent")
    cpu_text = f"{cpu:.1f} %" if isinstance(cpu, float) else "-"
    thread_text = f"{thread:.1f} %" if isinstance(thread, float) else "-"
    lines = [
        f"logfunnel listener {printable(str(listener.get('address') or ''), newlines=False)}  "
        f"pid {listener.get('pid')}  "
        f"cpu {cpu_text} (its thread {thread_text}; {float(listener.get('cpu', 0.0)):.2f} s in all)  "
        f"memory {_mb(listener.get('rss'))}",
        f"processes {len(processes)} ({connected} connected)  received {_n(stats.get('received'))}  "
        f"dropped {_n(stats.get('dropped'))}  lost {_n(stats.get('lost'))}  "
        f"rejected {_n(stats.get('rejected'))}",
    ]
    if stats.get("folded_processes"):
        lines.append(f"(and {stats['folded_processes']:,} earlier processes, in the totals only)")
    lines.append("")
    lines.append(
        f"{'PID':>8}  {'NAME':<24} {'STATE':<10} {'RATE/s':>10} {'RECEIVED':>12} {'DROPPED':>9} {'LOST':>7}"
    )
    lanes = list(stats.get("lanes", []))
    room = None if height is None else max(1, height - len(lines) - (len(lanes) + 3 if lanes else 1) - 1)
    processes.sort(key=lambda p: (p.get("state") != "connected", -float(p.get("last_seen", 0.0))))
    shown = processes if room is None or len(processes) <= room else processes[: max(0, room - 1)]
    for p in shown:
        rate = p.get("rate")
        rate_text = f"{rate:,.0f}" if isinstance(rate, (int, float)) else "-"
        name = printable(str(p.get("name", "")), newlines=False)[:24]
        lines.append(
            f"{p.get('pid', 0):>8}  {name:<24} {p.get('state', '')!s:<10} {rate_text:>10} "
            f"{_n(p.get('received')):>12} {_n(p.get('dropped')):>9} {_n(p.get('lost')):>7}"
        )
    if len(shown) < len(processes):
        lines.append(f"{'':>8}  … and {len(processes) - len(shown):,} more processes")
    if not processes:
        lines.append(f"{'':>8}  (no process has connected yet)")
    if lanes:
        lines.append("")
        lines.append(
            f"{'LANE':<34} {'STATE':<10} {'BACKLOG':>9} {'FAILED':>8} {'DROPPED':>9} {'HANDLED':>12}"
        )
        for lane in lanes:
            lane_name = printable(str(lane.get("name", "")), newlines=False)[:34]
            lines.append(
                f"{lane_name:<34} {lane.get('state', '')!s:<10} "
                f"{_n(lane.get('backlog')):>9} {_n(lane.get('failed')):>8} {_n(lane.get('dropped')):>9} "
                f"{_n(lane.get('handled')):>12}"
            )
    return lines if width is None else [line[:width] for line in lines]


def _sample(control: Control, interval: float) -> dict[str, Any]:
    """Two readings *interval* apart: the second, with rates measured over the interval."""
    try:
        first = control.stats()
        time.sleep(interval)
        return add_rates(control.stats(), first)
    except WatchError as exc:
        raise _gone(exc) from None


def stats_command(address: str | None, *, interval: float, once: bool, as_json: bool, out: IO[str]) -> int:
    control = Control(resolve(address))
    try:
        if as_json:
            out.write(json.dumps(_sample(control, interval), indent=2, sort_keys=True) + "\n")
            return 0
        if once or not out.isatty():
            out.write("\n".join(render_table(_sample(control, interval))) + "\n")
            return 0
        return _live(control, interval, out)
    finally:
        control.close()


def _live(control: Control, interval: float, out: IO[str]) -> int:
    """Redraw the table in place every *interval* seconds until Ctrl-C."""
    previous: dict[str, Any] | None = None
    out.write("\x1b[?25l")  # hide the cursor while the table is redrawn
    try:
        while True:
            try:
                current = add_rates(control.stats(), previous)
            except WatchError as exc:
                raise _gone(exc) from None
            size = shutil.get_terminal_size()
            lines = render_table(current, size.columns, size.lines)
            footer = f"every {interval:g} s; Ctrl-C to stop"
            out.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n\n" + footer[: size.columns])
            out.flush()
            previous = current
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\n")
        out.flush()


# -- tail ------------------------------------------------------------------------------------------


#: The highest ``--level`` number taken (levels are small ints: CRITICAL is 50).
MAX_LEVEL = 2**31 - 1


def parse_level(text: str) -> int:
    """A level name (any case) or number from 0 to ``MAX_LEVEL``; ``WatchError`` (status 2) otherwise."""
    if text.isascii() and text.isdigit():
        if len(text) > 10 or int(text) > MAX_LEVEL:
            raise WatchError(
                f"--level expected a number from 0 to {MAX_LEVEL:,} or a level name, got {text}", status=2
            )
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise WatchError(
            "--level expected a level name (DEBUG, INFO, WARNING, ERROR, CRITICAL) or a number, "
            f"got {text!r}",
            status=2,
        )
    return level


def tail_formatter(fmt: str) -> logging.Formatter:
    """A formatter for *fmt*, refused (status 2) when it names what a tail entry does not carry."""
    try:
        formatter = logging.Formatter(fmt)
        formatter.format(_record((time.time(), 20, "INFO", "app", 1, "MainProcess", "MainThread",
                                  "app.py", "app", "main", 1, "text", None)))  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        fields = ", ".join(sorted({*TAIL_FIELDS, "message", "asctime", "msecs"} - {"msg"}))
        raise WatchError(
            f"--format expected a logging format of the fields {fields}, got {fmt!r} ({exc!r})", status=2
        ) from None
    return formatter


def _record(entry: Sequence[Any]) -> logging.LogRecord:
    state = dict(zip(TAIL_FIELDS, entry))
    created = state.get("created")
    if not isinstance(created, float):
        created = time.time()
    state.update(created=created, msecs=(created - int(created)) * 1000, args=None, exc_info=None)
    if not isinstance(state.get("levelname"), str):
        state["levelname"] = logging.getLevelName(state.get("levelno") or 0)
    state["msg"] = str(state.get("msg"))
    return logging.makeLogRecord(state)


def tail_command(
    address: str | None, *, level: int, logger: str, fmt: str, out: IO[str], err: IO[str]
) -> int:
    formatter = tail_formatter(fmt)
    control = Control(resolve(address))
    try:
        control.send(("tail", level, logger))
        first = control.receive(ANSWER_TIMEOUT)
        if first[0] != "tailing":
            raise WatchError(f"the listener at {control.address} answered tail with {first[0]!r}")
        which = f"level {logging.getLevelName(level)} and above" + (f", logger {logger!r}" if logger else "")
        err.write(f"logfunnel tail: following {control.address} ({which}); Ctrl-C to stop\n")
        err.flush()
        # On a terminal, a record's control characters are written out; piped, its text is as it is.
        isatty = getattr(out, "isatty", None)
        clean = printable if callable(isatty) and isatty() else str
        dropped = 0
        while True:
            try:
                message = control.receive(None)
            except WatchError as exc:
                if exc.status == 0:
                    err.write(f"logfunnel tail: the listener at {control.address} has stopped\n")
                    return 0
                raise
            if message[0] != "records" or len(message) != 3:
                continue
            if type(message[1]) is int and message[1] > dropped:
                err.write(
                    f"logfunnel tail: {message[1] - dropped:,} records were not shown: this tail did not "
                    f"keep up ({message[1]:,} in all)\n"
                )
                err.flush()
                dropped = message[1]
            text = []
            for entry in message[2] if type(message[2]) is list else ():
                if type(entry) is not list:
                    continue
                if len(entry) == 2:  # a line its worker rendered, sent without its record
                    text.append(str(entry[1]))
                elif len(entry) == len(TAIL_FIELDS):
                    try:
                        text.append(formatter.format(_record(entry)))
                    except Exception as exc:
                        text.append(f"[--format failed for a record of {entry[3]!r}: {exc!r}] {entry[11]}")
            if text:
                out.write(clean("\n".join(text)) + "\n")
                out.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        control.close()


def run(command: str, args: Any) -> int:
    """Run ``stats`` or ``tail`` from parsed *args*; return the exit status (errors as one line)."""
    try:
        if command == "stats":
            return stats_command(
                args.address, interval=args.interval, once=args.once, as_json=args.json, out=sys.stdout
            )
        return tail_command(
            args.address, level=parse_level(args.level), logger=args.logger, fmt=args.format,
            out=sys.stdout, err=sys.stderr,
        )  # fmt: skip
    except WatchError as exc:
        sys.stderr.write(f"logfunnel {command}: {exc}\n")
        return exc.status or 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # stdout went away (`logfunnel tail | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
