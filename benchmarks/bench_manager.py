"""ProcessPoolExecutor logging through a LogManager vs the cookbook's recipe for executors.

4 executor workers x 10,000 records into one file, side by side in one run:

  logfunnel-manager   logfunnel.LogManager([FileHandler]) in its own process; each task joins with
                      install_worker_logging(manager.queue)
  manager-queue       the logging cookbook's recipe for ProcessPoolExecutor: a
                      multiprocessing.Manager().Queue(), QueueHandler in each worker, QueueListener
                      with the FileHandler in the parent

Both executors are started and warmed up (every worker configured) before the clock starts; the clock
stops once every task has returned and the listener (or manager) has handled every record.

Run: python benchmarks/bench_manager.py [--records N] [--workers W] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import logging
import logging.handlers
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C
import logfunnel

LOGGER_NAME = "app.worker"
CTX = multiprocessing.get_context("fork")


# ---- what runs in the executor's workers ------------------------------------------------------------


def _join_logfunnel(handle, barrier) -> int:
    logfunnel.install_worker_logging(handle)
    barrier.wait(C.SETUP_TIMEOUT)  # one setup task per worker: all four are configured
    return os.getpid()


def _join_queue(queue, barrier) -> int:
    C.reset_root_logger(logging.handlers.QueueHandler(queue))
    barrier.wait(C.SETUP_TIMEOUT)
    return os.getpid()


def _emit(n: int) -> bytes:
    latencies = C.emit_records(logging.getLogger(LOGGER_NAME), n)
    return latencies.tobytes()


def _timed_executor(setup, setup_arg, args, finish) -> dict:
    """Warm up an executor (every worker configured), then time the logging tasks and finish()."""
    manager = CTX.Manager()  # a Barrier that crosses to executor workers has to be a proxy
    try:
        barrier = manager.Barrier(args.workers)
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=CTX) as executor:
            pids = list(executor.map(setup, [setup_arg] * args.workers, [barrier] * args.workers))
            assert len(set(pids)) == args.workers, "a worker ran two setup tasks"
            start = time.perf_counter()
            results = list(executor.map(_emit, [args.records] * args.workers, timeout=600))
            executor.shutdown(wait=True)
            finish_result = finish()
            seconds = time.perf_counter() - start
    finally:
        manager.shutdown()
    latencies = []
    for raw in results:
        arr = array.array("q")
        arr.frombytes(raw)
        latencies.append(arr)
    return {
        "seconds": seconds,
        "records": args.workers * args.records,
        "latency": C.latency_stats(latencies),
        "finish_result": finish_result,
    }


# ---- the variants ----------------------------------------------------------------------------------


def run_logfunnel_manager(args, _r) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-manager-") as tmp:
        path = os.path.join(tmp, "app.log")
        manager = logfunnel.LogManager([C.make_file_handler(path)]).start()

        def finish():
            manager.stop()
            return manager.stats()

        try:
            result = _timed_executor(_join_logfunnel, manager.queue, args, finish)
        finally:
            manager.stop()
        stats = result.pop("finish_result")
        result["lines"] = C.count_lines(path)
        if (stats["received"], stats["dropped"], stats["lost"]) != (result["records"], 0, 0):
            result.setdefault("problems", []).append(f"stats say {stats['received']} received")
        return result


def run_manager_queue(args, _r) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-manager-") as tmp:
        path = os.path.join(tmp, "app.log")
        handler = C.make_file_handler(path)
        queue_manager = CTX.Manager()
        queue = queue_manager.Queue(-1)
        listener = logging.handlers.QueueListener(queue, handler, respect_handler_level=True)
        listener.start()
        try:
            result = _timed_executor(_join_queue, queue, args, listener.stop)
        finally:
            if listener._thread is not None:  # stop() twice fails before Python 3.13 (gh-114706)
                listener.stop()
            handler.close()
            queue_manager.shutdown()
        result.pop("finish_result")
        result["lines"] = C.count_lines(path)
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="records per worker (default 10000)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2,000 records per worker, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.repeat = 2_000, 1
    info = C.machine_info()
    print(f"CPUs: {info['cpu_count']}  Python: {info['python']}  {info['platform']}")
    print(f"ProcessPoolExecutor, {args.workers} workers x {args.records:,} records, {args.repeat} repeat(s)")
    variants = {
        "logfunnel-manager": lambda r: run_logfunnel_manager(args, r),
        "manager-queue": lambda r: run_manager_queue(args, r),
    }
    results = C.run_interleaved(variants, args.repeat)
    summary = C.summarize(results)
    print()
    C.print_table(summary, baselines=("manager-queue",))
    ratios = {
        "logfunnel-manager/manager-queue records_per_s": C.ratio(
            summary, "logfunnel-manager", "manager-queue"
        ),
        "logfunnel-manager/manager-queue p50 latency": C.ratio(
            summary, "logfunnel-manager", "manager-queue", "p50_us"
        ),
    }
    print()
    for name, value in ratios.items():
        print(f"{name:<48} {'-' if value is None else f'{value:.2f}x'}")
    bad = [name for name, s in summary.items() if "error" in s or not s["checks_ok"]]
    out = "manager-quick" if args.quick else "manager"
    C.write_json(C.RESULTS_DIR / f"{out}.json", {
        "benchmark": "manager", "machine": info,
        "params": {"workers": args.workers, "records_per_worker": args.records, "repeat": args.repeat},
        "summary": summary, "ratios": ratios, "runs": results,
    })  # fmt: skip
    title = f"ProcessPoolExecutor {args.workers} x {args.records:,} records ({info['cpu_count']} CPUs)"
    plotted = C.plot_summary(C.RESULTS_DIR / f"{out}.png", summary, title)
    print(f"\nwrote {C.RESULTS_DIR / out}.json" + (" and .png" if plotted else ""))
    if bad:
        print(f"\n!!!!! WARNING: problems in {', '.join(bad)} !!!!!")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
