"""Size-rotated log files written directly by several processes: logfunnel vs its peers.

W worker processes (fork) x N records each, every worker with its OWN handler instance on the SAME path
(how these handlers are used across independent processes), maxBytes = 1 MiB and a backupCount large
enough to keep every file, side by side in one run:

  logfunnel               logfunnel.handlers.LockedRotatingFileHandler
  concurrent-log-handler  concurrent_log_handler.ConcurrentRotatingFileHandler (portalocker lock file)
  stdlib-rotating         logging.handlers.RotatingFileHandler, no locking at all: the naive setup;
                          its lost lines are reported, not treated as a failure

The clock stops when every worker has logged its records, closed its handler and exited.  After the
clock, every file in the log directory (base file, every backup, whatever the names) is read: lines,
well-formed lines (no torn or merged lines), and for each process records 0..N-1 present exactly once
(as a set: order across rotated files may interleave).  Once per invocation the raw cost of the
candidate locks (filelock, filelock on a kept-open descriptor, fcntl.flock) is measured, uncontended.

Usage: python benchmarks/bench_files.py [--records N] [--workers W] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
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

try:
    from logfunnel.handlers import LockedRotatingFileHandler

    LOGFUNNEL_ERROR = None
except Exception as exc:
    LockedRotatingFileHandler = None
    LOGFUNNEL_ERROR = f"{type(exc).__name__}: {exc}"

try:
    from concurrent_log_handler import ConcurrentRotatingFileHandler

    CLH_ERROR = None
except Exception as exc:
    ConcurrentRotatingFileHandler = None
    CLH_ERROR = f"{type(exc).__name__}: {exc}"

try:
    import filelock
except ImportError:
    filelock = None

LOGGER_NAME = "app.worker"
CTX = multiprocessing.get_context("fork")
MAX_BYTES = 1 << 20  # 1 MiB
BASE_NAME = "app.log"

HANDLERS = {
    "logfunnel": lambda: LockedRotatingFileHandler,
    "concurrent-log-handler": lambda: ConcurrentRotatingFileHandler,
    "stdlib-rotating": lambda: logging.handlers.RotatingFileHandler,
}
STRICT = {"logfunnel", "concurrent-log-handler"}  # any loss / dup / torn line is a failure for these

LINE_RE = re.compile(
    rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO (\d+) "
    + re.escape(LOGGER_NAME.encode())
    + rb":emit_records:\d+ - "
    rb"request (\d+) from (client-\d+) took (\S+) ms"
)


# ---- worker side: each worker opens its own handler on the shared path ---------------------------


def _setup_handler(variant, path, backup_count, errors_dir, wid):
    cls = HANDLERS[variant]()
    handler = cls(path, mode="a", maxBytes=MAX_BYTES, backupCount=backup_count, encoding="utf-8")
    handler.setFormatter(logging.Formatter(C.LOG_FORMAT))
    errors = {"count": 0, "first": None}

    def handle_error(record):  # count emit() failures instead of printing a traceback per record
        errors["count"] += 1
        if errors["first"] is None:
            exc = sys.exc_info()[1]
            errors["first"] = f"{type(exc).__name__}: {exc}" if exc else "unknown"

    handler.handleError = handle_error
    C.reset_root_logger(handler)

    def finish():
        handler.close()
        with open(os.path.join(errors_dir, f"errors-{wid}.json"), "w") as f:
            json.dump(errors, f)

    return logging.getLogger(LOGGER_NAME), finish


# ---- after the clock: read the whole file set ------------------------------------------------------


def _check_file_set(log_dir, n_workers, n_records) -> dict:
    """Read every file in ``log_dir``; count lines, torn lines, lost and duplicated records."""
    counts = {}  # pid -> bytearray of per-record counts
    lines = torn = wrong = out_of_range = 0
    torn_examples = []
    files, lock_files = [], []
    longest = 0
    for entry in sorted(os.scandir(log_dir), key=lambda e: e.name):
        if not entry.is_file():
            continue
        size = entry.stat().st_size
        if size == 0 and entry.name.endswith(".lock"):
            lock_files.append(entry.name)  # e.g. concurrent-log-handler's .__app.lock
            continue
        files.append([entry.name, size])
        with open(entry.path, "rb") as f:
            data = f.read()
        parts = data.split(b"\n")
        tail = parts.pop()  # b"" when the file ends with a newline
        if tail:
            parts.append(tail)  # a last line without its newline counts as torn below
        for k, line in enumerate(parts):
            lines += 1
            longest = max(longest, len(line) + 1)
            m = LINE_RE.fullmatch(line)
            if m is None or (k == len(parts) - 1 and tail):
                torn += 1
                if len(torn_examples) < 3:
                    torn_examples.append(f"{entry.name}: {line[:200]!r}")
                continue
            pid, i, client, took = m.groups()
            i = int(i)
            if (client, took) != (b"client-%d" % (i % 50), b"%.3f" % (i * 0.01)):
                wrong += 1
            if not 0 <= i < n_records:
                out_of_range += 1
                continue
            seen = counts.get(pid)
            if seen is None:
                seen = counts[pid] = bytearray(n_records)
            if seen[i] < 255:
                seen[i] += 1
    found = sum(n_records - seen.count(0) for seen in counts.values())
    duplicates = sum(c - 1 for seen in counts.values() for c in seen if c > 1)
    expected = n_workers * n_records
    return {
        "lines_read": lines,
        "expected_lines": expected,
        "unique_records": found,
        "lost": expected - found,
        "duplicates": duplicates,
        "torn": torn,
        "torn_examples": torn_examples,
        "wrong_message": wrong,
        "out_of_range": out_of_range,
        "pids": len(counts),
        "files": len(files),
        "file_sizes": files,
        "lock_files": lock_files,
        "largest_file_bytes": max((s for _, s in files), default=0),
        "longest_line_bytes": longest,
    }


def run_variant(variant, args, _r) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        log_dir = os.path.join(tmp, "logs")  # only the handlers write here (latencies go to tmp)
        os.mkdir(log_dir)
        path = os.path.join(log_dir, BASE_NAME)
        setup = functools.partial(_setup_handler, variant, path, args.backup_count, tmp)
        res = C.run_timed_pool(CTX, setup, args.workers, args.records, tmp, timeout=args.timeout)
        res.pop("finish_result")
        errors = []
        for w in range(args.workers):
            with open(os.path.join(tmp, f"errors-{w}.json")) as f:
                errors.append(json.load(f))
        res.update(_check_file_set(log_dir, args.workers, args.records))
    res["handler_errors"] = sum(e["count"] for e in errors)
    res["first_handler_error"] = next((e["first"] for e in errors if e["first"]), None)
    res["max_bytes"] = MAX_BYTES
    # a file may exceed maxBytes by at most one record (concurrent-log-handler rotates after the write)
    size_limit = MAX_BYTES + res["longest_line_bytes"]
    over = [[n, s] for n, s in res["file_sizes"] if s > size_limit]
    res["files_over_limit"] = over

    found = []
    if res["lost"]:
        found.append(f"{res['lost']:,} of {res['expected_lines']:,} records lost")
    if res["duplicates"]:
        found.append(f"{res['duplicates']:,} duplicated records")
    if res["torn"]:
        found.append(f"{res['torn']:,} torn/merged lines, e.g. {res['torn_examples']}")
    if res["wrong_message"] or res["out_of_range"]:
        found.append(
            f"{res['wrong_message']} wrong messages, {res['out_of_range']} record numbers out of range"
        )
    if res["pids"] != args.workers:
        found.append(f"{res['pids']} distinct pids, expected {args.workers}")
    if over:
        found.append(f"{len(over)} files over maxBytes + one record ({size_limit:,} B): {over[:3]}")
    if res["handler_errors"]:
        first = res["first_handler_error"] or ""
        found.append(f"{res['handler_errors']:,} handler errors, first: {first[:110]}")

    # the check results go on the run's progress line, before the house timing part
    head = (
        f"{res['files']} files, largest {res['largest_file_bytes']:,} B, "
        f"lost {res['lost']:,}, dup {res['duplicates']:,}, torn {res['torn']:,}"
    )
    if variant in STRICT:
        res["lines"] = res["lines_read"]  # lets run_interleaved print "lines OK" / warn
        res["problems"] = found
    else:
        res["problems"] = []
        res["notes"] = found  # expected for the naive handler: reported, not a failure
        if found:
            head = f"naive handler, NOT a harness failure: {'; '.join(found)} ({res['files']} files) ->"
    print(head + ";", end=" ", flush=True)
    return res


# ---- raw lock costs, once per invocation -----------------------------------------------------------


def _time_loop(fn, n):
    for _ in range(min(1000, n)):  # warm-up
        fn()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n / 1000.0


def measure_lock_costs(n=20_000) -> dict:
    """Microseconds per uncontended acquire + release, one process."""
    out = {
        "iterations": n,
        "filelock_version": getattr(filelock, "__version__", None),
        "us": {},
        "skipped": {},
    }
    us = out["us"]
    with tempfile.TemporaryDirectory(prefix="bench-locks-") as tmp:
        lock_path = os.path.join(tmp, "app.log.lock")
        if filelock is None:
            out["skipped"]["filelock"] = "filelock not installed"
        else:
            lock = filelock.FileLock(lock_path)

            def reused():
                lock.acquire()
                lock.release()

            def new_object():
                fresh = filelock.FileLock(lock_path)
                fresh.acquire()
                fresh.release()

            us["filelock.FileLock(path): acquire()+release(), object kept"] = _time_loop(reused, n)
            us["filelock.FileLock(path) new object: acquire()+release()"] = _time_loop(new_object, n)
        fd = os.open(os.path.join(tmp, "app.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            lock_fd = getattr(filelock, "lock_descriptor", None)
            unlock_fd = getattr(filelock, "unlock_descriptor", None)
            if lock_fd is not None and unlock_fd is not None:

                def descriptor():
                    lock_fd(fd)
                    unlock_fd(fd)

                us["filelock.lock_descriptor(fd)+unlock_descriptor(fd), fd kept open"] = _time_loop(
                    descriptor, n
                )
            else:
                out["skipped"]["filelock.lock_descriptor"] = (
                    f"filelock {out['filelock_version']} has no lock_descriptor/unlock_descriptor"
                )

            def raw_flock():
                fcntl.flock(fd, fcntl.LOCK_EX)
                fcntl.flock(fd, fcntl.LOCK_UN)

            us["fcntl.flock(fd, LOCK_EX)+flock(fd, LOCK_UN), fd kept open"] = _time_loop(raw_flock, n)
        finally:
            os.close(fd)
    return out


# ---- main ------------------------------------------------------------------------------------------


def _per_variant_checks(results) -> dict:
    checks = {}
    for name, runs in results.items():
        good = [r for r in runs if "error" not in r]
        checks[name] = {
            "lost_per_run": [r["lost"] for r in good],
            "runs_with_loss": sum(1 for r in good if r["lost"]),
            "duplicates_per_run": [r["duplicates"] for r in good],
            "torn_per_run": [r["torn"] for r in good],
            "handler_errors_per_run": [r["handler_errors"] for r in good],
            "files_per_run": [r["files"] for r in good],
            "largest_file_bytes": max((r["largest_file_bytes"] for r in good), default=None),
            "max_bytes": MAX_BYTES,
        }
    return checks


def _print_checks(checks) -> None:
    cols = [
        "variant",
        "lost (per run)",
        "runs w/ loss",
        "dup",
        "torn",
        "errors",
        "files",
        f"largest file B (vs {MAX_BYTES:,})",
    ]
    rows = []
    for name, c in checks.items():
        largest = c["largest_file_bytes"]
        rows.append([
            name,
            "/".join(f"{v:,}" for v in c["lost_per_run"]) or "-",
            f"{c['runs_with_loss']}/{len(c['lost_per_run'])}",
            str(sum(c["duplicates_per_run"])),
            str(sum(c["torn_per_run"])),
            str(sum(c["handler_errors_per_run"])),
            "/".join(str(v) for v in c["files_per_run"]) or "-",
            "-" if largest is None else f"{largest:,} ({largest - MAX_BYTES:+,})",
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=50_000, help="records per worker (default 50000)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backup-count", type=int, default=10_000, help="backupCount (default 10000: keep all)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 5000 records per worker, 1 repeat")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is declared hung")
    ap.add_argument("--only", default="", help="comma-separated subset of variants to run")
    ap.add_argument("--lock-iterations", type=int, default=20_000)
    ap.add_argument("--out", default=None, help="results file stem (default files, files-quick with --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.records, args.repeat = 5_000, 1
    if args.out is None:
        args.out = "files-quick" if args.quick else "files"
    return args


def main(argv=None):
    args = parse_args(argv)
    info = C.machine_info()
    info["loadavg_at_start"] = os.getloadavg()  # other load on the machine skews these runs a lot
    print(
        f"CPUs: {info['cpu_count']}  Python: {info['python']} ({info['implementation']})  {info['platform']}"
    )
    print(
        f"{args.workers} workers x {args.records:,} records, each its own handler on one path, "
        f"maxBytes {MAX_BYTES:,}, backupCount {args.backup_count:,}, {args.repeat} repeat(s), fork"
    )

    variants = {name: functools.partial(run_variant, name, args) for name in HANDLERS}
    if LOGFUNNEL_ERROR:
        print(f"logfunnel.handlers not importable ({LOGFUNNEL_ERROR}): skipping it")
        del variants["logfunnel"]
    if CLH_ERROR:
        print(f"concurrent_log_handler not importable ({CLH_ERROR}): skipping it")
        del variants["concurrent-log-handler"]
    if args.only:
        keep = {v.strip() for v in args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}

    results = C.run_interleaved(variants, args.repeat)
    summary = C.summarize(results)
    checks = _per_variant_checks(results)
    for name, c in checks.items():
        summary[name].update({k: c[k] for k in ("lost_per_run", "runs_with_loss", "largest_file_bytes")})

    print()
    C.print_table(summary, baselines=("concurrent-log-handler", "stdlib-rotating"))
    print()
    _print_checks(checks)
    ratios = {
        "logfunnel/concurrent-log-handler records_per_s": C.ratio(
            summary, "logfunnel", "concurrent-log-handler"
        ),
        "logfunnel/stdlib-rotating records_per_s": C.ratio(summary, "logfunnel", "stdlib-rotating"),
    }
    print()
    for k, v in ratios.items():
        print(f"{k:<48} {'-' if v is None else f'{v:.2f}x'}")

    locks = measure_lock_costs(args.lock_iterations)
    print(
        f"\nraw lock cost, uncontended, one process, {locks['iterations']:,} iterations "
        f"(filelock {locks['filelock_version']}):"
    )
    for k, v in locks["us"].items():
        print(f"  {k:<66} {v:8.2f} us")
    for k, why in locks["skipped"].items():
        print(f"  {k:<66} skipped: {why}")

    stdlib = checks.get("stdlib-rotating")
    if stdlib and stdlib["runs_with_loss"]:
        print(
            f"\nstdlib-rotating (no locking) lost records in {stdlib['runs_with_loss']} of "
            f"{len(stdlib['lost_per_run'])} runs: {stdlib['lost_per_run']} (expected for the naive setup)"
        )
    bad = [n for n, s in summary.items() if "error" in s or not s["checks_ok"]]
    if bad:
        print(f"\n!!!!! WARNING: problems in {', '.join(bad)} (see the run lines above) !!!!!")

    json_path = C.RESULTS_DIR / f"{args.out}.json"
    png_path = C.RESULTS_DIR / f"{args.out}.png"
    C.write_json(json_path, {
        "benchmark": "files",
        "machine": info,
        "params": {
            "workers": args.workers, "records_per_worker": args.records, "repeat": args.repeat,
            "max_bytes": MAX_BYTES, "backup_count": args.backup_count, "start_method": "fork",
            "format": C.LOG_FORMAT, "tmpdir": tempfile.gettempdir(),
        },
        "logfunnel_import_error": LOGFUNNEL_ERROR,
        "summary": summary, "checks": checks, "ratios": ratios, "lock_costs": locks, "runs": results,
    })  # fmt: skip
    # bar labels carry the loss, so the chart does not hide it
    labelled = {}
    for name, s in summary.items():
        c = checks.get(name, {})
        label = name
        if c.get("runs_with_loss"):
            label += f"\n(lost lines in {c['runs_with_loss']}/{len(c['lost_per_run'])} runs)"
        labelled[label] = s
    title = (
        f"{args.workers} processes x {args.records:,} records -> rotating files, 1 MiB "
        f"({info['cpu_count']} CPUs, Python {info['python']})"
    )
    plotted = C.plot_summary(png_path, labelled, title)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if plotted else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
