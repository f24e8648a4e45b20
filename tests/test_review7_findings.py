"""Failures found by the seventh review (as a user and as an adversary), one test each, named after
the failure it prevents. Each is marked ``xfail(strict=True)`` until it is fixed: the fix turns it
into an XPASS, which fails the run, so the mark comes off with the fix.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import multiprocessing
import queue
import sys
import time

import pytest

import logfunnel
from _need import need_module
from _programs import run_program
from _tmpfs import tiny_tmpfs
from logfunnel import LogListener
from logfunnel.config import FunnelListener

_run = run_program


# -- config.FunnelListener as a stand-in for logging.handlers.QueueListener ---------------------------
# CPython's own QueueListenerTest (test_handle_called_with_queue_queue, ..._mp_queue,
# test_no_messages_in_queue_after_stop, test_calls_task_done_after_stop) and the 3.12+ ConfigDictTest
# queue tests (test_config_queue_handler, test_multiprocessing_queues, test_111615, ...) fail when
# QueueListener is FunnelListener, for the two reasons below.


def test_funnel_listener_without_handlers_takes_records_off_its_queue_as_queue_listener_does():
    """FunnelListener(q) with no handlers is accepted and empties q, as QueueListener(q) does."""
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    listener = FunnelListener(records)
    try:
        listener.start()
        logging.handlers.QueueHandler(records).handle(logging.makeLogRecord({"msg": "nobody handles it"}))
    finally:
        listener.stop()
    assert records.empty()


def test_funnel_listener_queue_is_the_queue_it_was_given():
    """FunnelListener(q, h).queue is q, as QueueListener's (3.12+ dictConfig checks listener.queue)."""
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    listener = FunnelListener(records, logging.NullHandler())
    try:
        assert listener.queue is records
    finally:
        listener.stop()


# -- an inline handler that raises SystemExit ---------------------------------------------------------


class _ExitsOnBoom(logging.Handler):
    """A handler that calls sys.exit() on the record saying 'boom' (a 'fatal' handler, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "boom" in record.getMessage():
            raise SystemExit(3)
        self.handled += 1


def _log_hundred(wave: int) -> None:
    """Log 100 records, the 51st of the first wave saying 'boom'; wait until they are sent."""
    log = logging.getLogger("review7.boom")
    for k in range(100):
        log.warning("wave %d record %d%s", wave, k, " boom" if (wave, k) == (0, 50) else "")
    logfunnel.flush_worker_logging(timeout=10)


def _two_waves(listener: logfunnel.LogListener) -> None:
    """One fork Pool worker logs the two waves of 100 records, one call each."""
    context = multiprocessing.get_context("fork")
    with context.Pool(1, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)) as pool:
        pool.map(_log_hundred, [0])
        pool.map(_log_hundred, [1])


@pytest.mark.timeout(60)
def test_inline_handler_raising_systemexit_loses_no_record_uncounted(tmp_path):
    """SystemExit from an inline handler costs at most that record; produced = received + dropped + lost."""
    path = tmp_path / "out.log"
    file = logging.FileHandler(path)
    try:
        with logfunnel.start_listener(handlers=[logfunnel.inline(_ExitsOnBoom()), file]) as listener:
            _two_waves(listener)
    finally:
        file.close()
    stats = listener.stats()
    assert stats["received"] + stats["dropped"] + stats["lost"] == 200, stats
    assert len(path.read_text().splitlines()) == stats["received"]


@pytest.mark.timeout(60)
def test_lane_handler_raising_systemexit_costs_that_record_only(tmp_path):
    """On a lane, a SystemExit costs that record (counted failed); the lane's thread goes on, and stop()
    does not wait for a thread that died."""
    path = tmp_path / "out.log"
    file = logging.FileHandler(path)
    lane = logfunnel.Lane(_ExitsOnBoom(), drain_timeout=30.0)
    try:
        with logfunnel.start_listener(handlers=[lane, file]) as listener:
            _two_waves(listener)
            started = time.monotonic()
        stopped_in = time.monotonic() - started
    finally:
        file.close()
    stats = listener.stats()
    assert stats["received"] == 200 and len(path.read_text().splitlines()) == 200, stats
    (figures,) = [entry for entry in stats["lanes"] if "_ExitsOnBoom" in entry["handler"]]
    assert (figures["handled"], figures["failed"], figures["undelivered"]) == (199, 1, 0), figures
    assert stopped_in < 25, f"stop() waited {stopped_in:.0f} s for the lane"


# -- the 3.12+ QueueHandler form and a fork Pool ------------------------------------------------------

FORK_POOL_UNDER_QUEUE_HANDLER_FORM = """
import logging, logging.config, multiprocessing, sys

def work(i):
    logging.getLogger("app").warning("from worker %d", i)

if __name__ == "__main__":
    logging.config.dictConfig({
        "version": 1,
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": sys.argv[1]},
            "queue": {"class": "logging.handlers.QueueHandler",
                      "listener": "logfunnel.config.FunnelListener", "handlers": ["file"]},
        },
        "root": {"level": "INFO", "handlers": ["queue"]},
    })
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(work, range(4))
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the QueueHandler 'listener' key is new in 3.12")
@pytest.mark.timeout(90)
def test_fork_pool_worker_under_the_queue_handler_form_loses_no_record_silently(tmp_path):
    """A fork Pool worker under the 3.12+ QueueHandler form: its records reach the file or are reported."""
    done = _run(tmp_path, FORK_POOL_UNDER_QUEUE_HANDLER_FORM, str(tmp_path / "app.log"))
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "app.log").read_text().splitlines()
    assert sorted(lines) == [f"from worker {i}" for i in range(4)], (lines, done.stderr[-2000:])


# -- a StreamHandler on a file, full disk -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stream_handler_on_a_full_disk_leaves_no_torn_line(tmp_path):
    """The listener's batched writer into StreamHandler(open(path, 'a')) on a full disk leaves whole lines."""
    with tiny_tmpfs(tmp_path, "64k") as disk:
        path = disk / "app.log"
        with open(path, "a") as stream:
            handler = logging.StreamHandler(stream)
            for base in range(0, 2000, 100):
                LogListener._write_lines(handler, [f"line {i} " + "x" * 80 for i in range(base, base + 100)])
        data = path.read_bytes()
    assert data.endswith(b"\n"), data[-100:]


# -- python-json-logger's JsonFormatter that lists every attribute ------------------------------------


def _log_an_exception(_: int) -> None:
    try:
        raise ValueError("inner")
    except ValueError:
        logging.getLogger("review7.json").exception("failed")


@pytest.mark.timeout(60)
@pytest.mark.xfail(strict=True, reason="the worker's prepare() fills exc_text, which one process leaves None")
def test_json_formatter_listing_every_attribute_writes_exc_text_as_one_process_would(tmp_path):
    """JsonFormatter(reserved_attrs=[]) behind the listener writes exc_text null, as in one process."""
    json_logger = need_module("pythonjsonlogger.json", "the test extra (pip install -e '.[test]')")
    path = tmp_path / "app.json"
    handler = logging.FileHandler(path)
    handler.setFormatter(json_logger.JsonFormatter("%(message)s", reserved_attrs=[]))
    try:
        with logfunnel.start_listener(handlers=[handler]) as listener:
            context = multiprocessing.get_context("fork")
            with context.Pool(
                1, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)
            ) as pool:
                pool.map(_log_an_exception, [0])
    finally:
        handler.close()
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["exc_text"] is None


# -- install_worker_logging's block_timeout ------------------------------------------------------------


@pytest.mark.parametrize("block_timeout", [float("nan"), -1.0])
def test_install_worker_logging_refuses_a_block_timeout_that_is_not_seconds(block_timeout):
    """block_timeout=nan (a worker then waits for ever on a stalled listener) or < 0 is a ValueError."""
    listener = logfunnel.start_listener(handlers=[logging.NullHandler()])
    try:
        with pytest.raises(ValueError, match="block_timeout"):
            logfunnel.install_worker_logging(listener.queue, block_timeout=block_timeout)
    finally:
        logfunnel.uninstall_worker_logging()
        listener.stop()
