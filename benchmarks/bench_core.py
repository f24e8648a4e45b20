"""Core throughput/latency benchmark: logfunnel vs the stdlib cookbook.

W worker processes (fork) x N records each into one log file, compared with

  logfunnel       logfunnel.start_listener(handlers=[FileHandler]); workers call
                  install_worker_logging(listener.queue)
  stdlib-queue    the logging-cookbook recipe: multiprocessing.Queue(-1),
                  QueueHandler on each worker's root logger, QueueListener
                  (respect_handler_level=True) + FileHandler in the parent
  single-process  one process logging W*N records to its own FileHandler

Usage: python benchmarks/bench_core.py [--records N] [--workers W]
                                       [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import logging
import logging.handlers
import multiprocessing
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

import _common as C

_API = ("start_listener", "install_worker_logging", "flush_worker_logging")
try:
    import logfunnel

    _missing = [a for a in _API if not hasattr(logfunnel, a)]
    if _missing:
        raise ImportError(f"logfunnel lacks {', '.join(_missing)}")
    LOGFUNNEL_ERROR = None
except Exception as exc:
    logfunnel = None
    LOGFUNNEL_ERROR = f"{type(exc).__name__}: {exc}"

LOGGER_NAME = "app.worker"
CTX = multiprocessing.get_context("fork")


# ---- worker-side setup functions: return (logger, finish) -----------------


def _setup_logfunnel(handle, wid):
    C.reset_root_logger()
    logfunnel.install_worker_logging(handle)
    return logging.getLogger(LOGGER_NAME), logfunnel.flush_worker_logging


def _setup_stdlib_queue(queue, wid):
    C.reset_root_logger(logging.handlers.QueueHandler(queue))
    return logging.getLogger(LOGGER_NAME), None


def _setup_single(path, wid):
    handler = C.make_file_handler(path)
    C.reset_root_logger(handler)
    return logging.getLogger(LOGGER_NAME), handler.close


# ---- one run of each variant ---------------------------------------------

LINE_RE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO (\d+) " + re.escape(LOGGER_NAME) + r":emit_records:(\d+) - "
    r"request (\d+) from (client-\d+) took (\S+) ms"
)


def _check_file(path, expected, n_procs) -> dict:
    """Check every line: format, message text, and that each process's
    records 0..N-1 are all there, once, in order.  Runs after the clock."""
    lines, bad, first = 0, [], None
    next_i, linenos = {}, set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            lines += 1
            line = line.rstrip("\n")
            first = line if first is None else first
            m = LINE_RE.fullmatch(line)
            if m is None:
                bad.append(f"bad line {lines}: {line!r}")
                continue
            pid, lineno, i, client, took = m.groups()
            i = int(i)
            linenos.add(lineno)
            if (client, took) != ("client-%d" % (i % 50), "%.3f" % (i * 0.01)):
                bad.append(f"wrong message at line {lines}: {line!r}")
            if next_i.get(pid, 0) != i:
                bad.append(f"pid {pid}: record {i} at line {lines}, expected {next_i.get(pid, 0)}")
            next_i[pid] = i + 1
    problems = []
    if lines != expected:
        problems.append(f"file has {lines:,} lines, expected {expected:,}")
    if len(next_i) != n_procs:
        problems.append(f"{len(next_i)} distinct pids, expected {n_procs}")
    short = {pid: n for pid, n in next_i.items() if n != expected // n_procs}
    if short:
        problems.append(f"pids whose last record is not {expected // n_procs - 1}: {short}")
    if len(linenos) > 1:
        problems.append(f"several lineno values: {sorted(linenos)}")
    if bad:
        problems.append(f"{len(bad)} bad/out-of-order lines, first: {bad[:3]}")
    return {
        "lines": lines,
        "expected_lines": expected,
        "pids": len(next_i),
        "first_line": first,
        "problems": problems,
    }


def run_logfunnel(args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        path = os.path.join(tmp, "app.log")
        handler = C.make_file_handler(path)
        listener = logfunnel.start_listener(handlers=[handler])

        def finish():
            listener.stop()
            return listener.stats()

        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_logfunnel, listener.queue),
                args.workers,
                args.records,
                tmp,
                finish=finish,
                timeout=args.timeout,
            )
        except BaseException:
            try:
                C.call_with_timeout(listener.stop, 10)
            except Exception:
                pass
            raise
        finally:
            handler.close()
        stats = res.pop("finish_result")
        res["listener_stats"] = stats
        res.update(_check_file(path, res["records"], args.workers))
    problems = res["problems"]
    if isinstance(stats, dict):
        if stats.get("received") != res["records"]:
            problems.append(f"stats received={stats.get('received')}")
        for key in ("dropped", "lost"):
            if stats.get(key):
                problems.append(f"stats {key}={stats.get(key)}")
    return res


def run_stdlib_queue(args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        path = os.path.join(tmp, "app.log")
        handler = C.make_file_handler(path)
        queue = CTX.Queue(-1)
        listener = logging.handlers.QueueListener(queue, handler, respect_handler_level=True)
        listener.start()
        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_stdlib_queue, queue),
                args.workers,
                args.records,
                tmp,
                finish=listener.stop,
                timeout=args.timeout,
            )
        except BaseException:
            if listener._thread is not None:
                try:
                    C.call_with_timeout(listener.stop, 10)
                except Exception:
                    pass
            raise
        finally:
            handler.close()
            queue.close()
            queue.join_thread()
        res.pop("finish_result")
        res.update(_check_file(path, res["records"], args.workers))
    return res


def run_single(args, _r):
    total = args.workers * args.records
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        path = os.path.join(tmp, "app.log")
        res = C.run_timed_pool(
            CTX, functools.partial(_setup_single, path), 1, total, tmp, timeout=args.timeout
        )
        res.pop("finish_result")
        res.update(_check_file(path, total, 1))
    return res


# ---- the floor: what a logging call costs before any handler does work -----


class _DoNothing(logging.Handler):
    def emit(self, record):
        pass


def _floor_child(n, out):
    C.reset_root_logger(_DoNothing())
    log = logging.getLogger(LOGGER_NAME)
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        log.info("request %d from %s took %.3f ms", i, "client-%d" % (i % 50), i * 0.01)
        samples.append(clock() - t0)
    samples.sort()
    out.put((samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3))


def measure_floor(n=200_000):
    """p50/p99 of logger.info into a handler whose emit() does nothing (one process, no load)."""
    out = CTX.Queue()
    proc = CTX.Process(target=_floor_child, args=(n, out))
    proc.start()
    result = out.get(timeout=120)
    proc.join(30)
    return result


# ---- main ------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=50_000, help="records per worker (default 50000)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: 5000 records per worker, 1 repeat")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is declared hung")
    ap.add_argument("--only", default="", help="comma-separated subset of variants to run")
    ap.add_argument(
        "--out",
        default=None,
        help="results file stem in benchmarks/results (default core, or core-quick with --quick)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.records, args.repeat = 5_000, 1
    if args.out is None:
        args.out = "core-quick" if args.quick else "core"
    return args


def main(argv=None):
    args = parse_args(argv)
    info = C.machine_info()
    total = args.workers * args.records
    print(
        f"CPUs: {info['cpu_count']}  Python: {info['python']} ({info['implementation']})  {info['platform']}"
    )
    print(
        f"{args.workers} workers x {args.records:,} records "
        f"(single-process: {total:,}), {args.repeat} repeat(s), fork"
    )

    variants = {"logfunnel": run_logfunnel, "stdlib-queue": run_stdlib_queue, "single-process": run_single}
    if logfunnel is None:
        print(f"logfunnel not importable ({LOGFUNNEL_ERROR}): skipping it")
        del variants["logfunnel"]
    if args.only:
        keep = {v.strip() for v in args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}
    variants = {k: functools.partial(v, args) for k, v in variants.items()}

    results = C.run_interleaved(variants, args.repeat)
    summary = C.summarize(results)

    print()
    C.print_table(summary, baselines=("stdlib-queue", "single-process"))
    ratios = {
        "logfunnel/stdlib-queue records_per_s": C.ratio(summary, "logfunnel", "stdlib-queue"),
        "logfunnel/single-process records_per_s": C.ratio(summary, "logfunnel", "single-process"),
        "logfunnel/stdlib-queue p50 latency": C.ratio(summary, "logfunnel", "stdlib-queue", "p50_us"),
        "logfunnel/stdlib-queue p99 latency": C.ratio(summary, "logfunnel", "stdlib-queue", "p99_us"),
    }
    floor_p50, floor_p99 = measure_floor()
    stdlib_p50 = summary.get("stdlib-queue", {}).get("p50_us")
    if stdlib_p50:
        ratios["floor/stdlib-queue p50 latency"] = floor_p50 / stdlib_p50
    print()
    for k, v in ratios.items():
        print(f"{k:<42} {'-' if v is None else f'{v:.2f}x'}")
    print(
        f"floor: logger.info into a handler that does nothing, p50 {floor_p50:.2f} us, "
        f"p99 {floor_p99:.2f} us (one process, no load)"
    )
    bad = [n for n, s in summary.items() if "error" in s or not s["checks_ok"]]
    if bad:
        print(f"\n!!!!! WARNING: problems in {', '.join(bad)} (see the run lines above) !!!!!")

    json_path = C.RESULTS_DIR / f"{args.out}.json"
    png_path = C.RESULTS_DIR / f"{args.out}.png"
    C.write_json(
        json_path,
        {
            "benchmark": "core",
            "machine": info,
            "params": {
                "workers": args.workers,
                "records_per_worker": args.records,
                "single_process_records": total,
                "repeat": args.repeat,
                "start_method": "fork",
                "format": C.LOG_FORMAT,
            },
            "logfunnel_import_error": LOGFUNNEL_ERROR,
            "summary": summary,
            "ratios": ratios,
            "floor_us": {"p50": floor_p50, "p99": floor_p99},
            "runs": results,
        },
    )
    title = (
        f"{args.workers} workers x {args.records:,} records -> one file "
        f"({info['cpu_count']} CPUs, Python {info['python']})"
    )
    plotted = C.plot_summary(png_path, summary, title)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
