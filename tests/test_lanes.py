"""Lanes: a network handler on a thread of its own behind the listener, with its figures in stats()."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import threading

import pytest

import logfunnel
from _blackholes import http_blackhole, refusing_port, socket_receiver
from _workers import assert_exactly_once, log_records, wait_for
from conftest import LINE_FORMAT
from logfunnel import Lane, LogListener, Retry

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
COUNT = 200


class Gate(logging.Handler):
    """Blocks every emit until ``.opened`` is set; keeps the messages it handled, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()
        self.messages: list[str] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.threads.add(threading.current_thread().name)
        self.opened.wait(30)
        self.messages.append(record.getMessage())


class Flaky(logging.Handler):
    """Fails (through handleError) its first *failures* emits, then keeps the messages."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.messages: list[str] = []
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.failures:
                self.failures -= 1
                raise ConnectionRefusedError("the sink is down")
            self.messages.append(record.getMessage())
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors += 1


def _file_handler(path):
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    return handler


def _run_workers(method, handle, count=COUNT, workers=2):
    ctx = multiprocessing.get_context(method)
    processes = [ctx.Process(target=log_records, args=(w, count, handle)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0, f"worker {p.pid} exited with {p.exitcode}"


def _lines(path):
    try:
        return path.read_text(encoding="utf-8").count("\n")
    except FileNotFoundError:
        return 0


def _lane(stats, kind):
    return next(lane for lane in stats["lanes"] if kind in lane["handler"])


def _own_logger(name, handler):
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def _accounted(figures):
    return figures["handled"] + figures["dropped"] + figures["failed"] + figures["undelivered"]


# -- behind a listener -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_black_holed_http_lane_does_not_delay_the_file_handler(tmp_path, method):
    """Every file line arrives while the HTTPHandler's lane is stuck in a server that never answers."""
    path = tmp_path / "app.log"
    with http_blackhole() as hole:
        http = logging.handlers.HTTPHandler(f"{hole.host}:{hole.port}", "/log", method="POST")
        listener = logfunnel.start_listener(handlers=[_file_handler(path), http])
        try:
            _run_workers(method, listener.queue, count=1, workers=1)  # its record gets the lane stuck
            assert wait_for(lambda: hole.accepted == 1 and _lines(path) == 1, 30)
            _run_workers(method, listener.queue)
            assert wait_for(lambda: _lines(path) == 1 + 2 * COUNT, 30), f"{_lines(path)} file lines"
            # The lane gets each batch just after the file does.
            assert wait_for(lambda: _lane(listener.stats(), "HTTPHandler")["backlog"] == 1 + 2 * COUNT, 30)
            assert (hole.accepted, _lane(listener.stats(), "HTTPHandler")["handled"]) == (1, 0)
        finally:
            listener.stop()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[1:]), encoding="utf-8")
    assert_exactly_once(path, {0: COUNT, 1: COUNT})
    figures = _lane(listener.stats(), "HTTPHandler")
    assert figures["state"] == "abandoned"
    assert _accounted(figures) == 1 + 2 * COUNT


@pytest.mark.timeout(90)
def test_full_lane_counts_every_record_behind_a_listener(tmp_path):
    """A small lane at a black hole: produced = handled + dropped + failed + undelivered, exactly."""
    with http_blackhole() as hole:
        http = logging.handlers.HTTPHandler(f"{hole.host}:{hole.port}", "/log")
        lane = Lane(http, capacity=20, drain_timeout=0.5, name="hole")
        listener = logfunnel.start_listener(handlers=[lane])
        try:
            _run_workers("fork", listener.queue)
        finally:
            listener.stop()
    figures = _lane(listener.stats(), "HTTPHandler")
    assert figures["name"] == "hole" and figures["dropped"] > 0
    assert _accounted(figures) == 2 * COUNT


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_retry_delivers_what_was_buffered_once_the_server_is_back(method):
    """Records logged while the HTTP server refuses arrive, in order, once it listens again."""
    with refusing_port() as port:
        http = logging.handlers.HTTPHandler(f"{port.host}:{port.port}", "/log", method="POST")
        retry = Retry(give_up_after=60, first_delay=0.05, max_delay=0.2)
        listener = logfunnel.start_listener(handlers=[Lane(http, retry=retry)])
        try:
            _run_workers(method, listener.queue, count=20, workers=1)
            assert wait_for(lambda: _lane(listener.stats(), "HTTP")["retried"] >= 2, 30)
            port.serve_http()
            assert wait_for(lambda: len(port.requests) == 20, 30), f"{len(port.requests)} requests"
        finally:
            listener.stop()
    bodies = [body.decode() for _, _, body in port.requests]
    assert [int(b.split("i%3D")[1].split("&")[0]) for b in bodies] == list(range(20))
    figures = _lane(listener.stats(), "HTTP")
    assert (figures["handled"], figures["failed"], figures["undelivered"]) == (20, 0, 0)


@pytest.mark.timeout(60)
def test_unknown_handler_runs_on_a_lane_by_default(tmp_path):
    """A handler that is not a local file or stream runs on a lane's thread, listed in stats()["lanes"]."""
    gate = Gate()
    gate.opened.set()
    with logfunnel.start_listener(handlers=[gate]) as listener:
        _run_workers("fork", listener.queue, count=10, workers=1)
    assert len(gate.messages) == 10
    assert gate.threads == {"logfunnel-lane-Gate"}
    assert [lane["handled"] for lane in listener.stats()["lanes"]] == [10]


@pytest.mark.timeout(60)
def test_inline_keeps_a_handler_on_the_listener_thread(tmp_path):
    """logfunnel.inline(handler) opts out: it runs on the listener's thread, with no lane."""
    gate = Gate()
    gate.opened.set()
    assert logfunnel.inline(gate) is gate
    with logfunnel.start_listener(handlers=[gate]) as listener:
        _run_workers("fork", listener.queue, count=10, workers=1)
    assert len(gate.messages) == 10
    assert gate.threads == {"logfunnel-listener"}
    assert listener.stats()["lanes"] == []


@pytest.mark.timeout(60)
def test_file_and_stream_handlers_stay_inline(tmp_path):
    """FileHandler, RotatingFileHandler, StreamHandler and NullHandler get no lane."""
    handlers = [
        _file_handler(tmp_path / "a.log"),
        logging.handlers.RotatingFileHandler(tmp_path / "b.log", maxBytes=10_000),
        logging.StreamHandler(open(tmp_path / "c.log", "w", encoding="utf-8")),  # noqa: SIM115
        logging.NullHandler(),
    ]
    with logfunnel.start_listener(handlers=handlers) as listener:
        _run_workers("fork", listener.queue, count=10, workers=1)
    assert listener.stats()["lanes"] == []
    for handler in handlers:
        handler.close()
    assert _lines(tmp_path / "b.log") == _lines(tmp_path / "c.log") == 10


@pytest.mark.timeout(60)
def test_listener_subclass_overriding_handle_is_still_called(tmp_path):
    """A LogListener subclass's handle() sees every record, and the lane behind it gets them too."""
    seen = []

    class Counting(LogListener):
        def handle(self, record):
            seen.append(record.getMessage())
            super().handle(record)

    gate = Gate()
    gate.opened.set()
    listener = Counting(None, gate).start()
    try:
        _run_workers("fork", listener.queue, count=10, workers=1)
    finally:
        listener.stop()
    assert len(seen) == 10 and gate.messages == seen
    assert gate.threads == {"logfunnel-lane-Gate"}


@pytest.mark.timeout(60)
def test_routed_mode_puts_a_socket_handler_on_a_lane_and_leaves_the_loggers_alone(tmp_path):
    """handlers=None: a SocketHandler on a propagate-False logger gets its records through a lane,
    the root's file handler none of them, and the logger and its handler are unchanged after stop()."""
    with socket_receiver() as receiver:
        sender = logging.handlers.SocketHandler(receiver.host, receiver.port)
        log = _own_logger("test.worker", sender)
        root_file = _file_handler(tmp_path / "root.log")
        logging.getLogger().handlers[:] = [root_file]
        try:
            with logfunnel.start_listener() as listener:
                _run_workers("fork", listener.queue, count=30, workers=1)
            assert wait_for(lambda: len(receiver.records) == 30, 30)
        finally:
            sender.close()
            root_file.close()
    assert [r["msg"] for r in receiver.records] == [f"w=0 i={i}" for i in range(30)]
    assert _lines(tmp_path / "root.log") == 0
    assert log.handlers == [sender] and not log.propagate
    assert "handleError" not in vars(sender)  # the lane's hook is gone
    assert [(lane["handled"], lane["state"]) for lane in listener.stats()["lanes"]] == [(30, "stopped")]


# -- a Lane on its own -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_drop_newest_keeps_the_first_records():
    """drop_newest: a full buffer refuses new records; handled + dropped = produced; the first ones win."""
    gate = Gate()
    lane = Lane(gate, capacity=5, when_full="drop_newest")
    log = _own_logger("lanes.newest", lane)
    log.info("r0")
    assert wait_for(lambda: gate.threads, 10)  # r0 is in the target: the buffer is empty
    for i in range(1, 100):
        log.info("r%d", i)
    gate.opened.set()
    assert lane.drain(10) == 0
    assert gate.messages == ["r0", "r1", "r2", "r3", "r4", "r5"]
    figures = lane.lane_stats()
    assert (figures["handled"], figures["dropped"]) == (6, 94)
    lane.close()


@pytest.mark.timeout(30)
def test_drop_oldest_keeps_the_last_records():
    """drop_oldest: a full buffer makes room by dropping the oldest; the last ones win."""
    gate = Gate()
    lane = Lane(gate, capacity=5, when_full="drop_oldest")
    log = _own_logger("lanes.oldest", lane)
    log.info("r0")
    assert wait_for(lambda: gate.threads, 10)
    for i in range(1, 100):
        log.info("r%d", i)
    gate.opened.set()
    assert lane.drain(10) == 0
    assert gate.messages == ["r0", "r95", "r96", "r97", "r98", "r99"]
    figures = lane.lane_stats()
    assert (figures["handled"], figures["dropped"]) == (6, 94)
    lane.close()


@pytest.mark.timeout(30)
def test_block_waits_for_room_and_drops_nothing():
    """block: the caller waits for room, so every record is delivered while the target is slow."""
    gate = Gate()
    lane = Lane(gate, capacity=2, when_full="block", block_timeout=30)
    log = _own_logger("lanes.block", lane)
    opener = threading.Timer(0.2, gate.opened.set)
    opener.start()
    for i in range(20):
        log.info("r%d", i)
    opener.join()
    assert lane.drain(10) == 0
    assert gate.messages == [f"r{i}" for i in range(20)]
    assert lane.lane_stats()["dropped"] == 0
    lane.close()


@pytest.mark.timeout(30)
def test_block_drops_after_its_timeout():
    """block with a short block_timeout: a record that found no room in time is dropped and counted."""
    gate = Gate()
    lane = Lane(gate, capacity=1, when_full="block", block_timeout=0.05)
    log = _own_logger("lanes.block_drop", lane)
    log.info("r0")
    assert wait_for(lambda: gate.threads, 10)
    for i in range(1, 4):
        log.info("r%d", i)
    gate.opened.set()
    assert lane.drain(10) == 0
    figures = lane.lane_stats()
    assert (figures["handled"], figures["dropped"]) == (2, 2)
    lane.close()


@pytest.mark.timeout(30)
def test_failed_emit_is_retried_at_the_head():
    """A record whose emit called handleError is retried before the next one; order holds."""
    flaky = Flaky(failures=3)
    lane = Lane(flaky, retry=Retry(give_up_after=30, first_delay=0.01, max_delay=0.02))
    log = _own_logger("lanes.retry", lane)
    for i in range(5):
        log.info("r%d", i)
    assert lane.drain(10) == 0
    assert flaky.messages == [f"r{i}" for i in range(5)]
    figures = lane.lane_stats()
    assert (figures["retried"], figures["failed"], flaky.errors) == (3, 0, 0)
    lane.close()


@pytest.mark.timeout(30)
def test_giving_up_calls_the_targets_handle_error():
    """retry=None: a failing emit is tried once, counted as failed, and the target's handleError runs."""
    flaky = Flaky(failures=2)
    lane = Lane(flaky, retry=None)
    log = _own_logger("lanes.give_up", lane)
    for i in range(4):
        log.info("r%d", i)
    assert lane.drain(10) == 0
    assert flaky.messages == ["r2", "r3"] and flaky.errors == 2
    figures = lane.lane_stats()
    assert (figures["handled"], figures["failed"], figures["retried"]) == (2, 2, 0)
    lane.close()


@pytest.mark.timeout(30)
def test_flush_waits_for_the_buffer():
    """flush() returns once what was buffered has reached the target."""
    gate = Gate()
    lane = Lane(gate)
    log = _own_logger("lanes.flush", lane)
    for i in range(10):
        log.info("r%d", i)
    threading.Timer(0.1, gate.opened.set).start()
    lane.flush()
    assert len(gate.messages) == 10
    lane.close()


@pytest.mark.timeout(30)
def test_close_closes_the_target_and_counts_what_comes_after():
    """close() drains, closes the target; a record logged after it is counted undelivered."""
    gate = Gate()
    gate.opened.set()
    lane = Lane(gate)
    log = _own_logger("lanes.close", lane)
    log.info("before")
    lane.close()
    log.info("after")
    assert gate.messages == ["before"]
    figures = lane.lane_stats()
    assert (figures["handled"], figures["undelivered"], figures["state"]) == (1, 1, "stopped")


def test_lane_refuses_bad_options_clearly():
    """Bad options say what was expected and what arrived."""
    with pytest.raises(TypeError, match=r"^Lane\(\) expected a logging.Handler to run, got 'str'$"):
        Lane("http")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^Lane\(\) got when_full='drop', expected one of drop_newest, "):
        Lane(logging.NullHandler(), when_full="drop")
    with pytest.raises(ValueError, match=r"^Lane\(\) expected capacity \(records\) as an int >= 1, got 0$"):
        Lane(logging.NullHandler(), capacity=0)
    with pytest.raises(TypeError, match=r"^Lane\(\) got a Lane: a handler needs one lane, not two$"):
        Lane(Lane(logging.NullHandler()))


# -- the manager -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_manager_reports_lanes_and_their_backlog(tmp_path, method):
    """In a LogManager, a black-holed HTTPHandler's lane shows its backlog in stats()["manager"]."""
    path = tmp_path / "app.log"
    with http_blackhole() as hole:
        http = logging.handlers.HTTPHandler(f"{hole.host}:{hole.port}", "/log")
        manager = logfunnel.LogManager([_file_handler(path), http], start_method=method).start()
        try:
            _run_workers(method, manager.queue, count=50, workers=1)
            assert wait_for(lambda: _lines(path) == 50, 30)
            assert wait_for(lambda: manager.stats()["manager"]["handlers"][1]["backlog"] >= 49, 30)
            health = manager.stats()["manager"]
            assert health["handlers"][0]["backlog"] == 0
            assert [lane["handler"] for lane in health["lanes"]] == [health["handlers"][1]["handler"]]
        finally:
            manager.stop(timeout=60)
    figures = manager.stats()["manager"]["lanes"][0]
    assert figures["state"] == "abandoned" and _accounted(figures) == 50


@pytest.mark.timeout(30)
def test_target_used_directly_elsewhere_keeps_its_own_handle_error():
    """While a lane runs a handler, a failure of the same handler called on another thread still
    goes to the handler's own handleError (only the lane's thread retries)."""
    flaky = Flaky(failures=1)
    lane = Lane(flaky, retry=Retry(give_up_after=30, first_delay=0.01))
    gate_log = _own_logger("lanes.shared", lane)
    gate_log.info("through the lane")
    assert lane.drain(10) == 0
    flaky.failures = 1
    flaky.handle(logging.makeLogRecord({"msg": "direct"}))
    assert flaky.errors == 1 and flaky.messages == ["through the lane"]
    lane.close()
    assert "handleError" not in vars(flaky)


def _log_through_a_lane(path):
    handler = logging.FileHandler(path, encoding="utf-8")
    log = _own_logger("lanes.child", Lane(handler, name="child"))
    for i in range(50):
        log.info("r%d", i)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_lane_in_a_child_process_delivers_before_it_exits(tmp_path, method):
    """A Lane used in a multiprocessing child (which leaves through os._exit) is drained at its exit."""
    path = tmp_path / "child.log"
    child = multiprocessing.get_context(method).Process(target=_log_through_a_lane, args=(path,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert path.read_text(encoding="utf-8").splitlines() == [f"r{i}" for i in range(50)]


@pytest.mark.timeout(120)
def test_explicit_lane_crosses_to_a_log_manager(tmp_path):
    """A Lane given to a LogManager is rebuilt there with its options and runs its handler."""
    with refusing_port() as port:
        port.serve_http()
        http = logging.handlers.HTTPHandler(f"{port.host}:{port.port}", "/log", method="POST")
        lane = Lane(http, capacity=123, name="to-http")
        with logfunnel.LogManager([lane]) as manager:
            _run_workers("fork", manager.queue, count=10, workers=1)
            assert wait_for(lambda: manager.stats()["manager"]["lanes"][0]["handled"] == 10, 30)
            (figures,) = manager.stats()["manager"]["lanes"]
    assert (figures["name"], figures["capacity"]) == ("to-http", 123)
    assert len(port.requests) == 10


# -- a saturated lane pauses whole records ----------------------------------------------------------


class _Gate(logging.Handler):
    """A sink that stalls until .open is set, then keeps every message."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.open.wait(60)
        self.messages.append(record.getMessage())


def _log_in_rounds(handle: object, worker: int, rounds: int, per_round: int) -> None:
    """Log *rounds* x *per_round* numbered records, flushing after each round (so that the listener's
    acknowledgement, and what it says about whole records, arrives between rounds)."""
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("worker")
    for n in range(rounds * per_round):
        log.info("worker %d record %d", worker, n)
        if n % per_round == per_round - 1:
            assert logfunnel.flush_worker_logging(10)


def _batches_with_records(listener: LogListener) -> list[bool]:
    """Record, for every batch the listener decodes from now on, whether it carried whole records."""
    seen: list[bool] = []
    dispatch = listener._dispatcher.dispatch

    def spy(levels, lines, records):
        seen.append(records is not None)
        dispatch(levels, lines, records)

    listener._dispatcher.dispatch = spy
    return seen


@pytest.mark.timeout(90)
def test_saturated_lane_stops_workers_sending_whole_records_and_counts_them_dropped(tmp_path):
    """While the only lane that needs records is full, workers send lines alone (cheaper for the file
    beside it); the lane counts every record it never got as dropped, exactly; nobody else loses any."""
    path = tmp_path / "app.log"
    gate = _Gate()
    lane = Lane(gate, capacity=20, drain_timeout=0.5, name="gate")
    listener = logfunnel.start_listener(handlers=[_file_handler(path), lane])
    seen = _batches_with_records(listener)
    try:
        ctx = multiprocessing.get_context("fork")
        workers = [ctx.Process(target=_log_in_rounds, args=(listener.queue, w, 30, 100)) for w in range(2)]
        for process in workers:
            process.start()
        for process in workers:
            process.join(60)
            assert process.exitcode == 0
        assert wait_for(lambda: _lines(path) == 6000, 30)
        stats = listener.stats()
    finally:
        gate.open.set()
        listener.stop()
    assert (stats["received"], stats["dropped"], stats["lost"]) == (6000, 0, 0)
    assert False in seen, "every batch carried whole records although the lane was full"
    figures = _lane(listener.stats(), "_Gate")
    assert figures["dropped"] > 0
    assert _accounted(figures) == 6000
    messages = [line.split(" ", 3)[3] for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(messages) == sorted(f"worker {w} record {n}" for w in range(2) for n in range(3000))


@pytest.mark.timeout(90)
def test_lane_with_room_again_gets_whole_records_again(tmp_path):
    """Once a saturated lane has drained to half its buffer, workers send whole records again and
    the lane handles what comes next."""
    path = tmp_path / "app.log"
    gate = _Gate()
    lane = Lane(gate, capacity=20, drain_timeout=5, name="gate")
    listener = logfunnel.start_listener(handlers=[_file_handler(path), lane])
    try:
        _run_workers("fork", listener.queue, count=2000)
        assert wait_for(lambda: _lines(path) == 4000, 30)
        gate.open.set()
        assert wait_for(lambda: _lane(listener.stats(), "_Gate")["backlog"] == 0, 30)
        before = len(gate.messages)
        # The first batch after the pause may still come without records (its worker learns from
        # the acknowledgement of the batch before); the ones after carry them again.
        for _ in range(3):
            _run_workers("fork", listener.queue, count=20, workers=1)
            assert wait_for(lambda: _lines(path) >= 4000, 30)
        assert wait_for(lambda: len(gate.messages) > before, 30)
    finally:
        listener.stop()
    figures = _lane(listener.stats(), "_Gate")
    assert figures["handled"] == len(gate.messages)
    assert _accounted(figures) == 4000 + 3 * 20
