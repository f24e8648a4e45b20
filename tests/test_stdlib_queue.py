"""FunnelHandler and LogListener as drop-ins for QueueHandler and QueueListener on plain queues."""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

import logfunnel
from _stdlib_queue import PutNowaitQueue, log_exception_with_unpicklable_args, log_unpicklable_args
from _workers import Collect, wait_for
from logfunnel.worker import FunnelHandler

START_METHODS = ["fork", "spawn", "forkserver"]
HELPER = Path(__file__).with_name("_stdlib_queue.py")


def _record(msg: str = "hello %s", args: object = ("world",), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, msg, args, None)  # type: ignore[arg-type]
    record.__dict__.update(extra)
    return record


def _exc_record() -> logging.LogRecord:
    try:
        raise ValueError("inner")
    except ValueError:
        return logging.LogRecord(
            "app",
            logging.ERROR,
            __file__,
            1,
            "boom %s",
            ("x",),
            sys.exc_info(),
            sinfo="Stack (most recent call last):\n  here",
        )


def _run_in_child(method: str, target, q) -> None:
    process = multiprocessing.get_context(method).Process(target=target, args=(q,))
    process.start()
    process.join(60)
    assert process.exitcode == 0


# -- CPython's own tests -------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_cpython_queue_tests_pass_with_logfunnel_classes_swapped_in():
    """test_logging's QueueHandler/QueueListener/dictConfig queue tests pass on this interpreter."""
    env = dict(os.environ)
    src = str(Path(logfunnel.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, str(HELPER.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(HELPER)], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-4000:]
    summary = json.loads(lines[-1])
    assert summary["run"] >= 9, summary
    problems = summary["failures"] + summary["errors"]
    assert not problems, "\n".join(text for _, text in problems)
    assert not summary["unexpected_successes"]


# -- FunnelHandler.prepare is the stdlib's --------------------------------------------------------


def test_prepare_applies_handler_formatter():
    """prepare() sets msg and message to self.format(record), with the handler's formatter."""
    handler = FunnelHandler(queue.Queue())
    handler.setFormatter(logging.Formatter("%(name)s -> %(levelname)s: %(message)s"))
    prepared = handler.prepare(_record())
    assert (prepared.msg, prepared.message) == ("app -> WARNING: hello world",) * 2


def test_prepare_uses_the_default_formatter_without_one():
    """Without a formatter of its own, prepare() formats as logging's default formatter does."""
    prepared = FunnelHandler(queue.Queue()).prepare(_exc_record())
    assert prepared.msg.startswith("boom x\nTraceback (most recent call last):")
    assert prepared.msg.endswith("ValueError: inner\nStack (most recent call last):\n  here")


def test_prepare_returns_a_copy():
    """prepare() rewrites a copy: the record other handlers see keeps its msg, args, exc_info and stack."""
    record = _exc_record()
    fields = ("msg", "args", "exc_info", "stack_info")
    before = [getattr(record, name) for name in fields]
    prepared = FunnelHandler(queue.Queue()).prepare(record)
    assert prepared is not record
    assert [getattr(record, name) for name in fields] == before  # exc_text: the Formatter's own cache


def test_prepare_clears_args_exc_info_exc_text_and_stack_info():
    """The prepared copy has args, exc_info, exc_text and stack_info None, as QueueHandler's has."""
    prepared = FunnelHandler(queue.Queue()).prepare(_exc_record())
    assert (prepared.args, prepared.exc_info, prepared.exc_text, prepared.stack_info) == (None,) * 4


# -- through a multiprocessing queue, for every start method --------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_unpicklable_args_arrive_merged_through_mp_queue(method):
    """A message with unpicklable arguments arrives merged, not as a 'not enough arguments' error."""
    q = multiprocessing.get_context(method).Queue()
    collect = Collect()
    with logfunnel.LogListener(q, collect):
        _run_in_child(method, log_unpicklable_args, q)
        assert wait_for(lambda: collect.records, 30)
    (record,) = collect.records
    assert record.args is None
    assert record.getMessage().startswith("holding <unlocked _thread.lock object at ")
    assert record.getMessage().endswith("> and 3 items")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_exception_with_unpicklable_args_arrives_formatted_through_mp_queue(method):
    """logger.exception() with an unpicklable argument arrives formatted, not as the args tuple."""
    q = multiprocessing.get_context(method).Queue()
    collect = Collect()
    with logfunnel.LogListener(q, collect):
        _run_in_child(method, log_exception_with_unpicklable_args, q)
        assert wait_for(lambda: collect.records, 30)
    (record,) = collect.records
    text = logging.Formatter().format(record)
    assert text.startswith("boom <unlocked _thread.lock object at ")
    assert text.endswith("ValueError: inner")
    assert text.count("Traceback") == 1


# -- what counts as a queue ------------------------------------------------------------------------


def test_custom_queue_with_put_nowait_is_accepted():
    """Any object with put_nowait is a queue, as for QueueHandler; records go through put_nowait."""
    q = PutNowaitQueue()
    handler = FunnelHandler(q)
    handler.handle(_record())
    assert q.get(False).msg == "hello world"


def test_object_without_put_nowait_is_rejected():
    """Something that is not a queue at all is still a TypeError that says what is accepted."""
    with pytest.raises(
        TypeError, match=r"^install_worker_logging\(\) expected a logfunnel queue, .* got 'object'$"
    ):
        FunnelHandler(object())


def test_in_process_queue_keeps_extra_values_unchanged():
    """On a thread queue nothing is pickled, so an unpicklable extra stays the object it was."""
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    lock = threading.Lock()
    FunnelHandler(q).handle(_record(held=lock))
    assert q.get(False).held is lock


# -- the socket path: fast, unless a subclass overrides a seam -------------------------------------


class _Prefixing(FunnelHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared = super().prepare(record)
        prepared.stage = "prepared"
        return prepared


class _Capturing(FunnelHandler):
    seen: list[logging.LogRecord]

    def enqueue(self, record: logging.LogRecord) -> None:
        self.seen.append(record)
        super().enqueue(record)


class _Wrapping(FunnelHandler):
    def emit(self, record: logging.LogRecord) -> None:
        record.wrapped = True
        super().emit(record)


class _OnlyInit(FunnelHandler):
    def __init__(self, q: object) -> None:
        super().__init__(q, capacity=10)


def test_seam_overrides_are_detected_once_per_class():
    """A subclass overriding prepare, enqueue or emit (or inheriting one) goes through the seams."""
    assert FunnelHandler._own_seams and _OnlyInit._own_seams
    assert not any(kind._own_seams for kind in (_Prefixing, _Capturing, _Wrapping))
    assert not type("Sub", (_Prefixing,), {})._own_seams


@pytest.mark.timeout(30)
def test_prepare_override_is_used_on_the_socket_path():
    """A prepare() override on a listener's queue handle is called, and what it returns travels."""
    collect = Collect()
    with logfunnel.LogListener(None, collect) as listener:
        handler = _Prefixing(listener.queue)
        handler.setFormatter(logging.Formatter("%(levelname)s:%(message)s"))
        handler.handle(_record())
        handler.flush()
        assert wait_for(lambda: collect.records)
        handler.close()
    (record,) = collect.records
    assert (record.msg, record.stage) == ("WARNING:hello world", "prepared")


@pytest.mark.timeout(30)
def test_enqueue_override_sees_the_stdlib_record_on_the_socket_path():
    """An enqueue() override gets the stdlib's prepared copy: msg formatted, args and exc_info None."""
    collect = Collect()
    with logfunnel.LogListener(None, collect) as listener:
        handler = _Capturing(listener.queue)
        handler.seen = []
        original = _exc_record()
        handler.handle(original)
        handler.flush()
        assert wait_for(lambda: collect.records)
        handler.close()
    (seen,) = handler.seen
    assert seen is not original
    assert (seen.args, seen.exc_info, seen.exc_text, seen.stack_info) == (None,) * 4
    assert seen.msg.startswith("boom x\nTraceback")
    assert collect.records[0].getMessage() == seen.msg


@pytest.mark.timeout(30)
def test_emit_override_calling_super_goes_through_prepare():
    """An emit() override that calls super().emit() gets the stdlib's prepare() on the socket path."""
    collect = Collect()
    with logfunnel.LogListener(None, collect) as listener:
        handler = _Wrapping(listener.queue)
        handler.setFormatter(logging.Formatter("[%(message)s]"))
        handler.handle(_record())
        handler.flush()
        assert wait_for(lambda: collect.records)
        handler.close()
    assert (collect.records[0].msg, collect.records[0].wrapped) == ("[hello world]", True)


@pytest.mark.timeout(30)
def test_socket_path_keeps_the_exception_apart_from_the_message():
    """A plain FunnelHandler on a listener's handle still ships message and exc_text apart (rule 6)."""
    collect = Collect()
    with logfunnel.LogListener(None, collect) as listener:
        handler = FunnelHandler(listener.queue)
        handler.handle(_exc_record())
        handler.flush()
        assert wait_for(lambda: collect.records)
        handler.close()
    (record,) = collect.records
    assert record.getMessage() == "boom x"
    assert record.exc_text.endswith("ValueError: inner")


# -- LogListener reading a queue, as QueueListener ----------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_dequeue_timing_out_stops_the_queue_listener():
    """A dequeue() override that raises queue.Empty ends the listener thread, as in QueueListener."""

    class TimingOut(logfunnel.LogListener):
        def dequeue(self, block: bool) -> logging.LogRecord:
            return self.queue.get(block, timeout=0.05)  # type: ignore[no-any-return]

    listener = TimingOut(queue.Queue(), Collect())
    listener.start()
    assert wait_for(lambda: not listener._thread.is_alive())  # type: ignore[union-attr]
    listener.stop()


@pytest.mark.timeout(30)
def test_respect_handler_level_false_is_honoured_in_queue_mode():
    """respect_handler_level=False, given explicitly as stdlib code does, hands every record over."""
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    collect = Collect(level=logging.CRITICAL)
    with logfunnel.LogListener(q, collect, respect_handler_level=False):
        q.put_nowait(_record())
    assert [r.levelno for r in collect.records] == [logging.WARNING]


@pytest.mark.timeout(30)
def test_stop_returns_after_the_queue_is_drained():
    """stop() hands every record already on the queue to the handlers before it returns."""
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    collect = Collect()
    listener = logfunnel.LogListener(q, collect)
    for i in range(1000):
        q.put_nowait(_record("n=%d", (i,)))
    listener.start()
    listener.stop()
    assert [r.getMessage() for r in collect.records] == [f"n={i}" for i in range(1000)]
    assert q.empty()


def test_queue_mode_listener_opens_no_socket():
    """A LogListener built to read a queue opens no socket at all (the never-started socketpair leak)."""
    me = psutil.Process()
    before = me.num_fds()
    listener = logfunnel.LogListener(queue.Queue(), Collect())
    try:
        assert me.num_fds() == before
    finally:
        listener.stop()


@pytest.mark.timeout(30)
def test_queue_mode_leaves_handler_formatters_alone():
    """A queue-reading LogListener does not swap its handlers' formatters while it runs."""
    collect = Collect()
    formatter = logging.Formatter("%(message)s")
    collect.setFormatter(formatter)
    with logfunnel.LogListener(queue.Queue(), collect):
        assert collect.formatter is formatter


@pytest.mark.timeout(30)
def test_queue_mode_start_opens_no_socket():
    """Reading a queue needs no socket: the sentinel stops it, not a wake-up socketpair."""
    me = psutil.Process()
    listener = logfunnel.LogListener(queue.Queue(), Collect())
    before = me.num_fds()
    listener.start()
    assert me.num_fds() == before
    listener.stop()


@pytest.mark.timeout(30)
@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig's queue handler forms are 3.12+")
@pytest.mark.parametrize("queue_spec", [None, {"()": "_stdlib_queue.PutNowaitQueue"}])
def test_dictconfig_builds_funnel_handler_with_log_listener(tmp_path, queue_spec):
    """dictConfig with logfunnel's classes as QueueHandler and listener delivers to the listed handlers."""
    path = tmp_path / "out.log"
    queue_handler: dict[str, object] = {
        "class": "logfunnel.FunnelHandler",
        "listener": "logfunnel.LogListener",
        "handlers": ["file"],
    }
    if queue_spec is not None:
        queue_handler["queue"] = queue_spec
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "file": {"class": "logging.FileHandler", "filename": str(path), "level": "INFO"},
                "funnel": queue_handler,
            },
            "loggers": {"dc": {"handlers": ["funnel"], "level": "DEBUG", "propagate": False}},
        }
    )
    handler = logging.getHandlerByName("funnel")  # type: ignore[attr-defined]
    assert isinstance(handler, FunnelHandler) and isinstance(handler.listener, logfunnel.LogListener)
    handler.listener.start()
    try:
        for message in ("foo", "bar", "baz"):
            logging.getLogger("dc").info(message)
    finally:
        handler.listener.stop()
        logging.getLogger("dc").removeHandler(handler)
        handler.close()
        logging.getHandlerByName("file").close()  # type: ignore[attr-defined]
    assert path.read_text().splitlines() == ["foo", "bar", "baz"]
