"""The pytest plugin's ``funnel`` fixture, driven as a user drives it: a test file run by pytest.

Each test writes a small test file and runs pytest on it (in this process through ``pytester``, or
in a subprocess where the run itself is what is tested: xdist, ``-p no:logfunnel``, import cost).
The child processes those runs start are ended by the inner tests; ``conftest._reap_children``
kills any left behind.
"""

from __future__ import annotations

# pytester's in-process runs take out of sys.modules whatever an inner run imported first; a module
# imported again then has globals of its own (multiprocessing.process's current process, the
# worker's installed handlers), so everything the inner runs use is imported here, once.
import multiprocessing.forkserver
import multiprocessing.pool
import multiprocessing.popen_fork
import multiprocessing.popen_forkserver
import multiprocessing.popen_spawn_posix
import multiprocessing.synchronize  # noqa: F401
import subprocess  # noqa: F401

import pytest

import logfunnel.listener
import logfunnel.pytest_plugin
import logfunnel.worker  # noqa: F401

pytest_plugins = ["pytester"]

# Plugins the inner runs do without: hypothesis's terminal summary alone imports (and rewrites) its
# whole package again after each in-process run.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")
WARNING_FILTER = "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"

# What every inner test file starts with: children that log, importable by spawn and forkserver.
HEADER = """
import logging, multiprocessing, os, signal, subprocess, sys, time
import pytest
import logfunnel

def work(item):
    logging.getLogger("app").debug("debug %s", item)
    logging.getLogger("app").info("info %s", item)
    logging.getLogger("app").warning("warning %s", item)
    return os.getpid()

def numbered(handle, tag, count):
    logfunnel.install_worker_logging(handle)
    for i in range(count):
        logging.getLogger("app").warning("%s %d", tag, i)

def pool_of(method, funnel):
    ctx = multiprocessing.get_context(method)
    return ctx.Pool(2, initializer=logfunnel.install_worker_logging, initargs=(funnel.queue,))
"""


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Write an inner test file (HEADER + *body*) and run pytest on it in this process."""
    pytester.makeini(f"[pytest]\nfilterwarnings =\n    {WARNING_FILTER}:DeprecationWarning\n")

    def go(body: str, *args: str, name: str = "test_inner") -> pytest.RunResult:
        pytester.makepyfile(**{name: HEADER + body})
        return pytester.runpytest(*QUIET, *args)

    return go


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_caplog_gets_records_of_pool_children(run, method):
    """Records a Pool's children log reach caplog (records, messages, text), at caplog's levels."""
    result = run(
        f"""
def test_pool(funnel, caplog):
    with pool_of({method!r}, funnel) as pool:
        pids = set(pool.map(work, range(4)))
    funnel.flush()
    assert sorted(caplog.messages) == [f"warning {{i}}" for i in range(4)]
    assert {{r.process for r in caplog.records}} <= pids and os.getpid() not in pids
    assert caplog.text.count("WARNING  app:") == 4
"""
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_records_hold_every_level_in_per_process_order(run):
    """funnel.records holds every record each child logged, as LogRecords, in that child's order."""
    result = run(
        """
def test_order(funnel):
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=numbered, args=(funnel.queue, tag, 500)) for tag in "ab"]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    funnel.flush()
    for tag, child in zip("ab", children):
        mine = [r for r in funnel.records if r.process == child.pid]
        assert [r.getMessage() for r in mine] == [f"{tag} {i}" for i in range(500)]
        assert all(isinstance(r, logging.LogRecord) and r.levelname == "WARNING" for r in mine)
    stats = funnel.stats()
    assert (stats["received"], stats["dropped"], stats["lost"]) == (1000, 0, 0)
    assert len(funnel.messages) == 1000
"""
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_caplog_set_level_decides_and_funnel_keeps_everything(run):
    """caplog.set_level and caplog.at_level, even after the children connected, decide what caplog
    gets; the funnel keeps every level the children logged."""
    result = run(
        """
def test_levels(funnel, caplog):
    with pool_of("fork", funnel) as pool:
        pool.map(work, [0])
        funnel.flush()
        assert caplog.messages == ["warning 0"]
        caplog.set_level(logging.INFO)
        pool.map(work, [1])
        funnel.flush()
        with caplog.at_level(logging.ERROR):
            pool.map(work, [2])
            funnel.flush()
    assert caplog.messages == ["warning 0", "info 1", "warning 1"]
    assert funnel.messages == [f"{level} {i}" for i in range(3) for level in ("debug", "info", "warning")]
"""
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_child_record_is_in_the_failure_report_once(run):
    """A failing test's "Captured log call" section shows a child's record once."""
    result = run(
        """
def test_fails(funnel):
    with pool_of("fork", funnel) as pool:
        pool.map(work, [7])
    funnel.flush()
    assert False, "look at the log"
"""
    )
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "Captured log call" in output
    assert output.count("warning 7") == 1


@pytest.mark.timeout(60)
def test_child_record_is_in_the_live_log_once(run):
    """With live logging on (log_cli), a child's record is shown once."""
    result = run(
        """
def test_live(funnel):
    with pool_of("fork", funnel) as pool:
        pool.map(work, [5])
    funnel.flush()
""",
        "-o",
        "log_cli=true",
        "--log-cli-level=WARNING",
    )
    result.assert_outcomes(passed=1)
    assert result.stdout.str().count("warning 5") == 1


@pytest.mark.timeout(60)
def test_flush_covers_a_worker_that_is_still_running(run):
    """flush() returns once a child that is still alive has had everything it logged handled."""
    result = run(
        """
def logs_then_waits(handle, logged, done):
    logfunnel.install_worker_logging(handle)
    for i in range(2000):
        logging.getLogger("app").warning("r %d", i)
    logged.set()
    done.wait(30)

def test_running(funnel):
    ctx = multiprocessing.get_context("fork")
    logged, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=logs_then_waits, args=(funnel.queue, logged, done))
    child.start()
    try:
        assert logged.wait(30)
        funnel.flush()
        assert funnel.messages == [f"r {i}" for i in range(2000)]
        assert [p["state"] for p in funnel.stats()["processes"]] == ["connected"]
    finally:
        done.set()
        child.join(30)
"""
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_wait_for_timeout_names_what_arrived(run):
    """wait_for() that times out fails the test with the records that did arrive."""
    result = run(
        """
def test_waits(funnel):
    with pool_of("fork", funnel) as pool:
        pool.map(work, [3])
    funnel.wait_for(lambda records: any(r.getMessage() == "never" for r in records), timeout=0.5)
"""
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            'E*AssertionError: funnel.wait_for(lambda records: any(r.getMessage() == "never"*'
            "was still false after 0.5 s; 3 records arrived: *'warning 3'*ForkPoolWorker*",
        ]
    )


@pytest.mark.timeout(60)
def test_wait_for_returns_once_the_predicate_holds(run):
    """wait_for() returns the records as soon as the predicate is true of them."""
    result = run(
        """
def test_waits(funnel):
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=numbered, args=(funnel.queue, "n", 50))
    child.start()
    records = funnel.wait_for(lambda records: len(records) == 50)
    assert [r.getMessage() for r in records] == [f"n {i}" for i in range(50)]
    child.join(30)
"""
    )
    result.assert_outcomes(passed=1)


LOSES_RECORDS = """
def log_then_die(handle):
    handler = logfunnel.install_worker_logging(handle)
    with handler._sink._lock:  # the sender cannot take any: all 841 die with the process
        for i in range(841):
            logging.getLogger("app").warning("r %d", i)
        os.kill(os.getpid(), signal.SIGKILL)

def test_loses(funnel):
    child = multiprocessing.get_context("fork").Process(target=log_then_die, args=(funnel.queue,))
    child.start()
    child.join(30)
"""


@pytest.mark.timeout(60)
def test_flush_settles_children_that_have_ended(run):
    """After flush(), a child killed with records in its buffer has its exact loss in stats(), and
    the listener's WARNING about it is in caplog."""
    result = run(
        (
            LOSES_RECORDS
            + """
    funnel.flush()
    (process,) = funnel.stats()["processes"]
    assert (process["state"], process["received"], process["lost"]) == ("vanished", 0, 841)
    report = f"process {child.pid} ({child.name}) vanished with 841 log records lost"
    assert caplog.record_tuples == [("logfunnel", logging.WARNING, report)]
    assert funnel.records == []
"""
        ).replace("def test_loses(funnel):", "def test_loses(funnel, caplog):"),
        "-W",
        "ignore::logfunnel.pytest_plugin.FunnelWarning",
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_teardown_warns_of_lost_records(run):
    """Records lost by a child killed mid-test are named in a FunnelWarning at teardown."""
    result = run(LOSES_RECORDS)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*FunnelWarning: process * (*Process-*) vanished with 841 log records lost"])


@pytest.mark.timeout(60)
def test_funnel_warning_can_fail_the_test(run):
    """-W error::logfunnel.pytest_plugin.FunnelWarning turns a loss into an error of the test."""
    result = run(LOSES_RECORDS, "-W", "error::logfunnel.pytest_plugin.FunnelWarning")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*FunnelWarning: process * vanished with 841 log records lost*"])


@pytest.mark.timeout(60)
def test_teardown_warns_of_a_child_still_connected(run):
    """A child still connected when the test ends is named at teardown (after a short grace)."""
    result = run(
        """
@pytest.fixture
def child_box():
    box = []
    yield box
    for child in box:
        child.kill()
        child.join(10)

def lingers(handle):
    logfunnel.install_worker_logging(handle)
    logging.getLogger("app").warning("still here")
    time.sleep(60)

@pytest.mark.funnel(timeout=1)
def test_leaks(child_box, funnel):
    child = multiprocessing.get_context("fork").Process(target=lingers, args=(funnel.queue,))
    child.start()
    child_box.append(child)
    funnel.wait_for(lambda records: records)
"""
    )
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*FunnelWarning: process * (*Process-*) was still connected when the test ended*"]
    )


@pytest.mark.timeout(60)
def test_teardown_takes_off_the_test_process_own_handler(pytester):
    """A test that installed worker logging in its own process gets that handler taken off at
    teardown (it would point at a stopped listener for the rest of the session), and the root
    logger is left with the handlers pytest gives every test. (In a subprocess: an in-process run
    would find this test's own capture handlers on the root too.)"""
    pytester.makepyfile(
        test_own=HEADER
        + """
BEFORE = []

def test_before():
    BEFORE[:] = sorted(type(h).__name__ for h in logging.getLogger().handlers)

def test_installs_here(funnel):
    logfunnel.install_worker_logging(funnel.queue)
    logging.getLogger("app").warning("from the test process")

def test_afterwards():
    assert sorted(type(h).__name__ for h in logging.getLogger().handlers) == BEFORE
"""
    )
    result = pytester.runpytest_subprocess(*QUIET, timeout=50)
    result.assert_outcomes(passed=3)


@pytest.mark.timeout(60)
def test_subprocess_child_joins_through_the_environment(run):
    """A subprocess child joins with install_worker_logging() alone: LOGFUNNEL_ADDRESS names the funnel."""
    result = run(
        """
CHILD = "import logging, logfunnel; logfunnel.install_worker_logging(); logging.getLogger('sub').error('hi')"

def test_subprocess(funnel, caplog):
    assert os.environ["LOGFUNNEL_ADDRESS"] == funnel.address
    subprocess.run([sys.executable, "-c", CHILD], check=True, timeout=30)
    funnel.flush()
    assert caplog.record_tuples == [("sub", logging.ERROR, "hi")]
"""
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("where", "expected"),
    [("marker", "['warning 0']"), ("ini", "['info 0', 'warning 0']")],
)
def test_level_option_limits_what_children_send(run, pytester, where, expected):
    """The funnel marker's level= (or the logfunnel_level ini setting) is the lowest level sent."""
    if where == "ini":
        pytester.makeini(
            f"[pytest]\nlogfunnel_level = INFO\nfilterwarnings = {WARNING_FILTER}:DeprecationWarning\n"
        )
    marker = '@pytest.mark.funnel(level="WARNING")' if where == "marker" else ""
    result = run(
        f"""
{marker}
def test_level(funnel):
    with pool_of("fork", funnel) as pool:
        pool.map(work, [0])
    funnel.flush()
    assert funnel.messages == {expected}
"""
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_unknown_level_is_a_clear_error(run):
    """A level name logging does not know fails the fixture, naming the known ones."""
    result = run(
        """
@pytest.mark.funnel(level="LOUD")
def test_level(funnel):
    pass
"""
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ValueError: the funnel fixture's level * got an unknown level 'LOUD'*"])


@pytest.mark.timeout(120)
def test_each_xdist_worker_has_its_own_funnel(pytester):
    """Under -n 2 every test's funnel sees its own children's records, and only those."""
    pytester.makeini(f"[pytest]\nfilterwarnings =\n    {WARNING_FILTER}:DeprecationWarning\n")
    pytester.makepyfile(
        test_xdist=HEADER
        + """
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver", "fork"])
def test_own(funnel, caplog, method, request):
    tag = request.node.name
    child = multiprocessing.get_context(method).Process(target=numbered, args=(funnel.queue, tag, 100))
    child.start()
    child.join(30)
    funnel.flush()
    assert funnel.messages == [f"{tag} {i}" for i in range(100)]
    assert caplog.messages == funnel.messages
"""
    )
    result = pytester.runpytest_subprocess("-n", "2", *QUIET, timeout=100)
    result.assert_outcomes(passed=4)


@pytest.mark.timeout(60)
def test_plugin_can_be_turned_off(pytester):
    """-p no:logfunnel takes the fixture away and leaves every other test alone."""
    pytester.makepyfile(
        test_off="""
def test_plain():
    pass

def test_wants_funnel(funnel):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:logfunnel", *QUIET, timeout=50)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'funnel' not found*"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["-p", "conftest"])
def test_plugin_named_by_module_as_well_loads_once(pytester, how):
    """-p logfunnel.pytest_plugin, or pytest_plugins in a conftest, beside the installed entry point
    loads the plugin once (pytest would stop with "Plugin already registered")."""
    pytester.makepyfile(test_named="def test_it(funnel):\n    assert funnel.stats()['received'] == 0\n")
    args = ["-p", "logfunnel.pytest_plugin"] if how == "-p" else []
    if how == "conftest":
        pytester.makeconftest('pytest_plugins = ["logfunnel.pytest_plugin"]\n')
    result = pytester.runpytest_subprocess(*QUIET, *args, timeout=50)
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_a_run_without_the_fixture_loads_none_of_logfunnel(pytester):
    """With the plugin loaded, a run whose tests do not use the fixture imports no listener, worker
    or wire code (and no msgspec), and starts no thread."""
    pytester.makepyfile(
        test_light="""
import sys, threading

def test_nothing_loaded(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("logfunnel")
    heavy = [m for m in ("logfunnel.listener", "logfunnel.worker", "logfunnel._wire", "msgspec")
             if m in sys.modules]
    assert heavy == []
    assert [t.name for t in threading.enumerate()] == ["MainThread"]
"""
    )
    result = pytester.runpytest_subprocess(*QUIET, timeout=50)
    result.assert_outcomes(passed=1)
