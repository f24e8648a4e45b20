"""The ``logfunnel`` command: ``logfunnel demo`` shows the funnel at work on a simulated web shop.

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
command runs a demonstration of it."""

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


def _rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def _verdict(workers: int, cpus: int, lag: float, backlog: float, dropped: int) -> str:
    """The sentence that says which bound this run hit."""
    if dropped or lag > 0.25:
        return (
            f"The listener was the bound: it finished delivering {lag:.2f} s after the workers stopped "
            f"({backlog:.0%} of the records were still on their way then). It hands each record to a "
            f"RotatingFileHandler, one by one, on {cpus} CPU(s) shared with {workers} worker(s)."
        )
    return (
        f"The workers were the bound: the listener kept up and delivered the last record {lag:.2f} s "
        f"after they stopped. So the generator's rate is what {workers} worker process(es) sharing "
        f"{cpus} CPU(s) with the listener make with Python's logging; it is not logfunnel's ceiling "
        f"(benchmarks/ measures that)."
    )


def demo(workers: int = 4, seconds: float = 3.0, directory: str = "logfunnel-demo") -> dict[str, Any]:
    """Run *workers* processes that log a simulated shop's records for *seconds* into *directory*.

    Prints progress and a summary, and returns the listener's ``stats()`` with ``produced``,
    ``accounted`` (produced = delivered + dropped + lost), ``levels``, ``removed`` (files of an
    earlier run it deleted), ``generator_rate``, ``listener_rate`` and ``lag`` (seconds between the
    workers' stop and the last delivery). Raises ``ValueError`` for a bad count or duration and
    ``workdir.DemoDirectoryError`` if *directory* holds ``demo.log`` files it did not write.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a number above 0, got {seconds}")
    out = Path(directory)
    removed = workdir.prepare(out, _BACKUPS)
    if removed:
        print(f"removed {len(removed)} file(s) of an earlier demo run from {out}/: {', '.join(removed)}")
    handler = logging.handlers.RotatingFileHandler(
        out / workdir.LOG_NAME, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(DEMO_FORMAT, defaults={"request_id": "-"}))
    cpus = os.cpu_count() or 1
    print(
        f"logfunnel {__version__} demo: {workers} worker(s) on {cpus} CPU(s) serve a simulated shop "
        f"for {seconds:g} s, logging into {out / workdir.LOG_NAME} (rotating at {_MAX_BYTES >> 20} MB)"
    )
    listener = start_listener(handlers=[handler])
    started = time.monotonic()
    progress = _Progress()
    try:
        with multiprocessing.Pool(
            workers, initializer=install_worker_logging, initargs=(listener.queue,)
        ) as pool:
            pending = pool.map_async(serve, [(index, seconds) for index in range(workers)])
            while not pending.ready():
                pending.wait(0.1)
                elapsed = time.monotonic() - started
                received = listener.stats()["received"]
                progress.show(f"  {elapsed:5.1f} s  {received:>12,} records delivered  ({received / elapsed:,.0f}/s)")
            results: list[dict[str, Any]] = pending.get()
            produced = sum(result["produced"] for result in results)
            stopped = max(result["finished"] for result in results)
            backlog = 1 - listener.stats()["received"] / produced if produced else 0.0
            delivered_at = _wait_for_delivery(listener, produced)
            pool.close()
            pool.join()
    finally:
        listener.stop()
        handler.close()
    progress.end()
    stats = listener.stats()
    levels: dict[str, int] = {}
    for result in results:
        for name, count in result["levels"].items():
            levels[name] = levels.get(name, 0) + count
    first = min(result["started"] for result in results)
    serving = max(result["seconds"] for result in results)
    generator_rate = sum(result["produced"] / result["seconds"] for result in results if result["seconds"])
    listener_rate = stats["received"] / (delivered_at - first) if delivered_at > first else 0.0
    lag = max(0.0, delivered_at - stopped)
    accounted = stats["received"] + stats["dropped"] + stats["lost"] == produced
    per_worker = sorted(result["produced"] / result["seconds"] for result in results if result["seconds"])
    spread = f"{per_worker[0]:,.0f}" if len(set(per_worker)) == 1 else f"{per_worker[0]:,.0f} to {per_worker[-1]:,.0f}"
    files = sorted(out.glob(workdir.LOG_NAME + "*"), key=lambda p: (len(p.name), p.name))
    print()
    print(f"  produced   {produced:>11,}   ({', '.join(f'{k} {v:,}' for k, v in levels.items())})")
    print(f"  delivered  {stats['received']:>11,}")
    print(f"  dropped    {stats['dropped']:>11,}")
    print(f"  lost       {stats['lost']:>11,}")
    print(f"  check      produced = delivered + dropped + lost: {'yes' if accounted else 'NO'}")
    print(
        f"  generator  {generator_rate:>11,.0f} records/s produced in all, {spread} per worker "
        f"({workers} worker(s), {serving:.1f} s each)"
    )
    print(
        f"  listener   {listener_rate:>11,.0f} records/s delivered into the RotatingFileHandler "
        f"({delivered_at - first:.1f} s from the first worker's start to the last record)"
    )
    print(
        f"  files      {len(files)} in {out}/: "
        + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in files)
    )
    print()
    print("  " + _verdict(workers, cpus, lag, backlog, stats["dropped"]))
    return {
        **stats,
        "produced": produced,
        "accounted": accounted,
        "levels": levels,
        "removed": removed,
        "generator_rate": generator_rate,
        "listener_rate": listener_rate,
        "lag": lag,
    }


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
    return parser, demo_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``logfunnel`` command with *argv* (default ``sys.argv[1:]``); return its exit status."""
    parser, demo_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.workers < 1:
            demo_parser.error(f"--workers must be at least 1, got {args.workers}")
        if not (args.seconds > 0 and math.isfinite(args.seconds)):
            demo_parser.error(f"--seconds must be a number above 0, got {args.seconds:g}")
        try:
            result = demo(args.workers, args.seconds, args.dir)
        except workdir.DemoDirectoryError as exc:
            demo_parser.error(str(exc))
        return 0 if result["accounted"] else 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
