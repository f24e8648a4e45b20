"""A celery app whose worker and prefork children all log through one logfunnel manager.

No server is needed: kombu's ``filesystem://`` broker and a ``file://`` result backend keep
everything in ``./celery-data`` (or ``$CELERY_DATA``). Run the worker from this folder::

    python -m celery -A proj worker -P prefork -c 2 --max-tasks-per-child=2 -l INFO

and send it tasks from another shell in the same folder::

    python -c "import proj; print(proj.add.delay(2, 3).get(timeout=10))"

The worker's stderr then has celery's usual lines, written by the manager process: the main process's
with ``worker_log_format``, and the tasks' with ``worker_task_log_format`` (task name and id), every
child's records once, including those of children replaced after ``--max-tasks-per-child``.
``run.py`` beside this file does all of it in one go.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.utils.log import get_task_logger

from logfunnel.integrations.celery import install

DATA = os.path.abspath(os.environ.get("CELERY_DATA", "celery-data"))
for folder in ("broker", "processed", "results", "control"):
    os.makedirs(os.path.join(DATA, folder), exist_ok=True)

app = Celery("proj")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": os.path.join(DATA, "broker"),
        "data_folder_out": os.path.join(DATA, "broker"),
        "processed_folder": os.path.join(DATA, "processed"),
        "control_folder": os.path.join(DATA, "control"),  # else ./control, beside the app
        "store_processed": False,
        "polling_interval": 0.1,
    },
    result_backend=f"file://{os.path.join(DATA, 'results')}",
    broker_connection_retry_on_startup=True,
)
install(app)  # no handlers, no config: celery's own formats, to stderr (or to --logfile)

log = get_task_logger(__name__)


@app.task
def add(x: int, y: int) -> int:
    log.info("adding %d + %d", x, y)  # celery.task's format: proj.add[<task id>]: adding 2 + 3
    logging.getLogger("shop.db").info("stored %d", x + y)  # a plain logger: the worker's format
    return x + y
