"""Send 6 tasks to the worker of ``proj.py``, start it, stop it (warm shutdown) and show its log.

Run it from any folder: ``python examples/celery_app/run.py``. The broker's and results' folders go
to ``./celery-data``; the worker's stderr (what the logfunnel manager wrote) to ``./celery-data/worker.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    data = Path(os.environ.setdefault("CELERY_DATA", os.path.abspath("celery-data")))
    data.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "2",
               "--max-tasks-per-child=2", "-l", "INFO", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]  # fmt: skip
    sys.path.insert(0, str(HERE))
    import proj

    # Queued before the worker starts: kombu's filesystem transport creates a message's file before
    # it writes it, and a worker polling at that moment can take the empty file and lose the task
    # (kombu issue 1551); a real broker has no such window.
    results = [proj.add.delay(i, i) for i in range(6)]
    with open(data / "worker.log", "wb") as stderr:
        worker = subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                  start_new_session=True)  # fmt: skip
    try:
        print("results:", [result.get(timeout=60, interval=0.05) for result in results])
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: the children finish, flush and exit
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    lines = (data / "worker.log").read_text().splitlines()
    tasks = [line for line in lines if "proj.add[" in line and ": adding " in line]
    print(*tasks, sep="\n")
    print(f"{len(tasks)} task records in {data / 'worker.log'}")


if __name__ == "__main__":
    main()
