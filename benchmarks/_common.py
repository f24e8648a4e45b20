"""Shared helpers for the logfunnel benchmarks.

What lives here, so every benchmark times things the same way:

* ``emit_records``      - the standard record loop, timing each logging call.
* ``run_timed_pool``    - start N worker processes, let them set up logging,
                          release them together, and stop the clock only once
                          the caller's ``finish`` step (e.g. stopping a
                          listener) has returned.  Collects per-call latencies.
* ``run_interleaved``   - run variants a, b, c, a, b, c, ... R times, with a
                          flushed progress line per run.
* ``summarize`` / ``print_table`` / ``write_json`` / ``plot_summary``
                        - median-run summary, text table, JSON and PNG output.
"""

from __future__ import annotations

import array
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s:%(funcName)s:%(lineno)d - %(message)s"

SETUP_TIMEOUT = 60.0  # seconds for workers to start and configure logging


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def make_file_handler(path, fmt: str = LOG_FORMAT) -> logging.FileHandler:
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def reset_root_logger(*handlers: logging.Handler, level: int = logging.NOTSET) -> logging.Logger:
    """Replace whatever the root logger has (e.g. inherited across fork)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    return root


def count_lines(path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def call_with_timeout(fn, timeout: float):
    """Run ``fn()`` in a daemon thread; raise TimeoutError if it hangs."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True, name="bench-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{getattr(fn, '__qualname__', fn)} did not return within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def percentile(sorted_values, q: float):
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def latency_stats(arrays) -> dict:
    """p50/p99/mean in microseconds over all per-call ns samples given."""
    values = sorted(v for arr in arrays for v in arr)
    if not values:
        return {"calls": 0, "p50_us": None, "p99_us": None, "mean_us": None}
    return {
        "calls": len(values),
        "p50_us": percentile(values, 50) / 1000.0,
        "p99_us": percentile(values, 99) / 1000.0,
        "mean_us": sum(values) / len(values) / 1000.0,
    }


# --------------------------------------------------------------------------
# the record loop and the timed worker pool
# --------------------------------------------------------------------------


def emit_records(logger: logging.Logger, n: int) -> array.array:
    """Log ``n`` standard records; return per-call latencies in ns."""
    lat = array.array("q", bytes(8 * n))
    clock = time.perf_counter_ns
    info = logger.info
    for i in range(n):
        client = "client-%d" % (i % 50)
        took = i * 0.01
        t = clock()
        info("request %d from %s took %.3f ms", i, client, took)
        lat[i] = clock() - t
    return lat


def _worker_main(setup, wid, n_records, ready, go, lat_path):
    # ``setup(wid)`` configures logging in this process and returns
    # (logger, finish) where finish() (may be None) runs after the records
    # are logged, still inside the timed region (e.g. a flush).
    logger, finish = setup(wid)
    ready.wait(SETUP_TIMEOUT)
    if not go.wait(SETUP_TIMEOUT):
        raise SystemExit("worker %d: never released" % wid)
    cpu0 = time.process_time()
    lat = emit_records(logger, n_records)
    if finish is not None:
        finish()
    cpu = time.process_time() - cpu0  # every thread of this worker: its sender's rendering included
    with open(lat_path, "wb") as f:
        lat.tofile(f)
    with open(lat_path + ".cpu", "w") as f:
        f.write(repr(cpu))
    _write_rss(lat_path + ".rss")


def _write_rss(path) -> None:
    """This worker's resident memory after its records, for the caller (psutil, if installed)."""
    try:
        import psutil

        rss = psutil.Process().memory_info().rss
    except Exception:
        return
    with open(path, "w") as f:
        f.write(str(rss))


def run_timed_pool(
    ctx, setup, n_workers: int, n_records: int, tmpdir, finish=None, timeout: float = 600.0
) -> dict:
    """Run ``n_workers`` processes each logging ``n_records`` records.

    The clock starts when all workers (already configured, waiting) are
    released and stops after every worker has exited *and* ``finish()``
    (e.g. ``listener.stop()``) has returned.  Workers that do not exit within
    ``timeout`` are terminated and reported as an error.

    Returns {"seconds", "records", "latency": {...}, "finish_result"}.
    """
    ready = ctx.Barrier(n_workers + 1)
    go = ctx.Event()
    lat_paths = [os.path.join(tmpdir, f"lat-{w}.bin") for w in range(n_workers)]
    procs = [
        ctx.Process(
            target=_worker_main, name=f"bench-worker-{w}", args=(setup, w, n_records, ready, go, lat_paths[w])
        )
        for w in range(n_workers)
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(SETUP_TIMEOUT)
        t0 = time.perf_counter()
        go.set()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        stuck = [p.name for p in procs if p.is_alive()]
        if stuck:
            raise TimeoutError(f"workers still running after {timeout:.0f}s: {stuck}")
        failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"workers failed (name, exitcode): {failed}")
        finish_result = None
        if finish is not None:
            finish_result = call_with_timeout(finish, max(1.0, deadline - time.monotonic()))
        seconds = time.perf_counter() - t0
    finally:
        go.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    lats = []
    rss = []
    cpu = 0.0
    for path in lat_paths:
        if os.path.exists(path + ".cpu"):
            with open(path + ".cpu") as f:
                cpu += float(f.read() or 0)
            os.unlink(path + ".cpu")
        arr = array.array("q")
        with open(path, "rb") as f:
            arr.frombytes(f.read())
        lats.append(arr)
        os.unlink(path)
        if os.path.exists(path + ".rss"):
            with open(path + ".rss") as f:
                rss.append(int(f.read() or 0))
            os.unlink(path + ".rss")
    return {
        "seconds": seconds,
        "records": n_workers * n_records,
        "latency": latency_stats(lats),
        "worker_rss_mb": max(rss) / 2**20 if rss else None,
        # the workers' CPU from their release to their last flush, per record (all workers summed)
        "worker_cpu_us_per_record": cpu / (n_workers * n_records) * 1e6,
        "finish_result": finish_result,
    }


def parent_cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far (every thread: the listener's included)."""
    times = os.times()
    return times.user + times.system


def finish_checks(res: dict, lines: int, cpu0: float, stats=None) -> dict:
    """Complete *res* (a run_timed_pool result): the parent's CPU per record since *cpu0*, the line
    count against the records, and *stats* (a logfunnel listener's, if any) checked for exactness."""
    res["parent_cpu_us_per_record"] = (parent_cpu_seconds() - cpu0) / res["records"] * 1e6
    res.pop("finish_result", None)
    res["lines"], res["expected_lines"] = lines, res["records"]
    problems = res.setdefault("problems", [])
    if isinstance(stats, dict):
        if stats.get("received") != res["records"]:
            problems.append(f"stats received={stats.get('received')}")
        for key in ("dropped", "lost", "lines_lost"):
            if stats.get(key):
                problems.append(f"stats {key}={stats.get(key)}")
    return res


# --------------------------------------------------------------------------
# running variants, summarizing, output
# --------------------------------------------------------------------------


def _fmt_us(v):
    return "-" if v is None else f"{v:.2f}"


def run_interleaved(variants: dict, repeat: int) -> dict:
    """Run each ``variants[name](run_index) -> result dict`` ``repeat`` times,
    interleaved.  A result needs "seconds" and "records"; "latency" and
    "lines"/"expected_lines" are checked and a "problems" list of strings is
    printed as loud warnings when present.  An exception is
    recorded as {"error": ...} and does not stop the other runs.
    """
    results = {name: [] for name in variants}
    total = repeat * len(variants)
    k = 0
    for r in range(repeat):
        for name, fn in variants.items():
            k += 1
            prefix = f"[{k}/{total}] {name:<16} run {r + 1}/{repeat}:"
            print(prefix, end=" ", flush=True)
            try:
                res = fn(r)
            except Exception as exc:
                res = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"ERROR {res['error']}", flush=True)
                results[name].append(res)
                continue
            res["records_per_s"] = res["records"] / res["seconds"]
            lat = res.get("latency") or {}
            line = (
                f"{res['records']:,} records in {res['seconds']:.3f}s = "
                f"{res['records_per_s']:,.0f} rec/s, call p50 "
                f"{_fmt_us(lat.get('p50_us'))} us, p99 "
                f"{_fmt_us(lat.get('p99_us'))} us"
            )
            problems = res.setdefault("problems", [])
            if "lines" in res:
                expected = res.get("expected_lines", res["records"])
                if res["lines"] != expected and not any("lines" in p for p in problems):
                    problems.append(f"file has {res['lines']:,} lines, expected {expected:,}")
                line += ", lines OK" if res["lines"] == expected else ""
            for p in problems:
                line += f"\n  !!!!! WARNING: {p} !!!!!"
            print(line, flush=True)
            results[name].append(res)
    return results


def summarize(results: dict) -> dict:
    """Per variant: the median run by records/s, plus median-of-runs latency."""
    summary = {}
    for name, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            summary[name] = {
                "runs": len(runs),
                "ok_runs": 0,
                "error": runs[0]["error"] if runs else "not run",
            }
            continue
        ranked = sorted(good, key=lambda r: r["records_per_s"])
        median_run = ranked[(len(ranked) - 1) // 2]
        lats = [r.get("latency") or {} for r in good]

        def med(key, lats=lats):
            vals = [lat[key] for lat in lats if lat.get(key) is not None]
            return statistics.median(vals) if vals else None

        summary[name] = {
            "runs": len(runs),
            "ok_runs": len(good),
            "records_per_s": median_run["records_per_s"],
            "seconds": median_run["seconds"],
            "records": median_run["records"],
            "p50_us": med("p50_us"),
            "p99_us": med("p99_us"),
            "checks_ok": not any(r.get("problems") for r in good),
        }
    return summary


def add_medians(summary: dict, results: dict, fields) -> dict:
    """Add to each variant's summary the median over its good runs of each of *fields*."""
    for name, runs in results.items():
        for field in fields:
            values = [r[field] for r in runs if "error" not in r and r.get(field) is not None]
            if name in summary and values:
                summary[name][field] = statistics.median(values)
    return summary


def ratio(summary: dict, a: str, b: str, key: str = "records_per_s"):
    va = summary.get(a, {}).get(key)
    vb = summary.get(b, {}).get(key)
    return va / vb if va and vb else None


def print_table(summary: dict, baselines=()) -> None:
    """Print one row per variant; a "vs <baseline>" throughput column each."""
    cols = (
        ["variant", "records/s"]
        + [f"x vs {b}" for b in baselines]
        + ["p50 us", "p99 us", "runs ok", "checks"]
    )
    rows = []
    for name, s in summary.items():
        if "error" in s:
            rows.append([name, "FAILED"] + ["-"] * (len(cols) - 4) + [f"0/{s['runs']}", "-"])
            continue
        row = [name, f"{s['records_per_s']:,.0f}"]
        for b in baselines:
            r = ratio(summary, name, b)
            row.append("-" if r is None else f"{r:.2f}")
        row += [
            _fmt_us(s["p50_us"]),
            _fmt_us(s["p99_us"]),
            f"{s['ok_runs']}/{s['runs']}",
            "ok" if s["checks_ok"] else "PROBLEM",
        ]
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    for name, s in summary.items():
        if "error" in s:
            print(f"  {name}: {s['error']}")


def write_json(path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def save_figure(fig, path) -> None:
    """Lay out *fig*, write it to *path* (making its folder) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(path, summary: dict, title: str) -> bool:
    """Bar chart: records/s per variant, and p50/p99 call latency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: skipping plot", flush=True)
        return False
    names = [n for n, s in summary.items() if "error" not in s]
    if not names:
        return False
    rate = [summary[n]["records_per_s"] for n in names]
    p50 = [summary[n]["p50_us"] or 0 for n in names]
    p99 = [summary[n]["p99_us"] or 0 for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    bars = ax1.bar(names, rate, color="tab:blue")
    ax1.bar_label(bars, labels=[f"{v:,.0f}" for v in rate], fontsize=8)
    ax1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax1.set_ylabel("records / s (median run)")
    ax1.set_title("Throughput")
    x = range(len(names))
    w = 0.4
    b50 = ax2.bar([i - w / 2 for i in x], p50, w, label="p50")
    b99 = ax2.bar([i + w / 2 for i in x], p99, w, label="p99", alpha=0.6)
    ax2.bar_label(b50, labels=[f"{v:.1f}" for v in p50], fontsize=8)
    ax2.bar_label(b99, labels=[f"{v:.1f}" for v in p99], fontsize=8)
    ax2.set_xticks(list(x), names)
    ax2.set_ylabel("logger.info call latency (us)")
    ax2.set_title("Per-call latency")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=15)
    fig.suptitle(title)
    save_figure(fig, path)
    return True
