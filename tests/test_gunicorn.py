"""logfunnel's gunicorn hooks under a real gunicorn: every line once, losses counted exactly.

Three gunicorns, one per configuration, each driven through a whole scenario once (module fixtures),
then asserted on from several tests:

- sync workers, no preload, ``max_requests`` recycling, a request stuck past ``--timeout``
  (SIGABRT, then SIGKILL) and a worker SIGKILLed from outside, each with records in flight;
- gthread workers with ``--preload``, recycling, and a ``HUP`` that re-applies a changed
  ``logconfig_dict``;
- gunicorn's logging defaults (no ``logconfig_dict``) and a worker SIGKILLed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from _gunicorn_run import Gunicorn, counts_by_id, run_once
from _need import need_module

pytestmark = pytest.mark.timeout(120)

STUCK, HELD = 5, 7  # records each killed worker holds when it dies
FIRST, SECOND = 30, 10  # requests before and after the kills (3 and 2 records each)


def _finish(server: Gunicorn) -> dict[str, Any]:
    code = server.stop()
    assert not server.alive(), "a gunicorn process outlived its master"
    return {
        "code": code,
        "app": server.lines("app.log"),
        "access": server.lines("access.log"),
        "error": server.lines("error.log"),
        "stats": server.stats(),
        "stderr": server.text("stderr.txt"),
    }


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """sync workers, recycled every 10 requests; one killed by --timeout, one by SIGKILL."""
    need_module("gunicorn", "gunicorn (the test extra)")
    return run_once(tmp_path_factory, "sync", _sync_scenario)


def _sync_scenario(folder: Path) -> dict[str, Any]:
    # No control socket: gunicorn's thread for it would hide whether logfunnel started one.
    extra = "control_socket_disable = True"
    server = Gunicorn(folder, worker_class="sync", preload=False, max_requests=10, extra=extra)
    try:
        server.start()
        for i in range(FIRST):
            assert server.get(f"/log/a{i}?n=3") == 200
        server.get_in_background(f"/stuck/s0?n={STUCK}")
        stuck = int(server.wait_for(r"s0 holding pid=(\d+)", "app.log").group(1))
        server.wait_for(rf"Worker \(pid:{stuck}\) was sent SIGKILL")
        server.get_in_background(f"/hold/h0?n={HELD}")
        held = int(server.wait_for(r"h0 holding pid=(\d+)", "app.log").group(1))
        server.remember()
        os.kill(held, signal.SIGKILL)
        server.wait_for(rf"Worker \(pid:{held}\) was sent SIGKILL")
        for i in range(SECOND):
            assert server.get(f"/log/b{i}?n=2") == 200
        result = _finish(server)
        result.update(stuck=stuck, held=held, master_threads=server.lines("master-threads.txt"))
        return result
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def hup_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """gthread workers with --preload; HUP after a change of logconfig_dict's format."""
    need_module("gunicorn", "gunicorn (the test extra)")
    return run_once(tmp_path_factory, "hup", _hup_scenario)


def _hup_scenario(folder: Path) -> dict[str, Any]:
    server = Gunicorn(folder, worker_class="gthread", preload=True, max_requests=10)
    try:
        server.start()
        for i in range(20):
            assert server.get(f"/log/c{i}?n=2") == 200
        booted = server.count(r"Booting worker with pid", "error.log")
        server.write_config(prefix="v2 ")
        server.signal(signal.SIGHUP)
        server.wait_for(r"Booting worker with pid", count=booted + 2)  # the new workers
        server.wait_for(r"Worker exiting \(pid", count=booted)  # and every old one gone
        for i in range(20):
            assert server.get(f"/log/d{i}?n=2") == 200
        return _finish(server)
    finally:
        server.cleanup()


def _by_pid(stats: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for manager in stats:
        for process in manager["processes"]:
            assert process["pid"] not in found, f"process {process['pid']} connected twice"
            found[process["pid"]] = process
    return found


# -- sync workers: recycling, --timeout, SIGKILL ------------------------------------------------------


def test_every_app_record_arrives_once(sync_run):
    """Each request's app records are in app.log exactly once, across recycled workers."""
    found = counts_by_id(sync_run["app"], r" app INFO ([ab]\d+) line \d+$")
    assert found == {**{f"a{i}": 3 for i in range(FIRST)}, **{f"b{i}": 2 for i in range(SECOND)}}


def test_every_access_line_arrives_once(sync_run):
    """gunicorn.access writes one line per answered request, exactly once."""
    found = counts_by_id(sync_run["access"], r"^GET /log/([ab]\d+)\?n=\d HTTP/1.1 200$")
    assert found == Counter({f"a{i}": 1 for i in range(FIRST)} | {f"b{i}": 1 for i in range(SECOND)})


def test_gunicorn_error_lines_arrive_once(sync_run):
    """The master's and the workers' gunicorn.error lines are each in error.log once."""
    error = "\n".join(sync_run["error"])
    booted = re.findall(r"\[INFO\] Booting worker with pid: (\d+)$", error, re.M)
    assert len(booted) == len(set(booted)) >= 2 + 4  # two, then replacements: recycled, killed
    exiting = Counter(re.findall(r"\[INFO\] Worker exiting \(pid: (\d+)\)$", error, re.M))
    assert exiting and set(exiting.values()) == {1}
    for line in ("Starting gunicorn", "Handling signal: term", "Shutting down: Master"):
        assert sum(line in x for x in sync_run["error"]) == 1, line
    assert sum(f"WORKER TIMEOUT (pid:{sync_run['stuck']})" in x for x in sync_run["error"]) == 1


def test_recycled_workers_lose_nothing(sync_run):
    """Workers recycled by max_requests said goodbye with every record delivered."""
    processes = _by_pid(sync_run["stats"])
    error = "\n".join(sync_run["error"])
    recycled = {int(p) for p in re.findall(r"Worker exiting \(pid: (\d+)\)", error)}
    assert len(recycled) >= 4
    for pid in recycled:
        assert processes[pid]["state"] == "exited", processes[pid]
        assert processes[pid]["lost"] == processes[pid]["dropped"] == 0


def test_worker_exit_records_arrive_and_the_manager_survives(sync_run):
    """A user's worker_exit hook logs, then flushes: its line arrives; worker exits never stop the manager."""
    error = "\n".join(sync_run["error"])
    exited = Counter(re.findall(r"Worker exiting \(pid: (\d+)\)", error))
    hooked = counts_by_id(sync_run["app"], r" app INFO worker_exit hook of (\d+)$")
    assert hooked == exited
    (manager,) = sync_run["stats"]  # one manager served every worker, recycled or killed, to the end
    assert manager["manager"]["pid"] > 0


def test_killed_workers_losses_are_reported_exactly(sync_run):
    """A worker killed by --timeout and one SIGKILLed lose exactly what they held, and say so."""
    processes = _by_pid(sync_run["stats"])
    stuck, held = processes[sync_run["stuck"]], processes[sync_run["held"]]
    assert (stuck["state"], stuck["lost"]) == ("vanished", STUCK)
    assert (held["state"], held["lost"]) == ("vanished", HELD)
    for pid, lost in ((sync_run["stuck"], STUCK), (sync_run["held"], HELD)):
        warning = rf"logfunnel WARNING process {pid} \(.*\) vanished with {lost} log records lost$"
        assert sum(bool(re.search(warning, line)) for line in sync_run["app"]) == 1
    assert not [line for line in sync_run["app"] if re.search(r" [sh]0 lost \d", line)]


def test_produced_equals_delivered_plus_lost(sync_run):
    """Exact accounting: every record the manager was sent is a line, or counted as lost."""
    (stats,) = sync_run["stats"]
    own = [line for line in sync_run["app"] if " logfunnel WARNING " in line]
    delivered = len(sync_run["app"]) - len(own) + len(sync_run["access"]) + len(sync_run["error"])
    delivered -= 1  # "Starting gunicorn": the master writes it itself, before on_starting
    assert stats["received"] == delivered
    assert stats["lost"] == STUCK + HELD
    assert stats["dropped"] == 0


def test_other_workers_untouched_by_the_kills(sync_run):
    """After both kills, requests are answered and every other worker lost nothing."""
    processes = _by_pid(sync_run["stats"])
    killed = {sync_run["stuck"], sync_run["held"]}
    assert all(p["lost"] == 0 for pid, p in processes.items() if pid not in killed)
    assert sync_run["code"] == 0


# -- gthread, --preload, HUP ---------------------------------------------------------------------


def test_hup_keeps_every_line(hup_run):
    """Across HUP, each request's app and access lines arrive exactly once."""
    app = counts_by_id(hup_run["app"], r" app INFO ([cd]\d+) line \d+$")
    assert app == {**{f"c{i}": 2 for i in range(20)}, **{f"d{i}": 2 for i in range(20)}}
    access = counts_by_id(hup_run["access"], r"^GET /log/([cd]\d+)\?n=\d HTTP/1.1 200$")
    assert access == {**{f"c{i}": 1 for i in range(20)}, **{f"d{i}": 1 for i in range(20)}}


def test_hup_applies_the_new_logconfig_dict(hup_run):
    """Records of the workers started by HUP are written with the reloaded configuration."""
    before = [line for line in hup_run["app"] if re.search(r" c\d+ line ", line)]
    after = [line for line in hup_run["app"] if re.search(r" d\d+ line ", line)]
    assert not any(line.startswith("v2 ") for line in before)
    assert all(line.startswith("v2 ") for line in after)


def test_hup_old_manager_serves_old_workers_to_the_end(hup_run):
    """Two managers: the first drained its workers' last lines; nothing dropped or lost in either."""
    first, second = hup_run["stats"]
    assert first["lost"] == second["lost"] == 0
    assert first["dropped"] == second["dropped"] == 0
    assert all(p["state"] == "exited" for p in first["processes"]), first["processes"]
    pids = [[p["pid"] for p in manager["processes"]] for manager in (first, second)]
    assert all(len(set(each)) == len(each) for each in pids)  # each process connected once
    assert len(set(pids[0]) & set(pids[1])) == 1  # the master's; every worker joined one manager
    assert sum("Hang up: Master" in line for line in hup_run["error"]) == 1
    assert sum("Shutting down: Master" in line for line in hup_run["error"]) == 1


def test_master_forks_without_logfunnel_threads(sync_run):
    """At every fork the master has no logfunnel thread: it sends its records from its own thread."""
    forks = sync_run["master_threads"]
    assert len(forks) >= 6  # two workers, then replacements
    assert not [names for names in forks if "logfunnel" in names], forks


def test_no_fork_warning_or_logfunnel_complaint(hup_run):
    """The master stays free of logfunnel threads: no banner, no traceback on stderr."""
    assert "--- logfunnel" not in hup_run["stderr"], hup_run["stderr"]
    assert "Traceback" not in hup_run["stderr"], hup_run["stderr"]


# -- gunicorn's defaults: no logconfig_dict, errorlog and accesslog on stderr and stdout ---------

DEFAULTS = """
from logfunnel.integrations.gunicorn import *  # noqa: F403

workers = 2
accesslog = "-"
access_log_format = "%(r)s %(s)s"
control_socket_disable = True
"""


@pytest.fixture(scope="module")
def defaults_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """gunicorn's own logging defaults, one worker SIGKILLed with records in flight."""
    need_module("gunicorn", "gunicorn (the test extra)")
    return run_once(tmp_path_factory, "defaults", _defaults_scenario)


def _defaults_scenario(folder: Path) -> dict[str, Any]:
    (folder / "gunicorn.conf.py").write_text(DEFAULTS)
    server = Gunicorn(folder, args=("-b", "127.0.0.1:0"), error_log="stderr.txt")
    try:
        server.start()
        for i in range(10):
            assert server.get(f"/log/e{i}?n=2&level=warning") == 200
        server.get_in_background(f"/hold/h0?n={HELD}&level=warning")
        held = int(server.wait_for(r"h0 holding pid=(\d+)", "stderr.txt").group(1))
        server.remember()
        os.kill(held, signal.SIGKILL)
        server.wait_for(rf"process {held} \(MainProcess\) vanished with {HELD} log records", "stderr.txt")
        for i in range(10, 20):
            assert server.get(f"/log/e{i}?n=2&level=warning") == 200
        code = server.stop()
        assert not server.alive(), "a gunicorn process outlived its master"
        return {"code": code, "stdout": server.lines("stdout.txt"), "stderr": server.lines("stderr.txt")}
    finally:
        server.cleanup()


def test_defaults_keep_gunicorns_destinations(defaults_run):
    """Without logconfig_dict, access lines reach stdout and app warnings stderr, each exactly once."""
    access = counts_by_id(defaults_run["stdout"], r"^GET /log/(e\d+)\?n=2&level=warning HTTP/1.1 200$")
    assert access == {f"e{i}": 1 for i in range(20)}
    app = counts_by_id(defaults_run["stderr"], r"^(e\d+) line \d$")  # logging.lastResort: the bare message
    assert app == {f"e{i}": 2 for i in range(20)}
    assert sum("Shutting down: Master" in line for line in defaults_run["stderr"]) == 1
    assert defaults_run["code"] == 0


def test_defaults_loss_report_goes_to_gunicorns_error_log(defaults_run):
    """The manager's loss report is written like gunicorn's own errors, once; no logfunnel banner."""
    reports = [line for line in defaults_run["stderr"] if "log records lost" in line]
    assert len(reports) == 1
    assert re.match(rf"^\[[^]]+\] \[\d+\] \[WARNING\] process \d+ \(\w+\) vanished with {HELD} ", reports[0])
    assert not [line for line in defaults_run["stderr"] if "--- logfunnel" in line]


# -- a stop signal while a worker boots ------------------------------------------------------------

SLOW_BOOT = """
import logging
import os
import time

import logfunnel.integrations.gunicorn as logfunnel_gunicorn
from logfunnel.integrations.gunicorn import *  # noqa: F403

workers = 1
graceful_timeout = 60
control_socket_disable = True


def post_fork(server, worker):  # the user's hook, chained to ours; slow as on a loaded machine
    logfunnel_gunicorn.post_fork(server, worker)
    open("booting-%d" % os.getpid(), "w").close()
    time.sleep(3)
    logging.getLogger("app").warning("booted %d", os.getpid())
"""


def test_sigterm_while_a_worker_boots_stops_it_at_once(tmp_path):
    """Until gunicorn's worker sets its own handlers (after post_fork) a SIGTERM would be lost, and the
    master would wait graceful_timeout (60 s here) and SIGKILL the worker: the worker stops at once, as
    it would after booting, and its records arrive."""
    need_module("gunicorn", "gunicorn (the test extra)")
    (tmp_path / "gunicorn.conf.py").write_text(SLOW_BOOT)
    server = Gunicorn(tmp_path, args=("-b", "127.0.0.1:0"), error_log="stderr.txt")
    try:
        server.start()
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("booting-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        (marker,) = tmp_path.glob("booting-*")
        pid = int(marker.name.split("-")[1])
        started = time.monotonic()
        code = server.stop(timeout=40)
        took = time.monotonic() - started
        stderr = server.text("stderr.txt")
        assert code == 0, stderr[-3000:]
        assert took < 30, f"the master waited {took:.0f} s for the booting worker:\n{stderr[-3000:]}"
        assert f"booted {pid}\n" in stderr  # lastResort in the manager: the bare message
        assert f"Worker exiting (pid: {pid})" in stderr
        assert "SIGKILL" not in stderr
    finally:
        server.cleanup()
