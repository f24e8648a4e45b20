"""LogManager: the listener in its own process, through the failures of the field."""

from __future__ import annotations

import concurrent.futures
import logging
import logging.handlers
import multiprocessing
import multiprocessing.util
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter

import psutil
import pytest

import logfunnel
from _workers import assert_exactly_once, log_records, wait_for

METHODS = ["fork", "spawn", "forkserver"]
STANDARD_LEVELS = {"CRITICAL": 50, "ERROR": 40, "WARNING": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}
LINE_FORMAT = "%(process)d %(processName)s %(levelname)s %(message)s"


def _file_handler(path, mode="a"):
    handler = logging.FileHandler(path, mode=mode, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    return handler


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_pool_through_a_manager_delivers_every_record_once(method, tmp_path):
    """multiprocessing.Pool under each start method, the manager started the same way: exactly once."""
    path = tmp_path / "pool.log"
    with logfunnel.LogManager([_file_handler(path)], start_method=method) as manager:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(4, initializer=logfunnel.install_worker_logging, initargs=(manager.queue,)) as pool:
            pool.starmap(log_records, [(w, 10_000) for w in range(4)])
            pool.close()
            pool.join()
    assert_exactly_once(path, {str(w): 10_000 for w in range(4)})
    stats = manager.stats()
    assert (stats["received"], stats["dropped"], stats["lost"]) == (40_000, 0, 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_executor_through_a_manager_delivers_every_record_once(method, tmp_path):
    """ProcessPoolExecutor with the manager's handle passed through submit(): exactly once."""
    path = tmp_path / "executor.log"
    with logfunnel.LogManager([_file_handler(path)], start_method=method) as manager:
        ctx = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as executor:
            futures = [executor.submit(log_records, w, 10_000, manager.queue) for w in range(4)]
            for future in futures:
                future.result(timeout=90)
    assert_exactly_once(path, {str(w): 10_000 for w in range(4)})


@pytest.mark.timeout(60)
def test_rotating_handler_with_a_lambda_namer_crosses_to_a_spawned_manager(tmp_path):
    """A RotatingFileHandler's lambda namer reaches a spawned manager, and rotation uses it."""
    handler = logging.handlers.RotatingFileHandler(tmp_path / "app.log", maxBytes=4_000, backupCount=100)
    handler.namer = lambda name: name.replace("app.log.", "app-") + ".log"
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    with logfunnel.LogManager([handler], start_method="spawn") as manager:
        process = multiprocessing.get_context("spawn").Process(
            target=log_records, args=("n", 1_000, manager.queue)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    handler.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "app-1.log" in names and "app.log" in names
    assert not [n for n in names if re.fullmatch(r"app\.log\.\d+", n)], names
    lines = [line for p in tmp_path.iterdir() for line in p.read_text(encoding="utf-8").splitlines()]
    assert sorted(int(line.rsplit("i=", 1)[1]) for line in lines) == list(range(1_000))


@pytest.mark.timeout(60)
def test_config_dict_is_built_inside_the_manager(tmp_path):
    """A dictConfig-style config is applied in the manager process, with per-logger routing."""
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(tmp_path / "cfg.log"),
                "formatter": "plain",
            }
        },
        "loggers": {"test": {"handlers": ["file"], "level": "INFO"}},
    }
    with logfunnel.LogManager(config=config) as manager:
        process = multiprocessing.get_context("fork").Process(
            target=log_records, args=("c", 10, manager.queue)
        )
        process.start()
        process.join(30)
    assert (tmp_path / "cfg.log").read_text().splitlines()[0] == "test.worker w=c i=0"
    assert manager.stats()["received"] == 10


@pytest.mark.timeout(60)
def test_stats_show_processes_and_the_managers_health(tmp_path):
    """stats() from the parent: per-process figures, and the manager's pid, RSS, CPU, rate, backlog."""
    with logfunnel.LogManager([_file_handler(tmp_path / "s.log")]) as manager:
        process = multiprocessing.get_context("fork").Process(
            target=log_records, args=("s", 500, manager.queue)
        )
        process.start()
        process.join(30)
        assert wait_for(lambda: manager.stats()["received"] == 500)
        stats = manager.stats()
        (entry,) = stats["processes"]
        assert entry["pid"] == process.pid and entry["received"] == 500 and entry["state"] == "exited"
        health = stats["manager"]
        assert health["pid"] == manager.pid != os.getpid()
        assert health["rss"] > 1_000_000 and health["cpu_percent"] >= 0 and health["records_per_second"] >= 0
        assert health["backlog"] == 0 and "backlog_bytes" not in health
        assert [h["backlog"] for h in health["handlers"]] == [0]


@pytest.mark.timeout(60)
def test_set_level_skips_later_records_in_the_manager(tmp_path):
    """set_level() reaches the manager's listener: records below it are skipped there, not written."""
    path = tmp_path / "levels.log"
    with logfunnel.LogManager([_file_handler(path)]) as manager:
        with pytest.raises(ValueError, match=r"LogManager.set_level\(\)"):
            manager.set_level("LOUD")
        manager.set_level("WARNING")
        manager.stats()  # answered after the level request: the manager has applied it
        process = multiprocessing.get_context("spawn").Process(
            target=_log_info_and_warning, args=(manager.queue,)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
        # The worker asked for DEBUG itself, so its INFO record travels; the manager skips it.
        assert wait_for(lambda: manager.stats()["received"] == 2)
    assert [line.split()[2:] for line in path.read_text(encoding="utf-8").splitlines()] == [
        ["WARNING", "warning"]
    ]
    with pytest.raises(RuntimeError, match="not running"):
        manager.set_level("INFO")


def _log_info_and_warning(handle) -> None:
    logfunnel.install_worker_logging(handle, level=logging.DEBUG)
    logging.getLogger("app").info("info")
    logging.getLogger("app").warning("warning")


def test_handlers_and_config_together_are_refused():
    """It is one or the other, and the message says so."""
    with pytest.raises(TypeError, match=r"^LogManager\(\) takes handlers or a config, not both$"):
        logfunnel.LogManager([logging.NullHandler()], config={"version": 1})


def test_queue_before_start_says_what_to_do():
    """The handle exists only once the manager listens."""
    with pytest.raises(RuntimeError, match=r"^start the LogManager before asking for its queue$"):
        _ = logfunnel.LogManager().queue


@pytest.mark.timeout(60)
def test_a_second_manager_on_a_live_address_is_refused(tmp_path):
    """Taking over a socket that still answers is an error, not a silent theft of the address."""
    address = f"unix:{tmp_path}/m.sock"
    with logfunnel.LogManager([logging.NullHandler()], address=address):
        with pytest.raises(RuntimeError, match=r"a listener is already running at unix:"):
            logfunnel.LogManager([logging.NullHandler()], address=address).start()


@pytest.mark.timeout(60)
def test_forked_child_exiting_does_not_stop_the_parents_manager(tmp_path):
    """A fork child that exits normally runs atexit hooks; the parent's manager keeps running."""
    with logfunnel.LogManager([_file_handler(tmp_path / "f.log")]) as manager:
        pid = os.fork()
        if pid == 0:
            try:
                from logfunnel import manager as manager_module

                manager_module._stop_all()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert psutil.pid_exists(manager.pid)
        assert manager.stats()["received"] == 0


PARENT = textwrap.dedent(
    """
    import logging, multiprocessing, os, sys, time
    sys.path.insert(0, {tests!r})
    import logfunnel
    from _workers import log_forever

    if __name__ == "__main__":
        handler = logging.FileHandler({path!r}, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(process)d %(processName)s %(levelname)s %(message)s"))
        manager = logfunnel.LogManager([handler]).start()
        ctx = multiprocessing.get_context("fork")
        started = [ctx.Event() for _ in range(4)]
        workers = [ctx.Process(target=log_forever, args=(w, manager.queue, started[w])) for w in range(4)]
        for w in workers:
            w.start()
        for event in started:
            event.wait(30)
        print(manager.pid, *[w.pid for w in workers], flush=True)
        time.sleep(600)
    """
)


@pytest.mark.timeout(90)
def test_manager_drains_and_exits_when_its_parent_is_sigkilled(tmp_path):
    """Parent SIGKILLed while 4 workers log: the manager flushes, closes, exits within 2 s; no torn line."""
    path = tmp_path / "orphan.log"
    script = PARENT.format(tests=os.path.dirname(__file__), path=str(path))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        manager_pid, *worker_pids = map(int, parent.stdout.readline().split())
        assert wait_for(lambda: path.exists() and path.stat().st_size > 100_000, timeout=30)
        manager = psutil.Process(manager_pid)
        parent.kill()
        killed_at = time.monotonic()
        # An orphan is reaped by init whenever init gets to it; a zombie has exited already.
        assert wait_for(lambda: not _running(manager), timeout=10)
        assert time.monotonic() - killed_at < 2.0, "the manager outlived its parent by 2 s or more"
    finally:
        parent.kill()
        parent.wait(10)
        for pid in worker_pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    data = path.read_bytes()
    assert data.endswith(b"\n"), "torn last line"
    for line in data.decode("utf-8").splitlines():
        assert re.fullmatch(r"\d+ \S+ INFO w=\d i=\d+", line), line


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _two_phase_worker(worker_id, handle, phase_one, first_done, go_on, finish, results) -> None:
    logfunnel.install_worker_logging(handle, on_full="block", block_timeout=1.0, capacity=2_000)
    log = logging.getLogger("test.worker")
    for i in range(phase_one):
        log.info("w=%s i=%d", worker_id, i)
    logfunnel.flush_worker_logging(10)
    first_done.set()
    go_on.wait(60)
    i, slowest, slow_calls = phase_one, 0.0, 0
    while not finish.is_set():
        start = time.monotonic()
        log.info("w=%s i=%d", worker_id, i)
        took = time.monotonic() - start
        slowest, slow_calls = max(slowest, took), slow_calls + (took > 0.5)
        i += 1
        if i % 64 == 0:
            time.sleep(0.001)
    handler = logging.getLogger().handlers[0]
    logfunnel.uninstall_worker_logging()  # flushes, and says goodbye with the totals
    results.put((str(worker_id), os.getpid(), i, handler.dropped, slowest, slow_calls))


@pytest.mark.timeout(120)
def test_sigkilled_manager_never_hangs_workers_and_a_restart_gets_the_rest(tmp_path):
    """Manager SIGKILLed while workers log (block, 1 s): none blocks more than once per stall, all
    finish, a manager restarted on the address receives the rest, and per worker
    produced = delivered + reported dropped + reported lost, exactly."""
    path = tmp_path / "restart.log"
    address = f"unix:{tmp_path}/m.sock"
    ctx = multiprocessing.get_context("fork")
    first = logfunnel.LogManager([_file_handler(path)], address=address).start()
    events = [ctx.Event() for _ in range(4)]
    go_on, finish, results = ctx.Event(), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_two_phase_worker, args=(w, first.queue, 1_000, events[w], go_on, finish, results))
        for w in range(4)
    ]
    second = None
    try:
        for p in workers:
            p.start()
        for event in events:
            assert event.wait(30)
        assert wait_for(lambda: first.stats()["received"] == 4_000, timeout=30)
        time.sleep(0.2)  # let the last acknowledgements go out
        os.kill(first.pid, signal.SIGSTOP)  # idle, everything so far handled and acknowledged
        go_on.set()
        time.sleep(1.5)  # workers fill their sockets and buffers, block once, then drop
        os.kill(first.pid, signal.SIGKILL)
        time.sleep(1.0)  # workers find the listener gone, and keep dropping while they retry
        second = logfunnel.LogManager([_file_handler(path)], address=address, authkey=first.authkey).start()
        assert wait_for(lambda: len(second.stats()["processes"]) == 4, timeout=30)
        assert wait_for(lambda: second.stats()["received"] > 4 * 2_000, timeout=30)
        finish.set()
        reports = [results.get(timeout=60) for _ in workers]
        for p in workers:
            p.join(30)
            assert p.exitcode == 0
    finally:
        finish.set()
        go_on.set()
        first.stop(timeout=5)
        if second is not None:
            second.stop(timeout=30)
    stats = {p["pid"]: p for p in second.stats()["processes"]}
    delivered = Counter()
    seen: dict[str, set[int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if " WARNING process " in line:
            continue  # the manager's own report of drops and losses
        match = re.fullmatch(r"\d+ \S+ INFO w=(\d) i=(\d+)", line)
        assert match, f"torn or foreign line {line!r}"
        worker_id, number = match.group(1), int(match.group(2))
        assert number not in seen.setdefault(worker_id, set()), f"duplicate {line!r}"
        seen[worker_id].add(number)
        delivered[worker_id] += 1
    total_dropped = total_lost = 0
    for worker_id, pid, produced, dropped, slowest, slow_calls in reports:
        entry = stats[pid]
        assert entry["state"] == "exited"
        assert entry["dropped"] == dropped
        assert produced == delivered[worker_id] + entry["dropped"] + entry["lost"], (worker_id, entry)
        assert slow_calls <= 3, f"worker {worker_id} blocked {slow_calls} times"
        assert slowest < 5.0, f"worker {worker_id} blocked {slowest:.1f} s in one call"
        total_dropped += entry["dropped"]
        total_lost += entry["lost"]
    assert total_dropped > 0 and total_lost > 0, "the stall should have cost drops and in-flight losses"


# -- errors in the caller, and failed starts ---------------------------------------------------------


def _children() -> set[int]:
    """This process's children, multiprocessing's forkserver and resource tracker aside."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "forkserver" not in cmdline and "resource_tracker" not in cmdline:
            found.add(child.pid)
    return found


def _folders(path):
    return [name for name in os.listdir(path) if name.startswith("logfunnel-")]


@pytest.fixture
def private_tmp(monkeypatch):
    """tempfile's folder, short and empty, so a test sees every logfunnel-* folder made in it."""
    import multiprocess.util

    # multiprocessing's own folders (the forkserver's socket) must outlive the test: make them first.
    multiprocess.util.get_temp_dir()
    multiprocessing.util.get_temp_dir()
    path = tempfile.mkdtemp(prefix="lfm-")
    monkeypatch.setattr(tempfile, "tempdir", path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_manager_with_bogus_address_raises_value_error_in_caller():
    """address='bogus' fails in LogManager(), before any process starts, with the expected forms."""
    before = _children()
    with pytest.raises(
        ValueError,
        match=r"^LogManager\(\) expected an address like 'unix:/path' or 'tcp://127\.0\.0\.1:PORT', "
        r"got 'bogus'$",
    ):
        logfunnel.LogManager([logging.NullHandler()], address="bogus")
    assert _children() == before


def test_manager_with_a_missing_socket_folder_raises_file_not_found_in_caller():
    """A unix: address in a folder that does not exist names the path and the folder."""
    with pytest.raises(
        FileNotFoundError,
        match=r"^LogManager\(\) got address='unix:/missing/dir/x\.sock': "
        r"the folder /missing/dir does not exist",
    ):
        logfunnel.LogManager(address="unix:/missing/dir/x.sock")


def test_manager_with_a_string_in_handlers_raises_type_error_in_caller():
    """handlers=["x"] names the type and position, not a RuntimeError wrapping the child's traceback."""
    with pytest.raises(
        TypeError,
        match=r"^LogManager\(\) expected logging\.Handler objects in handlers, got 'str' at position 0$",
    ):
        logfunnel.LogManager(handlers=["x"])


def test_manager_with_a_single_handler_raises_type_error_in_caller():
    """handlers=StreamHandler() says to pass [handler]."""
    with pytest.raises(
        TypeError,
        match=r"^LogManager\(\) expected a list of logging\.Handler objects for handlers, "
        r"got a single StreamHandler: pass \[handler\]$",
    ):
        logfunnel.LogManager(handlers=logging.StreamHandler())


def test_manager_with_an_unknown_level_raises_value_error_in_caller(monkeypatch):
    """level='VERBOSE' (not registered) lists the known level names."""
    # Only the standard names: other tests register levels of their own in this process.
    monkeypatch.setattr(logging, "_levelToName", {v: k for k, v in STANDARD_LEVELS.items()})
    monkeypatch.setattr(logging, "_nameToLevel", dict(STANDARD_LEVELS, WARN=30, FATAL=50))
    with pytest.raises(
        ValueError,
        match=r"^LogManager\(\) got an unknown level 'VERBOSE' "
        r"\(expected an int or one of CRITICAL, ERROR, WARNING, INFO, DEBUG, NOTSET\)$",
    ):
        logfunnel.LogManager(level="VERBOSE")


def test_manager_with_an_unknown_start_method_raises_value_error_in_caller():
    """start_method='thread' names the methods this platform has."""
    with pytest.raises(
        ValueError,
        match=r"^LogManager\(\) got an unknown start_method 'thread' \(expected None or one of .*fork",
    ):
        logfunnel.LogManager(start_method="thread")


def test_manager_with_a_hex_string_authkey_raises_type_error_in_caller():
    """authkey='00ff' (the hex of LOGFUNNEL_AUTHKEY) says to pass bytes.fromhex(key)."""
    with pytest.raises(
        TypeError,
        match=r"^LogManager\(\) expected authkey as non-empty bytes \(or None for a fresh key\), "
        r"got 'str': pass bytes\.fromhex\(key\)$",
    ):
        logfunnel.LogManager(authkey="00ff")


def test_manager_with_a_config_that_is_not_a_dict_raises_type_error_in_caller():
    """config='logging.toml' (a path) is refused: it must be a dictConfig dict."""
    with pytest.raises(
        TypeError, match=r"^LogManager\(\) expected config as a logging\.config\.dictConfig dict, got 'str'$"
    ):
        logfunnel.LogManager(config="logging.toml")


BAD_CONFIG = {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_manager_that_fails_to_start_reports_the_childs_exception_first(method):
    """A config the manager cannot build: the child's exception comes first, then its traceback."""
    manager = logfunnel.LogManager(config=BAD_CONFIG, start_method=method)
    with pytest.raises(logfunnel.manager.ManagerStartError) as caught:
        manager.start()
    first, _, rest = str(caught.value).partition("\n")
    assert re.fullmatch(r"ValueError: Unable to configure handler 'h'", first), first
    assert re.search(
        r"The log manager \(pid \d+\) failed to start:\nTraceback \(most recent call last\):", rest
    )
    assert caught.value.child_type == "ValueError"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_manager_that_fails_to_start_leaves_no_temporary_folder_or_process(method, private_tmp):
    """After a failed start: no logfunnel-* folder in the temporary directory, no manager process."""
    before = _children()
    with pytest.raises(RuntimeError, match=r"^ValueError: Unable to configure handler 'h'\n"):
        logfunnel.LogManager(config=BAD_CONFIG, start_method=method).start()
    assert _folders(private_tmp) == []
    assert _children() == before


def test_manager_start_error_survives_pickling():
    """ManagerStartError keeps its message and child_type through pickle (it may be re-raised elsewhere)."""
    error = logfunnel.manager.ManagerStartError("ValueError: bad\n\ntraceback", "ValueError")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.child_type) == (type(error), str(error), "ValueError")


class _ExitOnLoad:
    """Unpickled in the manager process, it ends that process at once, before it can answer."""

    def __reduce__(self):
        return (os._exit, (3,))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_manager_that_dies_before_it_listens_says_so_without_waiting_for_the_timeout(method, private_tmp):
    """A manager process that exits before answering: a prompt error with its exit code, nothing left."""
    handler = logging.NullHandler()
    handler.bomb = _ExitOnLoad()
    started = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"^the log manager \(pid \d+\) exited with code 3 before it listened"
    ):
        logfunnel.LogManager([handler], start_method=method).start(timeout=50)
    assert time.monotonic() - started < 30
    assert _folders(private_tmp) == []


@pytest.mark.timeout(60)
def test_a_manager_that_failed_to_start_can_be_started_again(tmp_path):
    """After a failed start the same LogManager starts once the cause is gone."""
    manager = logfunnel.LogManager(config=BAD_CONFIG)
    with pytest.raises(RuntimeError):
        manager.start()
    manager.config = {"version": 1, "handlers": {"h": {"class": "logging.NullHandler"}}}
    with manager:
        assert manager.stats()["received"] == 0


@pytest.mark.timeout(60)
def test_a_sigkilled_managers_private_folder_is_removed_at_stop(private_tmp):
    """The parent owns the private socket's folder: it goes at stop() even if the manager was killed."""
    manager = logfunnel.LogManager([logging.NullHandler()]).start()
    (folder,) = _folders(private_tmp)
    assert manager.address == f"unix:{os.path.join(private_tmp, folder, 'listener.sock')}"
    os.kill(manager.pid, signal.SIGKILL)
    manager.stop(timeout=10)
    assert _folders(private_tmp) == []


# -- stats() ------------------------------------------------------------------------------------------


def _wait_for_lines(path, count, timeout=30.0):
    return wait_for(
        lambda: path.exists() and len(path.read_text(encoding="utf-8").splitlines()) >= count, timeout
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_first_stats_call_reads_real_cpu_and_rate_not_zero(method, tmp_path):
    """The first stats() measures from the manager's start: records per second and CPU above 0.0."""
    path = tmp_path / "first.log"
    with logfunnel.LogManager([_file_handler(path)], start_method=method) as manager:
        process = multiprocessing.get_context("fork").Process(
            target=log_records, args=("f", 2_000, manager.queue)
        )
        process.start()
        process.join(30)
        assert _wait_for_lines(path, 2_000)  # known without asking stats()
        health = manager.stats()["manager"]
    assert health["records_per_second"] > 0.0
    assert health["cpu_percent"] > 0.0


@pytest.mark.timeout(60)
def test_stats_manager_backlog_is_named_backlog_as_documented(tmp_path):
    """stats()["manager"] has "backlog" (bytes received, not yet handled), as the README promises."""
    with logfunnel.LogManager([logging.NullHandler()]) as manager:
        health = manager.stats()["manager"]
    expected = ["backlog", "cpu_percent", "handlers", "lanes", "pid", "records_per_second", "rss"]
    assert sorted(health) == expected
    assert health["backlog"] == 0


@pytest.mark.timeout(60)
def test_stats_after_a_timeout_does_not_return_the_late_reply(tmp_path):
    """A reply that came after its request timed out is discarded: the next stats() is current."""
    path = tmp_path / "late.log"
    with logfunnel.LogManager([_file_handler(path)]) as manager:
        os.kill(manager.pid, signal.SIGSTOP)
        try:
            with pytest.raises(
                TimeoutError, match=r"^the log manager \(pid \d+\) did not answer within 0\.3 s$"
            ):
                manager.stats(timeout=0.3)
        finally:
            os.kill(manager.pid, signal.SIGCONT)  # it now answers the old request: received 0
        process = multiprocessing.get_context("fork").Process(
            target=log_records, args=("l", 10, manager.queue)
        )
        process.start()
        process.join(30)
        assert _wait_for_lines(path, 10)
        assert manager.stats()["received"] == 10


IDLE_PARENT = textwrap.dedent(
    """
    import logging, time
    import logfunnel

    if __name__ == "__main__":
        manager = logfunnel.LogManager([logging.NullHandler()]).start()
        print(manager.pid, manager.address, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.timeout(60)
def test_manager_whose_parent_is_sigkilled_removes_its_private_folder(tmp_path):
    """The parent makes the private socket's folder; killed outright, the manager removes it on exit."""
    tmp = tempfile.mkdtemp(prefix="lfk-")
    env = dict(os.environ, TMPDIR=tmp)
    parent = subprocess.Popen([sys.executable, "-c", IDLE_PARENT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        manager_pid, address = parent.stdout.readline().split()
        assert address.startswith(f"unix:{tmp}/logfunnel-")
        manager = psutil.Process(int(manager_pid))
        parent.kill()
        assert wait_for(lambda: not _running(manager), timeout=10)
        assert _folders(tmp) == []
    finally:
        parent.kill()
        parent.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_handler_that_cannot_cross_to_the_manager_is_named_with_the_fix() -> None:
    """An HTTPHandler holding an SSLContext cannot be pickled: the error names it and says to use config=."""
    import logging.handlers
    import ssl

    handler = logging.handlers.HTTPHandler(
        "127.0.0.1:9", "/log", secure=True, context=ssl.create_default_context()
    )
    with pytest.raises(TypeError, match=r"^LogManager\(\) cannot send <HTTPHandler .*pass config="):
        logfunnel.LogManager(handlers=[handler]).start()
