"""Lanes benchmark: does a dead network sink slow down the file handler behind the same listener?

bench_core's workload (W worker processes x N records, fork, one FileHandler) through
logfunnel.start_listener, in two variants run interleaved:

  file-only          handlers=[FileHandler]
  file+inline-null   handlers=[FileHandler, logfunnel.inline(a handler that does nothing)]: what
                     whole records cost the workers and the listener (any handler that is not a
                     plain file needs them), without any lane
  file+dead-sinks    handlers=[FileHandler, HTTPHandler, SMTPHandler], where the HTTPHandler points
                     at a server that accepts and never answers and the SMTPHandler at one that stalls
                     after EHLO; each runs on a lane of its own (the default for network handlers)

The clock runs from the workers' release until every worker has exited and every line is in the
file (the dead lanes' drain at stop() is outside it). Workers use on_full="drop", so a worker held
back by the listener would show as dropped records in stats(); the run checks received = produced,
dropped = lost = 0, and reports each lane's figures (a dead lane drops what overflows its buffer).

Usage: python benchmarks/bench_lanes.py [--records N] [--workers W] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import logging
import logging.handlers
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "tests"))  # the black-hole servers the lane tests use
_SRC = _HERE.parent / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

import _common as C
import logfunnel
import logfunnel._handling
from _blackholes import http_blackhole, smtp_stall

LOGGER_NAME = "app.worker"
CTX = multiprocessing.get_context("fork")


def _setup(handle, wid):
    C.reset_root_logger()
    logfunnel.install_worker_logging(handle, on_full="drop")
    return logging.getLogger(LOGGER_NAME), logfunnel.flush_worker_logging


class _Discard(logging.Handler):
    """An inline handler that needs whole records (not a plain file): what the records cost alone."""

    def emit(self, record):
        pass


def _settled(stats, expected):
    return stats["received"] + stats["dropped"] + stats["lost"] >= expected


def _wait_for_lines(listener, path, expected, timeout):
    # Every record the workers made is received (or counted dropped/lost), and every one received
    # is in the file.
    deadline = time.monotonic() + timeout
    while not _settled(listener.stats(), expected) and time.monotonic() < deadline:
        time.sleep(0.005)
    received = listener.stats()["received"]
    while C.count_lines(path) < received and time.monotonic() < deadline:
        time.sleep(0.005)
    return listener.stats()


def _run(args, sinks, _r):
    with tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp:
        path = os.path.join(tmp, "app.log")
        handler = C.make_file_handler(path)
        expected = args.workers * args.records
        with http_blackhole() as hole, smtp_stall() as stall:
            handlers = [handler]
            if sinks == "inline":
                handlers.append(logfunnel.inline(_Discard()))
            dead_sinks = sinks == "dead"
            if dead_sinks:
                handlers += [
                    logging.handlers.HTTPHandler(f"{hole.host}:{hole.port}", "/log", method="POST"),
                    logging.handlers.SMTPHandler(
                        (stall.host, stall.port), "app@example.invalid", ["ops@example.invalid"], "log"
                    ),
                ]
            listener = logfunnel.start_listener(handlers=handlers)
            try:
                res = C.run_timed_pool(
                    CTX,
                    functools.partial(_setup, listener.queue),
                    args.workers,
                    args.records,
                    tmp,
                    finish=lambda: _wait_for_lines(listener, path, expected, args.timeout),
                    timeout=args.timeout,
                )
                stuck = {"http_connections": hole.accepted, "smtp_connections": stall.accepted}
            finally:
                C.call_with_timeout(listener.stop, 60)  # outside the clock: the dead lanes drain 5 s
                handler.close()
        stats = listener.stats()
        res.pop("finish_result")
        res["lines"] = C.count_lines(path)
        res["expected_lines"] = expected
    problems = res.setdefault("problems", [])
    if stats["received"] != expected:
        problems.append(f"stats received={stats['received']}, expected {expected}")
    for key in ("dropped", "lost"):
        if stats[key]:
            problems.append(f"workers: stats {key}={stats[key]}")
    res["worker_dropped"], res["worker_lost"] = stats["dropped"], stats["lost"]
    res["lanes"] = stats["lanes"]
    if dead_sinks:
        res["dead_sinks"] = stuck
        for lane in stats["lanes"]:  # every record the file got (its own reports too) went to each lane
            accounted = lane["handled"] + lane["dropped"] + lane["failed"] + lane["undelivered"]
            if accounted != res["lines"]:
                problems.append(f"lane {lane['name']} accounts for {accounted} of {res['lines']} records")
        if not stuck["http_connections"] or not stuck["smtp_connections"]:
            problems.append(f"a dead sink was never reached: {stuck}")
    res["lines_per_s"] = res["lines"] / res["seconds"]
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=50_000, help="records per worker (default 50000)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke test: 5000 records per worker, 1 repeat")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is declared hung")
    ap.add_argument("--only", default="", help="comma-separated subset of variants to run")
    ap.add_argument("--out", default=None, help="results file stem (default lanes, or lanes-quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.records, args.repeat = 5_000, 1
    if args.out is None:
        args.out = "lanes-quick" if args.quick else "lanes"
    return args


def main(argv=None):
    args = parse_args(argv)
    info = C.machine_info()
    print(
        f"CPUs: {info['cpu_count']}  Python: {info['python']} ({info['implementation']})  {info['platform']}"
    )
    print(f"{args.workers} workers x {args.records:,} records, {args.repeat} repeat(s), fork")
    logfunnel._handling.BANNER_BURST = 1  # the dead lanes' reports: one of each kind is enough here
    variants = {
        "file-only": functools.partial(_run, args, None),
        "file+inline-null": functools.partial(_run, args, "inline"),
        "file+dead-sinks": functools.partial(_run, args, "dead"),
    }
    if args.only:
        keep = {v.strip() for v in args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}
    results = C.run_interleaved(variants, args.repeat)
    summary = C.summarize(results)
    print()
    C.print_table(summary, baselines=("file-only",))
    ratio = C.ratio(summary, "file+dead-sinks", "file-only")
    ratio_inline = C.ratio(summary, "file+dead-sinks", "file+inline-null")
    print()
    print(
        f"file lines/s with dead sinks / without: {'-' if ratio is None else f'{ratio:.3f}'} (target >= 0.90)"
    )
    print(
        "file lines/s with dead sinks / with an inline null handler: "
        f"{'-' if ratio_inline is None else f'{ratio_inline:.3f}'} (the lanes' own cost)"
    )
    for name, runs in results.items():
        good = [r for r in runs if "error" not in r]
        dropped = sum(r["worker_dropped"] for r in good)
        lost = sum(r["worker_lost"] for r in good)
        print(f"{name}: workers dropped {dropped}, lost {lost} over {len(good)} runs")
        if good and good[-1]["lanes"]:
            for lane in good[-1]["lanes"]:
                print(
                    f"  last run, lane {lane['name']}: handled {lane['handled']:,}, "
                    f"dropped {lane['dropped']:,}, failed {lane['failed']:,}, "
                    f"undelivered {lane['undelivered']:,}, {lane['state']}"
                )
    bad = [n for n, s in summary.items() if "error" in s or not s["checks_ok"]]
    if bad:
        print(f"\n!!!!! WARNING: problems in {', '.join(bad)} (see the run lines above) !!!!!")
    json_path = C.RESULTS_DIR / f"{args.out}.json"
    png_path = C.RESULTS_DIR / f"{args.out}.png"
    C.write_json(
        json_path,
        {
            "benchmark": "lanes",
            "machine": info,
            "params": {
                "workers": args.workers,
                "records_per_worker": args.records,
                "repeat": args.repeat,
                "start_method": "fork",
                "format": C.LOG_FORMAT,
                "worker_on_full": "drop",
            },
            "summary": summary,
            "ratio_file_lines_per_s_dead_sinks_vs_file_only": ratio,
            "ratio_file_lines_per_s_dead_sinks_vs_inline_null": ratio_inline,
            "runs": results,
        },
    )
    title = (
        f"file handler with and without dead HTTP/SMTP lanes: {args.workers} workers x {args.records:,} "
        f"({info['cpu_count']} CPUs, Python {info['python']})"
    )
    plotted = C.plot_summary(png_path, summary, title)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
