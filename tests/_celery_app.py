"""The celery app that tests/test_celery.py runs as a real worker (``python -m celery -A _celery_app``).

Everything lives in the folder named by ``LOGFUNNEL_CELERY_DIR``: the ``filesystem://`` broker's
folders, the ``file://`` result backend, the log file the manager writes (``worker.log``), and what
the tasks and the shutdown hook leave for the test (``stuck.pid``, ``stats.json``). The test process
builds its own client with ``make_app(folder)`` and sends tasks by name.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.utils.log import get_task_logger

import logfunnel
from logfunnel.integrations.celery import CeleryLogging, install

FOLDER_ENV = "LOGFUNNEL_CELERY_DIR"
# Every field the test counts, with the task's id and name that the workers stamp on each record.
LINE_FORMAT = "%(process)d|%(task_name)s|%(task_id)s|%(name)s|%(levelname)s|%(message)s"
log = get_task_logger(__name__)
plain = logging.getLogger("app.plain")  # a logger that is not celery's task logger


def _put_whole_messages() -> None:
    """kombu's filesystem transport writes a message into its final name after creating the file,
    and a consumer can take the file in between: it reads nothing, fails on the empty JSON and stops
    consuming (seen under load, kombu 5.7). Here a message is written under another name and renamed
    into place, so a consumer only ever sees whole messages. The test is about logging, not kombu."""
    import uuid

    from kombu.transport import filesystem
    from kombu.utils.encoding import str_to_bytes
    from kombu.utils.json import dumps

    def _put(self: Any, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        with open(partial, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.rename(partial, final)

    filesystem.Channel._put = _put


_put_whole_messages()


def configure(app: Celery, folder: str) -> None:
    """Point *app* at the broker and result folders under *folder* (made here)."""
    broker = os.path.join(folder, "broker")
    processed = os.path.join(folder, "processed")
    results = os.path.join(folder, "results")
    control = os.path.join(folder, "control")
    for path in (broker, processed, results, control):
        os.makedirs(path, exist_ok=True)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": broker,
            "data_folder_out": broker,
            "processed_folder": processed,
            "control_folder": control,  # else ./control, in the worker's folder
            "store_processed": False,
            "polling_interval": 0.1,
        },
        result_backend=f"file://{results}",
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
        worker_pool_start_method=os.environ.get(
            "LOGFUNNEL_CELERY_START_METHOD", "fork"
        ),  # celery's default: with logfunnel's receiver it is never used
    )


def log_config(folder: str) -> dict[str, Any]:
    """A dictConfig with celery's TaskFormatter and the test's LINE_FORMAT into worker.log."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "task": {"()": "celery.app.log.TaskFormatter", "fmt": LINE_FORMAT, "use_color": False}
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": os.path.join(folder, "worker.log"),
                "formatter": "task",
                "encoding": "utf-8",
            }
        },
        "root": {"level": "INFO", "handlers": ["file"]},
    }


def make_app(folder: str) -> tuple[Celery, CeleryLogging]:
    """The app, its tasks, and logfunnel installed as a user would, in the app's module."""
    app = Celery("lftests", set_as_current=False)
    configure(app, folder)
    funnel = install(app, config=log_config(folder))

    @app.task(name="log_records")
    def log_records(tag: str, count: int) -> int:
        for i in range(count):
            (log if i % 2 else plain).info("record %d of %s", i, tag)
        return os.getpid()

    @app.task(name="stuck", time_limit=2)
    def stuck(count: int) -> None:
        """Log *count* records that cannot leave (the sender is kept from its buffer) until the
        hard time limit kills this child: exactly *count* records are lost.

        billiard enforces the limit with SIGTERM, then SIGKILL 0.1 s later. Its SIGTERM handler
        raises SystemExit in the task, which would unwind it into worker_process_shutdown (where the
        records are flushed) if that takes less than 0.1 s: a race. Blocking SIGTERM stands in for a
        task stuck in C code, so that the SIGKILL is what ends it, every time."""
        logfunnel.flush_worker_logging(10)  # what came before is delivered: only the doomed are lost
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, logfunnel.FunnelHandler)]
        with handler._sink._lock:
            for i in range(count):
                log.info("doomed %d", i)
            Path(folder, "stuck.pid").write_text(str(os.getpid()))
            time.sleep(60)

    return app, funnel


def _dump_stats(funnel: CeleryLogging, folder: str) -> None:
    """At the worker's exit, once every child has been settled, write the manager's stats().

    A child whose connection ended stays "vanished" until the listener has read its count file,
    which it does once the pid is gone (reaped): a child that flushed then turns "exited". So this
    runs at exit (after billiard joined every child) and waits for that."""
    deadline = time.monotonic() + 10
    while True:
        stats = funnel.stats()
        children = [p for p in stats["processes"] if p["ppid"] == os.getpid()]
        unsettled = [
            p for p in children if p["state"] == "connected" or (p["state"], p["lost"]) == ("vanished", 0)
        ]
        if not unsettled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    Path(folder, "stats.json").write_text(json.dumps(stats))


if FOLDER_ENV in os.environ:  # the worker: `python -m celery -A _celery_app worker`
    FOLDER = os.environ[FOLDER_ENV]
    app, funnel = make_app(FOLDER)
    # Registered at the worker's shutdown, so that it runs first at exit, while the manager still runs.
    signals.worker_shutdown.connect(lambda **_: atexit.register(_dump_stats, funnel, FOLDER), weak=False)
