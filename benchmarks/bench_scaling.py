"""Scaling: the same total of records from 1, 4, 16, 64 and 256 workers, logfunnel vs the cookbook.

A plain FileHandler with the benchmarks' format (as bench_core), fork workers, the total split
evenly among them. Runs are interleaved (every worker count and variant once, then again), and the
median run of each is reported with the parent's CPU time per record (the listener thread and
whatever else the parent does) and the largest worker RSS.

Usage: python benchmarks/bench_scaling.py [--total N] [--workers 1,4,16,64,256] [--repeat R] [--quick]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

import _common as C
import logfunnel

CTX = multiprocessing.get_context("fork")
LOGGER_NAME = "app.worker"


def _setup_logfunnel(handle, wid):
    C.reset_root_logger()
    logfunnel.install_worker_logging(handle)
    return logging.getLogger(LOGGER_NAME), logfunnel.flush_worker_logging


def _setup_cookbook(queue, wid):
    C.reset_root_logger(logging.handlers.QueueHandler(queue))
    return logging.getLogger(LOGGER_NAME), None


def _check(res, path, cpu0, stats=None):
    return C.finish_checks(res, C.count_lines(path), cpu0, stats)


def run_logfunnel(workers, args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        path = os.path.join(tmp, "app.log")
        handler = C.make_file_handler(path)
        cpu0 = C.parent_cpu_seconds()
        listener = logfunnel.start_listener(handlers=[handler])

        def finish():
            listener.stop()
            return listener.stats()

        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_logfunnel, listener.queue),
                workers,
                args.total // workers,
                tmp,
                finish=finish,
                timeout=args.timeout,
            )
        except BaseException:
            C.call_with_timeout(listener.stop, 10)
            raise
        finally:
            handler.close()
        return _check(res, path, cpu0, res["finish_result"])


def run_cookbook(workers, args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        path = os.path.join(tmp, "app.log")
        handler = C.make_file_handler(path)
        cpu0 = C.parent_cpu_seconds()
        queue = CTX.Queue(-1)
        listener = logging.handlers.QueueListener(queue, handler, respect_handler_level=True)
        listener.start()
        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_cookbook, queue),
                workers,
                args.total // workers,
                tmp,
                finish=listener.stop,
                timeout=args.timeout,
            )
        finally:
            handler.close()
            queue.close()
            queue.join_thread()
        return _check(res, path, cpu0)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--total", type=int, default=200_000, help="records in all (default 200000)")
    ap.add_argument("--workers", default="1,4,16,64,256", help="worker counts (default 1,4,16,64,256)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: 25600 records, 1 repeat")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is declared hung")
    ap.add_argument("--out", default=None, help="results file stem (default scaling, or scaling-quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.total, args.repeat = 25_600, 1
    if args.out is None:
        args.out = "scaling-quick" if args.quick else "scaling"
    args.counts = [int(n) for n in args.workers.split(",") if n.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    info = C.machine_info()
    print(f"CPUs: {info['cpu_count']}  Python: {info['python']}  {info['platform']}")
    print(f"{args.total:,} records from {args.counts} workers, {args.repeat} repeat(s), fork")
    variants = {}
    for workers in args.counts:
        variants[f"{workers}/logfunnel"] = functools.partial(run_logfunnel, workers, args)
        variants[f"{workers}/cookbook"] = functools.partial(run_cookbook, workers, args)
    runs = C.run_interleaved(variants, args.repeat)
    results = C.add_medians(C.summarize(runs), runs, ("parent_cpu_us_per_record", "worker_rss_mb"))
    table = scaling_table(results, args.counts)
    print()
    print(table)
    bad = [n for n, s in results.items() if "error" in s or not s.get("checks_ok")]
    if bad:
        print(f"\n!!!!! WARNING: problems in {', '.join(bad)} (see the run lines above) !!!!!")
    C.write_json(
        C.RESULTS_DIR / f"{args.out}.json",
        {
            "benchmark": "scaling",
            "machine": info,
            "params": {"total": args.total, "workers": args.counts, "repeat": args.repeat},
            "summary": results,
            "table": table,
        },
    )
    if plot(C.RESULTS_DIR / f"{args.out}.png", results, args):
        print(f"plot: {C.RESULTS_DIR / (args.out + '.png')}")
    print(f"results: {C.RESULTS_DIR / (args.out + '.json')}")
    return 1 if bad else 0


def scaling_table(results: dict, counts: list[int]) -> str:
    rows = [
        "| workers | logfunnel | cookbook | ratio | CPU us/rec (lf / cb) | worker RSS MB (lf / cb) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        lf, cb = results.get(f"{n}/logfunnel", {}), results.get(f"{n}/cookbook", {})
        a, b = lf.get("records_per_s"), cb.get("records_per_s")

        def num(s: dict, key: str, fmt: str) -> str:
            return "-" if s.get(key) is None else format(s[key], fmt)

        rows.append(
            f"| {n} | {'-' if a is None else f'{a:,.0f}/s'} | {'-' if b is None else f'{b:,.0f}/s'} "
            f"| {f'{a / b:.2f}x' if a and b else '-'} "
            f"| {num(lf, 'parent_cpu_us_per_record', '.1f')} / {num(cb, 'parent_cpu_us_per_record', '.1f')} "
            f"| {num(lf, 'worker_rss_mb', '.0f')} / {num(cb, 'worker_rss_mb', '.0f')} |"
        )
    return "\n".join(rows)


def plot(path, results: dict, args) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping plot")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in ("logfunnel", "cookbook"):
        rates = [results.get(f"{n}/{name}", {}).get("records_per_s") for n in args.counts]
        cpu = [results.get(f"{n}/{name}", {}).get("parent_cpu_us_per_record") for n in args.counts]
        ax1.plot(args.counts, rates, marker="o", label=name)
        ax2.plot(args.counts, cpu, marker="o", label=name)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.counts, [str(n) for n in args.counts])
        ax.set_xlabel("workers")
        ax.legend()
    ax1.set_ylabel("records / s (median run)")
    ax1.set_title(f"{args.total:,} records in all")
    ax2.set_ylabel("parent CPU us per record")
    ax2.set_title("Listener cost")
    C.save_figure(fig, path)
    return True


if __name__ == "__main__":
    sys.exit(main())
