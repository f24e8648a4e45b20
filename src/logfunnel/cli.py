"""The ``logfunnel`` command: ``logfunnel demo`` shows the funnel at work on a simulated web shop;
``logfunnel stats`` and ``logfunnel tail`` watch a running listener (``_cli_watch``).

The demo starts a listener that owns one ``RotatingFileHandler``, runs a ``multiprocessing.Pool``
whose workers serve simulated requests and log like a real service (``_demo/``), and then accounts
for every record: produced = delivered + dropped + lost, or the command exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import math
import multiprocessing
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._demo import serve, workdir
from .listener import LogListener, start_listener
from .worker import install_worker_logging

__all__ = ["DEMO_FORMAT", "demo", "main"]

DEMO_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s[%(process)d] %(name)s [%(request_id)s] %(message)s"
_MAX_BYTES = 8 * 1024 * 1024
_BACKUPS = 20
_DRAIN_PATIENCE = 10.0  # seconds without progress after which the demo stops waiting for delivery

DESCRIPTION = """\
logfunnel gathers the logging records of many processes (multiprocessing pools, executors,
gunicorn or celery workers) into one listener that owns the real handlers, so that every record
arrives once, whole, and is accounted for. Most of logfunnel is a library used from Python; this
command runs a demonstration of it, runs a listener for a whole host (serve), and watches a running
listener: its figures (stats) and the records it handles (tail)."""

DEMO_DESCRIPTION = """\
Run a pool of worker processes that serve simulated requests of a small web shop and log as a real
service does (access lines, cache, database, payments with the occasional traceback, a background
job), all funnelled into one rotating log file, DIR/demo.log. At the end it prints how many records
were produced, delivered, dropped and lost, the workers' rate next to the listener's, and exits
with status 1 if any record is unaccounted for. It removes only the files an earlier demo run wrote
in DIR, and says which; it refuses to run if DIR holds other demo.log files."""


class _Progress:
    """One status line: rewritten in place on a terminal, a plain line per second elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = 0.0

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stdout.write("\r" + text + "\x1b[K")
        elif now - self.last >= 1.0:
            sys.stdout.write(text + "\n")
        else:
            return
        self.last = now
        sys.stdout.flush()

    def end(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _wait_for_delivery(listener: LogListener, produced: int) -> float:
    """Wait until the listener has accounted for *produced* records (or stalls); return when it did."""
    seen, progressed = -1, time.monotonic()
    while True:
        stats = listener.stats()
        done = stats["received"] + stats["dropped"]
        now = time.monotonic()
        if done >= produced:
            return time.time()
        if done != seen:
            seen, progressed = done, now
        elif now - progressed > _DRAIN_PATIENCE:
            return time.time()
        time.sleep(0.005)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _micro() -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u00b5".encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return "us"
    return "\u00b5s"


def _verdict(figures: dict[str, Any], workers: int, cpus: int, seconds: float) -> str:
    """The sentences that say which bound this run hit, and why neither is logfunnel's ceiling."""
    lag = figures["lag"]
    if figures["dropped"] or lag > max(0.25, 0.05 * seconds):
        bound = (
            f"The listener was the bound: when the workers stopped, {figures['backlog']:.0%} of the "
            f"records were still on their way, and the last arrived {lag:.2f} s later."
        )
    else:
        bound = (
            f"The workers were the bound: the listener kept up and had the last record {lag:.2f} s "
            f"after they stopped, so the generator's rate is the pace at which {_count(workers, 'worker')} "
            f"sharing {_count(cpus, 'CPU')} with the listener made records."
        )
    return (
        f"{bound} Neither rate is logfunnel's ceiling: a worker spends much of its time making records "
        f"in Python's logging, and the RotatingFileHandler checks the file's size for every record it "
        f"writes (a plain FileHandler gets whole batches of lines); benchmarks/ measures the funnel itself."
    )


def _run(listener: LogListener, workers: int, seconds: float) -> dict[str, Any]:
    """Run the pool, show progress, wait for delivery; return the workers' results and the timings."""
    progress = _Progress()
    started = time.monotonic()
    cpu = time.process_time()
    with multiprocessing.Pool(
        workers, initializer=install_worker_logging, initargs=(listener.queue,)
    ) as pool:
        pending = pool.map_async(serve, [(index, seconds) for index in range(workers)])
        while not pending.ready():
            pending.wait(0.1)
            elapsed = time.monotonic() - started
            received = listener.stats()["received"]
            progress.show(
                f"  {elapsed:5.1f} s  {received:>12,} records delivered  ({received / elapsed:,.0f}/s)"
            )
        results: list[dict[str, Any]] = pending.get()
        produced = sum(result["produced"] for result in results)
        backlog = 1 - listener.stats()["received"] / produced if produced else 0.0
        delivered_at = _wait_for_delivery(listener, produced)
        listener_cpu = time.process_time() - cpu
        pool.close()
        pool.join()
    progress.end()
    return {
        "results": results,
        "produced": produced,
        "backlog": backlog,
        "delivered_at": delivered_at,
        "listener_cpu": listener_cpu,
    }


def _figures(run: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """The summary's numbers, from the workers' results and the listener's stats."""
    results = run["results"]
    levels: dict[str, int] = {}
    for result in results:
        for name, count in result["levels"].items():
            levels[name] = levels.get(name, 0) + count
    per_worker = sorted(result["produced"] / result["seconds"] for result in results if result["seconds"])
    first = min(result["started"] for result in results)
    last = max(result["finished"] for result in results)
    window = run["delivered_at"] - first
    produced = run["produced"]
    worker_cpu = sum(result["cpu"] for result in results)
    return {
        **stats,
        "produced": produced,
        "accounted": stats["received"] + stats["dropped"] + stats["lost"] == produced,
        "levels": levels,
        "per_worker_rates": per_worker,
        "generator_rate": produced / (last - first) if last > first else 0.0,
        "listener_rate": stats["received"] / window if window > 0 else 0.0,
        "listener_seconds": window,
        "generator_seconds": last - first,
        "lag": max(0.0, run["delivered_at"] - last),
        "backlog": run["backlog"],
        "worker_cpu_per_record": worker_cpu / produced if produced else 0.0,
        "listener_cpu_per_record": run["listener_cpu"] / stats["received"] if stats["received"] else 0.0,
    }


def _print_summary(figures: dict[str, Any], out: Path, workers: int, seconds: float) -> None:
    rates = figures["per_worker_rates"] or [0.0]
    spread = f"{rates[0]:,.0f}" if len(rates) == 1 else f"{rates[0]:,.0f} to {rates[-1]:,.0f}"
    levels = ", ".join(f"{name} {count:,}" for name, count in figures["levels"].items())
    files = sorted(out.glob(workdir.LOG_NAME + "*"), key=lambda p: (len(p.name), p.name))
    us = _micro()
    print()
    print(f"  produced   {figures['produced']:>11,}   ({levels})")
    print(f"  delivered  {figures['received']:>11,}")
    print(f"  dropped    {figures['dropped']:>11,}")
    print(f"  lost       {figures['lost']:>11,}")
    print(f"  check      produced = delivered + dropped + lost: {'yes' if figures['accounted'] else 'NO'}")
    share = f"in all, {spread} per worker" if workers > 1 else "by the one worker"
    print(
        f"  generator  {figures['generator_rate']:>11,.0f} records/s produced {share} "
        f"({figures['generator_seconds']:.1f} s)"
    )
    print(
        f"  listener   {figures['listener_rate']:>11,.0f} records/s delivered into the RotatingFileHandler "
        f"({figures['listener_seconds']:.1f} s)"
    )
    print(
        f"  cpu        {figures['worker_cpu_per_record'] * 1e6:>11.1f} {us} per record in a worker, "
        f"{figures['listener_cpu_per_record'] * 1e6:.1f} {us} in the listener's process"
    )
    print(
        f"  files      {_count(len(files), 'file')} in {out}/: "
        + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in files)
    )
    print()
    cpus = os.cpu_count() or 1
    print(textwrap.fill(_verdict(figures, workers, cpus, seconds), width=100, initial_indent="  ",
                        subsequent_indent="  "))  # fmt: skip


#: The most worker processes a demo starts: each is a process, and a typo (--workers 1000000000)
#: must not fork until the machine gives out.
MAX_DEMO_WORKERS = 512


def demo(workers: int = 4, seconds: float = 3.0, directory: str = "logfunnel-demo") -> dict[str, Any]:
    """Run *workers* processes that log a simulated shop's records for *seconds* into *directory*.

    Prints progress and a summary, and returns the listener's ``stats()`` with ``produced``,
    ``accounted`` (produced = delivered + dropped + lost), ``levels``, ``removed`` (the files of an
    earlier run it deleted), ``generator_rate``, ``listener_rate`` (records per second) and ``lag``
    (seconds from the workers' stop to the last delivery). Raises ``ValueError`` for a bad count or
    duration, and ``workdir.DemoDirectoryError`` if *directory* holds ``demo.log`` files it did not
    write.
    """
    if not 1 <= workers <= MAX_DEMO_WORKERS:
        raise ValueError(f"workers must be from 1 to {MAX_DEMO_WORKERS} (each is a process), got {workers}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a number above 0, got {seconds}")
    out = Path(directory)
    removed = workdir.prepare(out, _BACKUPS)
    if removed:
        print(
            f"removed {_count(len(removed), 'file')} of an earlier demo run from {out}/: {', '.join(removed)}"
        )
    handler = logging.handlers.RotatingFileHandler(
        out / workdir.LOG_NAME, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(DEMO_FORMAT, defaults={"request_id": "-"}))
    cpus = _count(os.cpu_count() or 1, "CPU")
    print(
        f"logfunnel {__version__} demo: a simulated shop served by {_count(workers, 'worker')} on {cpus} "
        f"for {seconds:g} s, logging into {out / workdir.LOG_NAME} "
        f"(rotating at {_MAX_BYTES >> 20} MB)"
    )
    listener = start_listener(handlers=[handler])
    try:
        run = _run(listener, workers, seconds)
    finally:
        listener.stop()
        handler.close()
    figures = _figures(run, listener.stats())
    _print_summary(figures, out, workers, seconds)
    return {**figures, "removed": removed}


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="logfunnel", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"logfunnel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="log from a pool of workers serving a simulated shop into one rotating file",
        description=DEMO_DESCRIPTION,
    )
    demo_parser.add_argument(
        "--workers", type=int, default=4, metavar="N", help="how many worker processes log (default 4)"
    )
    demo_parser.add_argument(
        "--seconds", type=float, default=3.0, metavar="S", help="how long they log, in seconds (default 3)"
    )
    demo_parser.add_argument(
        "--dir",
        default="logfunnel-demo",
        metavar="DIR",
        help="the directory for demo.log and its backups (default ./logfunnel-demo)",
    )
    from ._serve import add_serve_parser

    add_serve_parser(commands)
    _add_watch_commands(commands)
    return parser, demo_parser


STATS_DESCRIPTION = """\
Show a running listener's figures: per process its pid, name, state (connected, exited or vanished),
records per second, and how many records it had received, dropped (its buffer was full) and lost
(they never arrived); per lane its backlog, failures and drops; and the listener's own CPU and
memory. On a terminal the table is redrawn every --interval seconds until Ctrl-C; elsewhere, or with
--once, one table is printed; --json prints one JSON document for programs. Rates and CPU are
measured over one interval. Exit status 1 if the listener cannot be reached or refuses the key, 2 if
no listener is named."""

TAIL_DESCRIPTION = """\
Follow the records a running listener handles, as they arrive, one formatted line each (tracebacks
on the lines that follow), until Ctrl-C or until the listener stops. The listener filters them by
--level and --logger before they are sent. If this command cannot keep up, the listener drops
records for it rather than slow down, and this command says how many were not shown. Exit status
1 if the listener cannot be reached or refuses the key, 2 if no listener is named or an option is
wrong."""

ADDRESS_HELP = (
    "the listener: an address (unix:/path or tcp://host:port, with its auth key in LOGFUNNEL_AUTHKEY as hex) "
    "or the state file of `logfunnel serve`; default: LOGFUNNEL_ADDRESS, then the state file of this "
    "user's `logfunnel serve`"
)


def _add_watch_commands(commands: Any) -> None:
    from ._cli_watch import TAIL_FORMAT

    stats = commands.add_parser(
        "stats", help="show a running listener's figures, live", description=STATS_DESCRIPTION
    )
    stats.add_argument("address", nargs="?", metavar="ADDRESS", help=ADDRESS_HELP)
    stats.add_argument(
        "--interval", type=float, default=1.0, metavar="S",
        help="seconds between two readings (default 1; at least 0.1)",
    )  # fmt: skip
    stats.add_argument("--once", action="store_true", help="print one table and exit")
    stats.add_argument("--json", action="store_true", help="print one JSON document and exit")
    tail = commands.add_parser(
        "tail", help="follow the records a running listener handles", description=TAIL_DESCRIPTION
    )
    tail.add_argument("address", nargs="?", metavar="ADDRESS", help=ADDRESS_HELP)
    tail.add_argument(
        "--level", default="NOTSET", metavar="LEVEL",
        help="show records of this level and above: a name such as WARNING, or a number (default: all)",
    )  # fmt: skip
    tail.add_argument(
        "--logger", default="", metavar="NAME",
        help="show only the records of logger NAME and its children (NAME.*) (default: all loggers)",
    )  # fmt: skip
    tail.add_argument(
        "--format", default=TAIL_FORMAT, metavar="FMT",
        help=f"a logging format for each record (default: {TAIL_FORMAT.replace('%', '%%')})",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``logfunnel`` command with *argv* (default ``sys.argv[1:]``); return its exit status."""
    parser, demo_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not 1 <= args.workers <= MAX_DEMO_WORKERS:
            demo_parser.error(
                f"--workers must be from 1 to {MAX_DEMO_WORKERS} (each is a process), got {args.workers}"
            )
        if not (args.seconds > 0 and math.isfinite(args.seconds)):
            demo_parser.error(f"--seconds must be a number above 0, got {args.seconds:g}")
        try:
            result = demo(args.workers, args.seconds, args.dir)
        except workdir.DemoDirectoryError as exc:
            demo_parser.error(str(exc))
        except BrokenPipeError:  # stdout went away (`logfunnel demo | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return 0 if result["accounted"] else 1
    if args.command == "serve":
        from ._serve import run_serve

        return run_serve(args)
    if args.command in ("stats", "tail"):
        if args.command == "stats" and not (args.interval >= 0.1 and math.isfinite(args.interval)):
            parser.error(f"--interval must be a number of seconds from 0.1 up, got {args.interval:g}")
        from ._cli_watch import run

        return run(args.command, args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
