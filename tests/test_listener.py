"""LogListener's life cycle, dispatch rules, stdlib seams and statistics."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os

import pytest

import logfunnel
from _workers import Collect, log_records, wait_for

FORK = multiprocessing.get_context("fork")


def _run_child(target, *args) -> None:
    process = FORK.Process(target=target, args=args)
    process.start()
    process.join(30)
    assert process.exitcode == 0


def _log_levels(handle) -> None:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("app.levels")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        log.log(level, "at %s", logging.getLevelName(level))


def test_start_twice_is_an_error():
    """A listener runs once; a second start() says so."""
    listener = logfunnel.start_listener(handlers=[logging.NullHandler()])
    try:
        with pytest.raises(RuntimeError, match=r"^this LogListener was already started \(it is running\)$"):
            listener.start()
    finally:
        listener.stop()


def test_stop_twice_and_stop_before_start_are_fine():
    """stop() is idempotent, and stopping a listener that never started releases its socket."""
    listener = logfunnel.start_listener(handlers=[logging.NullHandler()])
    listener.stop()
    listener.stop()
    unstarted = logfunnel.LogListener(None, logging.NullHandler())
    path = unstarted.address.removeprefix("unix:")
    assert os.path.exists(path)
    unstarted.stop()
    assert not os.path.exists(path)


def test_unix_socket_is_private():
    """The default Unix socket is mode 0600 inside a 0700 directory."""
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as listener:
        path = listener.address.removeprefix("unix:")
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700


def test_context_manager_publishes_and_withdraws_the_environment():
    """While running, LOGFUNNEL_ADDRESS names the listener for child processes; afterwards it is gone."""
    os.environ.pop("LOGFUNNEL_ADDRESS", None)
    with logfunnel.LogListener(None, logging.NullHandler()) as listener:
        assert os.environ["LOGFUNNEL_ADDRESS"] == listener.address
        assert bytes.fromhex(os.environ["LOGFUNNEL_AUTHKEY"]) == listener.queue.authkey
    assert "LOGFUNNEL_ADDRESS" not in os.environ


@pytest.mark.timeout(30)
def test_handler_levels_are_respected_by_default():
    """Each handler gets only records at or above its level; respect_handler_level=False gives all."""
    warn, everything = Collect(logging.WARNING), Collect()
    with logfunnel.start_listener(handlers=[warn, everything]) as listener:
        _run_child(_log_levels, listener.queue)
    assert [r.getMessage() for r in warn.records] == ["at WARNING", "at ERROR"]
    assert len(everything.records) == 4
    ignoring = Collect(logging.ERROR)
    with logfunnel.start_listener(handlers=[ignoring], respect_handler_level=False) as listener:
        _run_child(_log_levels, listener.queue)
    assert len(ignoring.records) == 4


@pytest.mark.timeout(30)
def test_listener_level_filters_before_handlers(tmp_path):
    """Records below the listener's level reach no handler, fast path or not."""
    path = tmp_path / "info.log"
    file_handler = logging.FileHandler(path)
    collect = Collect()
    with logfunnel.start_listener(handlers=[file_handler, collect], level="INFO") as listener:
        _run_child(_log_levels, listener.queue)
    file_handler.close()
    assert path.read_text().splitlines() == ["at INFO", "at WARNING", "at ERROR"]
    assert [r.levelname for r in collect.records] == ["INFO", "WARNING", "ERROR"]


@pytest.mark.timeout(30)
def test_without_handlers_records_follow_this_process_logging_configuration():
    """handlers=None routes each record through logging.getLogger(record.name), per-logger handlers too."""
    app, other = Collect(), Collect()
    logging.getLogger("app").addHandler(app)
    logging.getLogger("app").setLevel(logging.DEBUG)
    logging.getLogger("other").addHandler(other)
    try:
        with logfunnel.start_listener() as listener:
            _run_child(_log_levels, listener.queue)
    finally:
        logging.getLogger("app").removeHandler(app)
        logging.getLogger("app").setLevel(logging.NOTSET)
        logging.getLogger("other").removeHandler(other)
    assert [r.getMessage() for r in app.records] == ["at DEBUG", "at INFO", "at WARNING", "at ERROR"]
    assert other.records == []


@pytest.mark.timeout(30)
def test_listener_process_logging_through_its_own_handle_does_not_loop():
    """A parent that installs worker logging on itself and routes through its own config does not recurse."""
    with logfunnel.start_listener() as listener:
        logfunnel.install_worker_logging(listener.queue)
        logging.getLogger("loop").warning("once")
        logfunnel.flush_worker_logging(5)
        assert wait_for(lambda: listener.stats()["received"] == 1)
        logfunnel.uninstall_worker_logging()
    assert listener.stats()["received"] == 1


class _Tagging(logfunnel.LogListener):
    """A subclass that uses the QueueListener seam prepare()."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = "tagged: " + record.getMessage()
        record.args = None
        return record


@pytest.mark.timeout(30)
def test_overridden_prepare_seam_is_used_for_every_record(tmp_path):
    """Overriding prepare() works as with QueueListener, even for handlers on the fast path."""
    path = tmp_path / "tagged.log"
    handler = logging.FileHandler(path)
    with _Tagging(None, handler) as listener:
        _run_child(_log_levels, listener.queue)
    handler.close()
    assert path.read_text().splitlines()[0] == "tagged: at DEBUG"


@pytest.mark.timeout(30)
def test_plain_formatter_is_restored_after_stop():
    """While running, a non-fast handler's plain Formatter is stood in for; stop() puts it back."""
    formatter = logging.Formatter("%(levelname)s %(message)s")
    collect = Collect()
    collect.setFormatter(formatter)
    with logfunnel.start_listener(handlers=[collect]) as listener:
        assert collect.formatter is not formatter
        _run_child(_log_levels, listener.queue)
    assert collect.formatter is formatter
    assert [collect.format(r) for r in collect.records][-1] == "ERROR at ERROR"
    assert "rendered" not in vars(collect.records[0])


@pytest.mark.timeout(30)
def test_stats_name_each_process_and_its_figures(funnel):
    """stats() gives totals and, per process, pid, name, state and counts."""
    process = FORK.Process(target=log_records, args=("s", 250, funnel.queue), name="stats-child")
    process.start()
    process.join(30)
    funnel.flush()
    stats = funnel.stats()
    assert (stats["received"], stats["dropped"], stats["lost"], stats["rejected"]) == (250, 0, 0, 0)
    (entry,) = stats["processes"]
    assert entry["pid"] == process.pid and entry["name"] == "stats-child" and entry["state"] == "exited"
    assert entry["received"] == 250 and entry["first_seen"] <= entry["last_seen"]


def _log_error_and_die(handle) -> None:
    logfunnel.install_worker_logging(handle)
    logging.getLogger("crash").info("buffered")
    logging.getLogger("crash").critical("last words")
    os._exit(3)  # no exit hook runs: only what emit() already shipped can arrive


@pytest.mark.timeout(30)
def test_error_records_are_on_the_wire_before_emit_returns(funnel):
    """A process that dies right after logging CRITICAL still delivers it (and what came before)."""
    process = FORK.Process(target=_log_error_and_die, args=(funnel.queue,))
    process.start()
    process.join(30)
    assert process.exitcode == 3
    funnel.flush()
    assert funnel.messages == ["buffered", "last words"]
    (entry,) = funnel.stats()["processes"]
    assert (entry["state"], entry["received"], entry["lost"]) == ("vanished", 2, 0)


def test_queue_mode_reads_a_thread_queue_like_queuelistener():
    """Given a plain queue, LogListener behaves like QueueListener (and counts what it handled)."""
    import queue

    q: queue.Queue = queue.Queue()
    collect = Collect()
    with logfunnel.LogListener(q, collect) as listener:
        logging.getLogger().addHandler(logging.handlers.QueueHandler(q))
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("q").info("through a thread queue")
    assert [r.getMessage() for r in collect.records] == ["through a thread queue"]
    assert listener.stats()["received"] == 1
