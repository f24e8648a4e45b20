"""The application that ``logfunnel demo`` runs in its workers: a small simulated web shop.

``serve(task)`` is the pool task. The shop's randomness is drawn before the clock starts
(``traffic.py``), so the loop spends its time on what a real service spends it on when it logs:
building records in ``logging`` and handing them to the funnel. The figures it returns are what
the demo's summary calls the generator's side.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

from . import service
from .traffic import draw_traffic

__all__ = ["LOGGERS", "serve"]

LOGGERS = ("shop.http", "shop.db", "shop.cache", "shop.payments", "shop.jobs")
_TRAFFIC = 4096  # requests drawn per worker; the loop reshuffles them each round
_JOB_EVERY = 250  # requests between two steps of the background job


class _Counter:
    """A logging filter that counts, per level, the records its loggers produce; it drops none."""

    def __init__(self) -> None:
        self.levels: dict[int, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        levels = self.levels
        levels[record.levelno] = levels.get(record.levelno, 0) + 1
        return True


def serve(task: tuple[int, float]) -> dict[str, Any]:
    """Serve simulated requests for *seconds*, logging as the shop does; return what was produced.

    *task* is ``(worker_index, seconds)``. The result has ``produced`` (records), ``levels`` (per
    level name), ``requests``, ``seconds`` (the time spent serving), ``cpu`` (the CPU time this
    process used meanwhile, its sender thread included), and ``started`` and
    ``finished`` (wall-clock times, ``time.time()``).
    """
    index, seconds = task
    rng = random.Random(index)
    traffic = draw_traffic(rng, _TRAFFIC)
    counter = _Counter()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addFilter(counter)
    job = service.ReindexJob()
    prefix = f"{os.getpid():x}{index:02x}-"  # unique even if one process serves two tasks
    requests = 0
    cpu = time.process_time()
    started_at = time.time()
    started = time.monotonic()
    deadline = started + seconds
    try:
        while time.monotonic() < deadline:
            rng.shuffle(traffic)
            for position in range(0, _TRAFFIC, 64):
                for request in traffic[position : position + 64]:
                    service.handle_request(request, {"request_id": f"{prefix}{requests:06x}"})
                    requests += 1
                    if requests % _JOB_EVERY == 0:
                        job.step()
                if time.monotonic() >= deadline:
                    break
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu
    finally:
        for logger in loggers:
            logger.removeFilter(counter)
    levels = {logging.getLevelName(level): count for level, count in sorted(counter.levels.items())}
    return {
        "worker": index,
        "pid": os.getpid(),
        "produced": sum(counter.levels.values()),
        "levels": levels,
        "requests": requests,
        "seconds": elapsed,
        "cpu": cpu,
        "started": started_at,
        "finished": started_at + elapsed,
    }
