"""The stdlib's SocketHandler, owned by a listener (on a lane), sending into logfunnel's own receiver:
every worker's records cross both hops once, with the fields the worker gave them."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os

import pytest

import logfunnel
from _workers import Collect, wait_for

WORKERS = 3
COUNT = 20


def _log(handle: object, worker: int) -> int:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("billing.worker")
    for i in range(COUNT):
        log.info("item %d of worker %d", i, worker, extra={"worker": worker, "item": i})
    try:
        raise ValueError("the last one fails")
    except ValueError:
        log.exception("worker %d failed", worker)
    logfunnel.flush_worker_logging(10)
    return os.getpid()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_socket_handler_behind_the_funnel_into_the_receiver(method: str) -> None:
    """Worker -> listener -> SocketHandler lane -> start_receiver: each record once, fields intact."""
    got = Collect()
    with logfunnel.start_receiver([got], tcp="127.0.0.1:0") as receiver:
        assert receiver.tcp_address is not None
        sender = logging.handlers.SocketHandler(*receiver.tcp_address)
        with logfunnel.start_listener(handlers=[sender]) as listener:
            ctx = multiprocessing.get_context(method)
            with ctx.Pool(WORKERS) as pool:
                pids = pool.starmap(_log, [(listener.queue, w) for w in range(WORKERS)])
            assert wait_for(lambda: listener.stats()["received"] == WORKERS * (COUNT + 1), 30)
        (lane,) = listener.stats()["lanes"]
        assert lane["handled"] == WORKERS * (COUNT + 1), lane
        assert wait_for(lambda: receiver.stats()["received"] == WORKERS * (COUNT + 1), 30)
        sender.close()
    assert receiver.stats()["rejected"] == 0
    seen = [(r.worker, r.item) for r in got.records if hasattr(r, "item")]
    assert sorted(seen) == [(w, i) for w in range(WORKERS) for i in range(COUNT)]
    by_worker = {r.worker: r.process for r in got.records if hasattr(r, "item")}
    assert sorted(by_worker.values()) == sorted(pids)  # the worker's pid, not the listener's
    failures = [r for r in got.records if r.levelno == logging.ERROR]
    assert len(failures) == WORKERS
    for record in failures:
        assert record.exc_text and "ValueError: the last one fails" in record.exc_text
        assert record.getMessage().startswith("worker ") and record.name == "billing.worker"
