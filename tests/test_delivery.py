"""Every record from every kind of child process arrives exactly once, in per-process order."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap

import multiprocess
import pytest

import logfunnel
from _workers import assert_exactly_once, log_records

WORKERS = 4
RECORDS = 10_000
METHODS = ["fork", "spawn", "forkserver"]


def _expected(count: int = RECORDS, workers: int = WORKERS) -> dict[str, int]:
    return {str(w): count for w in range(workers)}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_pool_delivers_every_record_once(method, log_file):
    """multiprocessing.Pool with the handle in initargs: 4 x 10,000 records, exactly once, in order."""
    handler, path = log_file
    with logfunnel.start_listener(handlers=[handler]) as listener:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(
            WORKERS, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)
        ) as pool:
            pool.starmap(log_records, [(w, RECORDS) for w in range(WORKERS)])
            pool.close()
            pool.join()
    assert_exactly_once(path, _expected())
    stats = listener.stats()
    assert (stats["received"], stats["dropped"], stats["lost"]) == (WORKERS * RECORDS, 0, 0)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_pool_context_exit_terminates_without_losing_records(method, log_file):
    """`with Pool() as pool:` ends with terminate() (SIGTERM): buffered records still arrive."""
    handler, path = log_file
    with logfunnel.start_listener(handlers=[handler]) as listener:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(
            WORKERS, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)
        ) as pool:
            pool.starmap(log_records, [(w, 2_000) for w in range(WORKERS)])
        # terminate() does not wait for the workers' exit; the listener drains what they sent.
    assert_exactly_once(path, _expected(2_000))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_executor_with_handle_passed_through_submit(method, log_file):
    """ProcessPoolExecutor, each task joining with the handle given to submit(): exactly once."""
    handler, path = log_file
    with logfunnel.start_listener(handlers=[handler]) as listener:
        ctx = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx) as executor:
            futures = [executor.submit(log_records, w, RECORDS, listener.queue) for w in range(WORKERS)]
            for future in futures:
                future.result(timeout=60)
    assert_exactly_once(path, _expected())
    assert listener.stats()["lost"] == 0


@pytest.mark.timeout(90)
def test_multiprocess_pool_delivers_every_record_once(log_file):
    """The dill-based `multiprocess` package's Pool works like multiprocessing's."""
    handler, path = log_file
    with logfunnel.start_listener(handlers=[handler]) as listener:
        with multiprocess.Pool(
            WORKERS, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)
        ) as pool:
            pool.starmap(log_records, [(w, RECORDS) for w in range(WORKERS)])
            pool.close()
            pool.join()
    assert_exactly_once(path, _expected())


def _fork_child(body) -> int:
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.timeout(60)
def test_raw_fork_child_delivers_every_record_once(log_file):
    """A child made by a bare os.fork() (no multiprocessing hooks) delivers everything."""
    handler, path = log_file

    def child():
        log_records("child", RECORDS, handle)
        logfunnel.uninstall_worker_logging()

    with logfunnel.start_listener(handlers=[handler]) as listener:
        handle = listener.queue
        assert _fork_child(child) == 0
    assert_exactly_once(path, {"child": RECORDS})
    (process,) = listener.stats()["processes"]
    assert process["state"] == "exited"


@pytest.mark.timeout(60)
def test_fork_after_parent_logged_does_not_lose_child_records(log_file):
    """A parent that logged (live buffer, thread, connection) then forks: the child's records arrive."""
    handler, path = log_file
    with logfunnel.start_listener(handlers=[handler]) as listener:
        logfunnel.install_worker_logging(listener.queue)
        log_records("parent", 500)
        logfunnel.flush_worker_logging(10)

        def child():
            log = logging.getLogger("test.worker")
            for i in range(500, 500 + RECORDS):  # continues the numbering through the inherited handler
                log.info("w=%s i=%d", "child", i - 500)
            logfunnel.uninstall_worker_logging()

        assert _fork_child(child) == 0
        log = logging.getLogger("test.worker")
        for i in range(500, 1000):
            log.info("w=%s i=%d", "parent", i)
        logfunnel.uninstall_worker_logging()
    assert_exactly_once(path, {"parent": 1000, "child": RECORDS})
    assert listener.stats()["lost"] == 0


@pytest.mark.timeout(60)
def test_subprocess_child_joins_through_environment(log_file):
    """A plain subprocess finds the listener through LOGFUNNEL_ADDRESS and delivers everything."""
    handler, path = log_file
    code = textwrap.dedent(
        f"""
        import logging, logfunnel
        logfunnel.install_worker_logging()
        log = logging.getLogger("test.worker")
        for i in range({RECORDS}):
            log.info("w=%s i=%d", "sub", i)
        """
    )
    with logfunnel.start_listener(handlers=[handler]) as listener:
        assert os.environ["LOGFUNNEL_ADDRESS"] == listener.address
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert_exactly_once(path, {"sub": RECORDS})
    assert os.environ.get("LOGFUNNEL_ADDRESS") != listener.address


@pytest.mark.timeout(60)
@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", None])
def test_spawned_process_with_tcp_or_unix_address(address, log_file):
    """A spawned Process gets the handle as an argument; TCP on loopback works like the Unix socket."""
    handler, path = log_file
    with logfunnel.start_listener(handlers=[handler], address=address) as listener:
        assert listener.address.startswith("tcp://127.0.0.1:" if address else "unix:")
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(target=log_records, args=("p", 1_000, listener.queue))
        process.start()
        process.join(60)
        assert process.exitcode == 0
    assert_exactly_once(path, {"p": 1_000})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["multiprocessing", "multiprocess", "manager"])
def test_existing_multiprocessing_queue_still_works(kind, log_file):
    """People who already have an mp queue can pass it to both sides; records arrive once."""
    handler, path = log_file
    manager = None
    if kind == "multiprocessing":
        queue = multiprocessing.get_context("fork").Queue()
        ctx = multiprocessing.get_context("fork")
    elif kind == "multiprocess":
        queue = multiprocess.get_context("fork").Queue()
        ctx = multiprocess.get_context("fork")
    else:
        manager = multiprocessing.get_context("fork").Manager()
        queue = manager.Queue()
        ctx = multiprocessing.get_context("fork")
    try:
        with logfunnel.LogListener(queue, handler) as listener:
            processes = [ctx.Process(target=log_records, args=(w, 500, queue)) for w in range(2)]
            for p in processes:
                p.start()
            for p in processes:
                p.join(30)
                assert p.exitcode == 0
        assert_exactly_once(path, {"0": 500, "1": 500})
        assert listener.stats()["received"] == 1_000
    finally:
        if manager is not None:
            manager.shutdown()
