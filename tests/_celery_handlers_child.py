"""Run by test_celery.py in a fresh interpreter: celery's own signals, as a worker sends them, with
``install(app, handlers=[...])``, and children made by a raw ``os.fork`` (no multiprocessing hooks).

Prints one JSON line: the manager's stats() after the children are gone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from celery import Celery, signals
from celery.utils.log import get_task_logger

from logfunnel.integrations.celery import install

path, children, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
handler = logging.FileHandler(path, encoding="utf-8")
handler.setFormatter(logging.Formatter("%(process)d %(name)s %(levelname)s %(message)s"))
app = Celery("handlers", set_as_current=False)
funnel = install(app, handlers=[handler])
signals.celeryd_init.send(sender="celery@test", instance=None, conf=app.conf, options={})
app.log.setup_logging_subsystem(loglevel=logging.INFO)  # what `celery worker` calls: sends setup_logging
logging.getLogger("celery.main").info("main ready")
logging.getLogger("celery.main").debug("never made: celery's -l is INFO")
pids = []
for n in range(children):
    pid = os.fork()  # as billiard does: no multiprocessing at-fork hooks run
    if pid == 0:
        signals.worker_process_init.send(sender="celery@test")
        for i in range(count):
            get_task_logger("proj.tasks").info("child %d record %d", n, i)
        signals.worker_process_shutdown.send(sender="celery@test", pid=os.getpid(), exitcode=0)
        os._exit(0)  # billiard's way out: no atexit, no finalizers
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    stats = funnel.stats()
    ours = [p for p in stats["processes"] if p["pid"] in pids]
    if len(ours) == children and all(p["state"] == "exited" for p in ours):
        break
    time.sleep(0.05)
print(json.dumps({"pids": pids, "main": os.getpid(), "stats": stats}))
