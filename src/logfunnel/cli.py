"""The ``logfunnel`` command."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .listener import start_listener
from .worker import install_worker_logging

DEMO_FORMAT = (
    "%(asctime)s %(levelname)-8s [%(processName)s %(process)d] %(name)s: %(message)s (request=%(request_id)s)"
)
# A realistic mix: errors are rare. Each record at ERROR and above is on the wire before its call
# returns (so a crash's last words arrive), which costs a round trip to the listener.
_LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
_WEIGHTS = [20, 70, 9.6, 0.3, 0.1]
_ENDPOINTS = ["/api/orders", "/api/users/{id}", "/health", "/api/search?q=caf\u00e9", "/static/app.js"]


def _demo_worker(seconds: float) -> dict[str, int]:
    """Log a realistic mix of records for *seconds*; return how many of each level were produced."""
    logs = [logging.getLogger(name) for name in ("app.http", "app.db", "app.cache", "app.jobs")]
    rng = random.Random(os.getpid())
    produced: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    i = 0
    while True:
        if i % 256 == 0 and time.monotonic() >= deadline:
            break
        level = rng.choices(_LEVELS, _WEIGHTS)[0]
        log = logs[i % len(logs)]
        request = {"request_id": f"{os.getpid():x}-{i:08x}"}
        if level >= logging.ERROR and i % 2:
            try:
                raise ConnectionResetError(f"upstream closed the connection after {rng.randint(1, 900)} ms")
            except ConnectionResetError:
                log.log(level, "request to %s failed", rng.choice(_ENDPOINTS), exc_info=True, extra=request)
        else:
            log.log(
                level,
                "%s %s -> %d in %.1f ms (%d bytes)",
                rng.choice(["GET", "POST", "PUT"]),
                rng.choice(_ENDPOINTS),
                rng.choice([200, 200, 200, 201, 304, 404, 500]),
                rng.random() * 120,
                rng.randint(100, 90_000),
                extra=request,
            )
        name = logging.getLevelName(level)
        produced[name] = produced.get(name, 0) + 1
        i += 1
    return produced


def _progress(text: str, final: bool = False) -> None:
    if sys.stdout.isatty():
        sys.stdout.write("\r" + text.ljust(78) + ("\n" if final else ""))
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def demo(workers: int = 4, seconds: float = 3.0, directory: str = "logfunnel-demo") -> dict[str, Any]:
    """Run a pool of *workers* that log for *seconds* into a rotating log under *directory*."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("demo.log*"):
        old.unlink()
    handler = logging.handlers.RotatingFileHandler(out / "demo.log", maxBytes=8 * 1024 * 1024, backupCount=20,
                                                   encoding="utf-8")  # fmt: skip
    handler.setFormatter(logging.Formatter(DEMO_FORMAT, defaults={"request_id": "-"}))
    print(
        f"logfunnel {__version__} demo: {workers} workers log for {seconds:g} s "
        f"into {out}/demo.log (rotating)"
    )
    listener = start_listener(handlers=[handler])
    started = time.monotonic()
    try:
        with multiprocessing.Pool(
            workers, initializer=install_worker_logging, initargs=(listener.queue,)
        ) as pool:
            pending = pool.map_async(_demo_worker, [seconds] * workers)
            while not pending.ready():
                pending.wait(0.5)
                elapsed = time.monotonic() - started
                received = listener.stats()["received"]
                _progress(
                    f"  {elapsed:5.1f} s  {received:>11,} records delivered  ({received / elapsed:>9,.0f}/s)"
                )
            results = pending.get()
            pool.close()
            pool.join()
    finally:
        listener.stop()
        handler.close()
    elapsed = time.monotonic() - started
    stats = listener.stats()
    by_level: dict[str, int] = {}
    for result in results:
        for name, count in result.items():
            by_level[name] = by_level.get(name, 0) + count
    produced = sum(by_level.values())
    _progress(f"  {elapsed:5.1f} s  {stats['received']:>11,} records delivered", final=True)
    files = sorted(out.glob("demo.log*"), key=lambda p: (len(p.name), p.name))
    print()
    print(f"  produced   {produced:>11,}   ({', '.join(f'{k} {v:,}' for k, v in sorted(by_level.items()))})")
    print(f"  delivered  {stats['received']:>11,}")
    print(f"  dropped    {stats['dropped']:>11,}")
    print(f"  lost       {stats['lost']:>11,}")
    print(f"  rate       {stats['received'] / elapsed:>11,.0f} records/s over {elapsed:.1f} s")
    print(
        f"  files      {len(files)} in {out}/: "
        + ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in files)
    )
    accounted = stats["received"] + stats["dropped"] + stats["lost"] == produced
    print(f"  check      produced = delivered + dropped + lost: {'yes' if accounted else 'NO'}")
    return {"produced": produced, "accounted": accounted, **stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logfunnel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"logfunnel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run a pool of workers logging into one rotating file")
    demo_parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo_parser.add_argument("--seconds", type=float, default=3.0, help="how long they log (default 3)")
    demo_parser.add_argument(
        "--dir", default="logfunnel-demo", help="where the log goes (default ./logfunnel-demo)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        result = demo(args.workers, args.seconds, args.dir)
        return 0 if result["accounted"] else 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
