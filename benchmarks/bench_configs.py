"""The configurations people run, side by side with the stdlib cookbook (issue 12).

W worker processes (fork) x N records each, per configuration:

  file         FileHandler, plain Formatter
  rotating     RotatingFileHandler, 4 MB files, 10 backups
  timed        TimedRotatingFileHandler, at midnight
  json         FileHandler + python-json-logger's JsonFormatter
  routed       handlers=None: the parent's dictConfig routes (a rotating root, and a propagate-False
               app.db with a FileHandler of its own); half the workers log to app.db.query
  locked       logfunnel's LockedRotatingFileHandler, 4 MB files
  watched      WatchedFileHandler

and per configuration these variants, each configured the same way:

  logfunnel    start_listener(handlers=[...]) (routed: start_listener() with the dictConfig)
  cookbook     multiprocessing.Queue(-1) + QueueHandler in the workers, QueueListener
               (respect_handler_level=True) with the same handler in the parent (routed: the
               cookbook's listener_process recipe, logging.getLogger(record.name).handle(record))
  mplog        multiprocessing-logging's install_mp_handler() (not routed), if installed
  loguru       loguru's logger.add(path, enqueue=True) with rotation/serialize where it can express
               the configuration (file, rotating, timed, json), if installed

Runs are interleaved (every variant of every configuration once, then again), and the median run
of each is reported, with the parent's CPU time per record (the listener thread and whatever else
the parent does) and the largest worker RSS. Every file of the set is counted: a run whose lines
do not add up is marked PROBLEM.

Usage: python benchmarks/bench_configs.py [--records N] [--workers W] [--repeat R] [--quick]
                                          [--only CONFIG,...] [--variants NAME,...]
"""

from __future__ import annotations

import argparse
import functools
import glob
import logging
import logging.config
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

try:
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # python-json-logger before 3.1
    try:
        from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef]
    except ImportError:
        JsonFormatter = None  # type: ignore[assignment, misc]
try:
    import multiprocessing_logging
except ImportError:
    multiprocessing_logging = None
try:
    import loguru
except ImportError:
    loguru = None

CTX = multiprocessing.get_context("fork")
LOGGER_NAME = "app.worker"
DB_LOGGER = "app.db.query"
MB4 = 4 * 1024 * 1024
CONFIGS = ("file", "rotating", "timed", "json", "routed", "locked", "watched")
LOGURU_FORMAT = "{time:YYYY-MM-DD HH:mm:ss,SSS} {level} {process} {name}:{function}:{line} - {message}"


# ---- the handlers of each configuration -------------------------------------------------------


def _formatter(config: str) -> logging.Formatter:
    if config == "json":
        return JsonFormatter("%(asctime)s %(levelname)s %(process)d %(name)s %(funcName)s %(message)s")
    return logging.Formatter(C.LOG_FORMAT)


def _handler(config: str, folder: str) -> logging.Handler:
    path = os.path.join(folder, "app.log")
    if config in ("file", "json"):
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    elif config == "rotating":
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=MB4, backupCount=10, encoding="utf-8")
    elif config == "timed":
        handler = logging.handlers.TimedRotatingFileHandler(path, when="midnight", encoding="utf-8")
    elif config == "locked":
        from logfunnel.handlers import LockedRotatingFileHandler

        handler = LockedRotatingFileHandler(path, maxBytes=MB4, backupCount=10, encoding="utf-8")
    elif config == "watched":
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    else:
        raise ValueError(config)
    handler.setFormatter(_formatter(config))
    return handler


def _routed_config(folder: str) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": C.LOG_FORMAT}},
        "handlers": {
            "rotating": {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": os.path.join(folder, "app.log"),
                "maxBytes": MB4,
                "backupCount": 10,
                "formatter": "line",
            },
            "db": {
                "class": "logging.FileHandler",
                "filename": os.path.join(folder, "db.log"),
                "formatter": "line",
            },
        },
        "root": {"level": "INFO", "handlers": ["rotating"]},
        "loggers": {"app.db": {"handlers": ["db"], "propagate": False}},
    }


def _count_lines(folder: str) -> int:
    return sum(C.count_lines(path) for path in glob.glob(os.path.join(folder, "*.log*")))


def _close_routed() -> None:
    for logger in (logging.getLogger(), logging.getLogger("app.db")):
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)


def _name(config: str, wid: int) -> str:
    return DB_LOGGER if config == "routed" and wid % 2 == 0 else LOGGER_NAME


# ---- worker-side setup: return (logger, finish) ------------------------------------------------


def _setup_logfunnel(config, handle, wid):
    C.reset_root_logger()
    logfunnel.install_worker_logging(handle)
    return logging.getLogger(_name(config, wid)), logfunnel.flush_worker_logging


def _setup_cookbook(config, queue, wid):
    db = logging.getLogger("app.db")  # inherited across fork: the routing is the parent's to do
    db.handlers[:] = []
    db.propagate = True
    C.reset_root_logger(logging.handlers.QueueHandler(queue), level=logging.INFO)
    return logging.getLogger(_name(config, wid)), None


def _setup_inherited(config, wid):
    return logging.getLogger(_name(config, wid)), None


class _Loguru:
    """``logger.info(msg, *args)`` with %-style arguments, for the shared record loop."""

    def __init__(self, logger) -> None:
        self._logger = logger.opt(depth=1)

    def info(self, msg, *args) -> None:
        self._logger.info(msg % args)


def _setup_loguru(wid):
    from loguru import logger

    return _Loguru(logger), logger.complete


# ---- one run of each variant --------------------------------------------------------------------


def _finish_run(res, folder, cpu0, stats=None):
    return C.finish_checks(res, _count_lines(folder), cpu0, stats)


def run_logfunnel(config, args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-configs-") as tmp:
        if config == "routed":
            logging.config.dictConfig(_routed_config(tmp))
            handlers = None
        else:
            handlers = [_handler(config, tmp)]
        cpu0 = C.parent_cpu_seconds()
        listener = logfunnel.start_listener(handlers=handlers)

        def finish():
            listener.stop()
            return listener.stats()

        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_logfunnel, config, listener.queue),
                args.workers,
                args.records,
                tmp,
                finish=finish,
                timeout=args.timeout,
            )
        except BaseException:
            C.call_with_timeout(listener.stop, 10)
            raise
        finally:
            for handler in handlers or ():
                handler.close()
            if config == "routed":
                _close_routed()
        return _finish_run(res, tmp, cpu0, res["finish_result"])


class _Route(logging.Handler):
    """The cookbook's listener_process: each record to the logger it was logged on, here."""

    def handle(self, record):
        logging.getLogger(record.name).handle(record)
        return True


def run_cookbook(config, args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-configs-") as tmp:
        if config == "routed":
            logging.config.dictConfig(_routed_config(tmp))
            handler: logging.Handler = _Route()
        else:
            handler = _handler(config, tmp)
        cpu0 = C.parent_cpu_seconds()
        queue = CTX.Queue(-1)
        listener = logging.handlers.QueueListener(queue, handler, respect_handler_level=True)
        listener.start()
        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_cookbook, config, queue),
                args.workers,
                args.records,
                tmp,
                finish=listener.stop,
                timeout=args.timeout,
            )
        finally:
            handler.close()
            queue.close()
            queue.join_thread()
            if config == "routed":
                _close_routed()
        return _finish_run(res, tmp, cpu0)


def run_mplog(config, args, _r):
    with tempfile.TemporaryDirectory(prefix="bench-configs-") as tmp:
        handler = _handler(config, tmp)
        C.reset_root_logger(handler, level=logging.INFO)
        cpu0 = C.parent_cpu_seconds()
        multiprocessing_logging.install_mp_handler()
        wrapper = logging.getLogger().handlers[0]
        try:
            res = C.run_timed_pool(
                CTX,
                functools.partial(_setup_inherited, config),
                args.workers,
                args.records,
                tmp,
                finish=wrapper.close,  # waits for its queue to empty
                timeout=args.timeout,
            )
        finally:
            wrapper.close()
            C.reset_root_logger()
        return _finish_run(res, tmp, cpu0)


def run_loguru(config, args, _r):
    from loguru import logger

    with tempfile.TemporaryDirectory(prefix="bench-configs-") as tmp:
        path = os.path.join(tmp, "app.log")
        options: dict = {"enqueue": True, "format": LOGURU_FORMAT, "level": "INFO"}
        if config == "rotating":
            options["rotation"] = MB4
            options["retention"] = 10
        elif config == "timed":
            options["rotation"] = "00:00"
        elif config == "json":
            options["serialize"] = True
        logger.remove()
        cpu0 = C.parent_cpu_seconds()
        sink = logger.add(path, **options)
        try:
            res = C.run_timed_pool(
                CTX,
                _setup_loguru,
                args.workers,
                args.records,
                tmp,
                finish=lambda: logger.remove(sink),  # drains its queue
                timeout=args.timeout,
            )
        except BaseException:
            logger.remove()
            raise
        return _finish_run(res, tmp, cpu0)


def variants_for(config: str, wanted: set[str]) -> dict:
    found = {"logfunnel": run_logfunnel, "cookbook": run_cookbook}
    if multiprocessing_logging is not None and config != "routed":
        found["mplog"] = run_mplog
    if loguru is not None and config in ("file", "rotating", "timed", "json"):
        found["loguru"] = run_loguru
    return {name: fn for name, fn in found.items() if not wanted or name in wanted}


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=25_000, help="records per worker (default 25000)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: 5000 records per worker, 1 repeat")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is declared hung")
    ap.add_argument("--only", default="", help="comma-separated configurations (default: all)")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--out", default=None, help="results file stem (default configs, or configs-quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.records, args.repeat = 5_000, 1
    if args.out is None:
        args.out = "configs-quick" if args.quick else "configs"
    return args


def main(argv=None):
    args = parse_args(argv)
    info = C.machine_info()
    configs = [c.strip() for c in args.only.split(",") if c.strip()] or list(CONFIGS)
    if JsonFormatter is None and "json" in configs:
        print("python-json-logger not installed: skipping json")
        configs.remove("json")
    wanted = {v.strip() for v in args.variants.split(",") if v.strip()}
    print(f"CPUs: {info['cpu_count']}  Python: {info['python']}  {info['platform']}")
    print(f"{args.workers} workers x {args.records:,} records, {args.repeat} repeat(s), fork")
    variants = {}
    for config in configs:
        for name, fn in variants_for(config, wanted).items():
            variants[f"{config}/{name}"] = functools.partial(fn, config, args)
    runs = C.run_interleaved(variants, args.repeat)
    results = C.add_medians(
        C.summarize(runs), runs, ("parent_cpu_us_per_record", "worker_cpu_us_per_record", "worker_rss_mb")
    )
    print()
    table = config_table(results, configs)
    print(table)
    bad = [n for n, s in results.items() if "error" in s or not s.get("checks_ok")]
    if bad:
        print(f"\n!!!!! WARNING: problems in {', '.join(bad)} (see the run lines above) !!!!!")
    C.write_json(
        C.RESULTS_DIR / f"{args.out}.json",
        {
            "benchmark": "configs",
            "machine": info,
            "params": {"workers": args.workers, "records_per_worker": args.records, "repeat": args.repeat},
            "summary": results,
            "table": table,
        },
    )
    if plot(C.RESULTS_DIR / f"{args.out}.png", results, configs, args):
        print(f"plot: {C.RESULTS_DIR / (args.out + '.png')}")
    print(f"results: {C.RESULTS_DIR / (args.out + '.json')}")
    return 1 if bad else 0


def config_table(results: dict, configs: list[str]) -> str:
    """One markdown row per configuration: each variant's records/s, logfunnel's ratios."""
    base = results.get("file/logfunnel", {}).get("records_per_s")
    rows = [
        "| configuration | logfunnel | cookbook | ratio | vs file | mplog | loguru "
        "| parent CPU us/rec (lf / cb) | workers' CPU us/rec (lf / cb) | worker RSS MB (lf / cb) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rate(key: str) -> str:
        value = results.get(key, {}).get("records_per_s")
        return "-" if value is None else f"{value:,.0f}/s"

    def num(key: str, field: str, fmt: str) -> str:
        value = results.get(key, {}).get(field)
        return "-" if value is None else format(value, fmt)

    for config in configs:
        lf = results.get(f"{config}/logfunnel", {}).get("records_per_s")
        cb = results.get(f"{config}/cookbook", {}).get("records_per_s")
        ratio = f"{lf / cb:.2f}x" if lf and cb else "-"
        versus = f"{lf / base:.0%}" if lf and base else "-"
        cpu = f"{num(f'{config}/logfunnel', 'parent_cpu_us_per_record', '.1f')} / "
        cpu += num(f"{config}/cookbook", "parent_cpu_us_per_record", ".1f")
        wcpu = f"{num(f'{config}/logfunnel', 'worker_cpu_us_per_record', '.1f')} / "
        wcpu += num(f"{config}/cookbook", "worker_cpu_us_per_record", ".1f")
        rss = f"{num(f'{config}/logfunnel', 'worker_rss_mb', '.0f')} / "
        rss += num(f"{config}/cookbook", "worker_rss_mb", ".0f")
        rows.append(
            f"| {config} | {rate(f'{config}/logfunnel')} | {rate(f'{config}/cookbook')} | {ratio} "
            f"| {versus} | {rate(f'{config}/mplog')} | {rate(f'{config}/loguru')} | {cpu} | {wcpu} | {rss} |"
        )
    return "\n".join(rows)


def plot(path, results: dict, configs: list[str], args) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping plot")
        return False
    # Only the variants this run measured: a bar of 0 would read as a peer that wrote nothing.
    names = [
        n for n in ("logfunnel", "cookbook", "mplog", "loguru") if any(f"{c}/{n}" in results for c in configs)
    ]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        values = [results.get(f"{c}/{name}", {}).get("records_per_s") or 0 for c in configs]
        offset = (k - (len(names) - 1) / 2) * width
        bars = ax.bar([i + offset for i in range(len(configs))], values, width, label=name)
        ax.bar_label(bars, labels=[f"{v / 1000:.0f}k" if v else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(configs)), configs)
    ax.set_ylabel("records / s (median run)")
    ax.set_title(f"{args.workers} workers x {args.records:,} records, {os.cpu_count()} CPUs")
    ax.legend()
    C.save_figure(fig, path)
    return True


if __name__ == "__main__":
    sys.exit(main())
