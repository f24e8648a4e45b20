"""Issue 10, celery: a real ``celery worker -P prefork -c 2 --max-tasks-per-child=2`` funnels every record.

One worker runs one scenario for the whole session (celery starts slowly; under ``pytest -n`` the first
xdist process runs it under a file lock and the others read its results): tasks that log, a task killed
by its hard time limit, tasks during and after the kill, and a warm shutdown. Each test checks one
behaviour on what that run left: the manager's log file, its ``stats()`` (written at the worker's
shutdown by ``_celery_app``), the task results and the processes left behind. The broker is kombu's
``filesystem://`` and the result backend ``file://``, in a temporary folder: no server is needed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from _celery_worker import celery_worker, stop, wait_for_line
from _need import need_module

TESTS = str(Path(__file__).resolve().parent)
RECORDS = 40  # per log_records task
DOOMED = 300  # records the killed task made that never left it


def _run_scenario(folder: Path) -> dict[str, Any]:
    need_module("celery", "celery (the test extra)")
    from _celery_app import FOLDER_ENV, make_app

    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    root_before = list(logging.getLogger().handlers)
    client, funnel = make_app(str(folder))  # install() in the client, as the app's module does there
    client_side = {
        "new_children": sorted({p.pid for p in psutil.Process().children(recursive=True)} - children_before),
        "root_unchanged": logging.getLogger().handlers == root_before,
        "manager": repr(funnel.manager),
    }
    log = folder / "worker.log"
    out: dict[str, Any] = {"client": client_side, "tasks": []}
    with celery_worker("_celery_app", TESTS, str(folder), {FOLDER_ENV: str(folder)}) as worker:
        if not wait_for_line(log, " ready.", 60, worker):
            stop(worker)
            raise AssertionError(f"the worker did not start: {(folder / 'stderr.txt').read_text()[-3000:]}")
        out["main_pid"] = worker.pid

        def run(phase: str, count: int) -> None:
            results = [
                (f"{phase}{i}", client.send_task("log_records", args=(f"{phase}{i}", RECORDS)))
                for i in range(count)
            ]
            for tag, result in results:
                out["tasks"].append(
                    {
                        "tag": tag,
                        "id": result.id,
                        "phase": phase,
                        "pid": result.get(timeout=30, interval=0.05),
                    }
                )

        run("a", 8)  # 8 tasks on 2 children that each take 2: replacements after max_tasks_per_child
        stuck = client.send_task("stuck", args=(DOOMED,))
        deadline = time.monotonic() + 30
        while not (folder / "stuck.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        run("b", 4)  # while the stuck task holds one child, and while it is killed
        error = stuck.get(timeout=30, propagate=False, interval=0.05)
        out["stuck"] = {"id": stuck.id, "pid": int((folder / "stuck.pid").read_text()), "error": repr(error)}
        run("c", 2)  # after the kill: the replacement child too
        out["leftovers"] = stop(worker)
        out["returncode"] = worker.returncode
    out["log"] = log.read_text(encoding="utf-8")
    out["stderr"] = (folder / "stderr.txt").read_text(errors="replace")
    stats = folder / "stats.json"
    out["stats"] = json.loads(stats.read_text()) if stats.exists() else None
    return out


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """The results of the one celery run, shared by every xdist process of the session."""
    import filelock

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the session's folder, common to xdist
    folder = shared / "celery-scenario"
    results = shared / "celery-scenario.json"
    with filelock.FileLock(str(shared / "celery-scenario.lock")):
        if not results.exists():
            folder.mkdir(exist_ok=True)
            try:
                outcome = _run_scenario(folder)
            except BaseException as exc:
                outcome = {"failed": f"{type(exc).__name__}: {exc}"}
            results.write_text(json.dumps(outcome))
    outcome = json.loads(results.read_text())
    if "failed" in outcome:
        pytest.fail(f"the celery scenario failed: {outcome['failed']}")
    return outcome


def _lines(scenario: dict[str, Any]) -> list[list[str]]:
    """worker.log's records as fields: pid, task_name, task_id, logger, level, message."""
    return [line.split("|", 5) for line in scenario["log"].splitlines() if line.count("|") >= 5]


def _child(scenario: dict[str, Any], pid: int) -> dict[str, Any]:
    (entry,) = [p for p in scenario["stats"]["processes"] if p["pid"] == pid]
    return entry


@pytest.mark.timeout(180)
def test_every_task_record_arrives_exactly_once_with_its_task_id(scenario):
    """Each log_records task's 40 records are in the log once each, stamped with its id and name."""
    seen: dict[tuple[str, int], list[list[str]]] = {}
    for fields in _lines(scenario):
        words = fields[5].split()
        if len(words) == 4 and words[0] == "record" and words[2] == "of":
            seen.setdefault((words[3], int(words[1])), []).append(fields)
    assert len(scenario["tasks"]) == 14
    for task in scenario["tasks"]:
        for i in range(RECORDS):
            copies = seen.pop((task["tag"], i), [])
            assert len(copies) == 1, (task, i, copies)
            pid, name, task_id, _, _, _ = copies[0]
            assert (int(pid), name, task_id) == (task["pid"], "log_records", task["id"])
    assert not seen, f"records of no task: {sorted(seen)[:5]}"


@pytest.mark.timeout(180)
def test_children_replaced_after_max_tasks_per_child_flush_before_exit(scenario):
    """Every child that ended normally (recycled after 2 tasks, or at shutdown) is 'exited' with
    nothing lost: it flushed in worker_process_shutdown before billiard's os._exit."""
    children = [p for p in scenario["stats"]["processes"] if p["ppid"] == scenario["main_pid"]]
    normal = [p for p in children if p["pid"] != scenario["stuck"]["pid"]]
    assert len({t["pid"] for t in scenario["tasks"]}) >= 7  # 14 tasks, 2 per child
    assert len(normal) >= 7, children
    for entry in normal:
        assert (entry["state"], entry["lost"], entry["dropped"]) == ("exited", 0, 0), entry


@pytest.mark.timeout(180)
def test_task_killed_by_its_time_limit_is_reported_as_its_exact_loss(scenario):
    """The child killed by the hard time limit is 'vanished' with exactly the 300 records it still
    held lost, said in a WARNING; none of them was written."""
    stuck = scenario["stuck"]
    assert "TimeLimitExceeded" in stuck["error"]
    entry = _child(scenario, stuck["pid"])
    assert (entry["state"], entry["lost"], entry["dropped"]) == ("vanished", DOOMED, 0), entry
    warnings = [f for f in _lines(scenario) if f[3] == "logfunnel" and f"process {stuck['pid']} " in f[5]]
    assert [w[5].endswith(f"vanished with {DOOMED} log records lost") for w in warnings] == [True]
    assert not [f for f in _lines(scenario) if f[5].startswith("doomed ")]
    assert scenario["stats"]["lost"] == DOOMED


@pytest.mark.timeout(180)
def test_other_child_keeps_working_while_one_is_stuck_and_killed(scenario):
    """Tasks sent while the stuck task holds a child, and after it is killed, complete elsewhere."""
    later = [t for t in scenario["tasks"] if t["phase"] in ("b", "c")]
    assert len(later) == 6
    assert all(t["pid"] != scenario["stuck"]["pid"] for t in later)


@pytest.mark.timeout(180)
def test_each_child_record_count_matches_its_lines(scenario):
    """Per child, the records the manager counted as received are the lines written: no duplicate."""
    lines_per_pid: dict[int, int] = {}
    for fields in _lines(scenario):
        if fields[0].isdigit() and fields[3] != "logfunnel":
            lines_per_pid[int(fields[0])] = lines_per_pid.get(int(fields[0]), 0) + 1
    children = [p for p in scenario["stats"]["processes"] if p["ppid"] == scenario["main_pid"]]
    for entry in children:
        assert entry["received"] == lines_per_pid.get(entry["pid"], 0), entry
    stats = scenario["stats"]
    assert stats["dropped"] == 0
    assert stats["received"] == sum(p["received"] for p in stats["processes"])


@pytest.mark.timeout(180)
def test_main_process_records_go_through_the_manager(scenario):
    """celery's own lines from the main process (ready, the hard time limit, billiard's report of the
    killed child) are in the manager's log; none went to stderr through logging's lastResort."""
    main = [f for f in _lines(scenario) if f[0] == str(scenario["main_pid"])]
    messages = [f[5] for f in main]
    assert any(m.endswith(" ready.") for m in messages)
    assert f"Hard time limit (2s) exceeded for stuck[{scenario['stuck']['id']}]" in messages
    assert any(f"pid:{scenario['stuck']['pid']} exited with" in m for m in messages), messages
    assert " exited with " not in scenario["stderr"]
    assert "Traceback" not in scenario["stderr"]


@pytest.mark.timeout(180)
def test_warm_shutdown_leaves_no_process_behind(scenario):
    """After SIGTERM the worker exits 0 and its group (children, manager) is gone within 5 s."""
    assert scenario["returncode"] == 0
    assert scenario["leftovers"] == []


@pytest.mark.timeout(180)
def test_install_is_harmless_in_the_client(scenario):
    """install() in the process that sends tasks starts nothing and leaves its logging alone."""
    assert scenario["client"] == {"new_children": [], "root_unchanged": True, "manager": "None"}


# -- without a worker -------------------------------------------------------------------------------


def test_install_twice_returns_the_first_installation(tmp_path):
    """A second install() (the app module imported twice) changes nothing."""
    need_module("celery", "celery (the test extra)")
    from celery import Celery

    from logfunnel.integrations.celery import install

    first = install(Celery("one", set_as_current=False))
    assert install(Celery("two", set_as_current=False)) is first
    assert first.manager is None
    with pytest.raises(RuntimeError, match=r"^CeleryLogging\.stats\(\) works in the celery worker's main"):
        first.stats()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"app": "proj"}, r"^install\(\) expected a celery\.Celery app, got 'str'$"),
        ({"config": [1]}, r"^install\(\) expected config as a logging\.config\.dictConfig dict, got 'list'$"),
        ({"config": {}, "handlers": []}, r"^install\(\) takes handlers or a config, not both$"),
        (
            {"handlers": [print]},
            r"^install\(\) expected logging\.Handler objects, got 'builtin_function_or_method'$",
        ),
    ],
    ids=["app", "config", "both", "handlers"],
)
def test_install_refuses_wrong_arguments(kwargs, message):
    """Wrong arguments are refused at once, saying what was expected and what arrived."""
    need_module("celery", "celery (the test extra)")
    from celery import Celery

    from logfunnel.integrations.celery import install

    arguments = {"app": Celery("wrong", set_as_current=False), **kwargs}
    with pytest.raises(TypeError, match=message):
        install(**arguments)


def test_celery_config_renders_celery_task_format_from_a_stamped_record():
    """celery_config() builds celery's two formatters; a record stamped in a task renders its id in
    the listener, where no task runs."""
    need_module("celery", "celery (the test extra)")
    import logging.config

    from celery import Celery

    from logfunnel.integrations.celery import celery_config

    config = celery_config(Celery("fmt", set_as_current=False), logging.INFO)
    formatters = {}
    for name, spec in config["formatters"].items():
        factory = spec["()"].rsplit(".", 1)
        module = __import__(factory[0], fromlist=[factory[1]])
        formatters[name] = getattr(module, factory[1])(spec["fmt"], use_color=False, datefmt=spec["datefmt"])
    record = logging.LogRecord("proj.tasks", logging.INFO, __file__, 1, "adding %d", (2,), None)
    record.processName = "ForkPoolWorker-1"
    record.task_id, record.task_name = "0f3c", "proj.add"
    assert formatters["celery.task"].format(record).endswith("] proj.add[0f3c]: adding 2")
    assert formatters["celery"].format(record).endswith(": INFO/ForkPoolWorker-1] adding 2")
    assert config["loggers"]["celery.task"]["propagate"] is False


def test_celery_configures_logging_as_usual_outside_a_worker():
    """install() connects nothing to setup_logging until celeryd_init (sent by `celery worker` only)
    has come: beat, inspect and clients keep celery's own logging setup."""
    need_module("celery", "celery (the test extra)")
    from celery import Celery, signals

    from logfunnel.integrations.celery import install

    install(Celery("client", set_as_current=False))
    assert not [key for key, _ in signals.setup_logging.receivers if "logfunnel" in repr(key)]
    assert [key for key, _ in signals.worker_process_init.receivers if "logfunnel" in repr(key)]


@pytest.mark.timeout(90)
def test_handlers_and_raw_fork_children_through_celerys_signals(tmp_path):
    """install(app, handlers=[...]) with celery's signals sent as a worker sends them, and 3 children
    made by a raw os.fork that leave through os._exit: 3 x 500 records arrive once, all 'exited'."""
    need_module("celery", "celery (the test extra)")
    import signal
    import subprocess
    import sys

    out = tmp_path / "out.log"
    script = Path(TESTS) / "_celery_handlers_child.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(TESTS).parent / "src"), TESTS]))
    command = [sys.executable, str(script), str(out), "3", "500"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(5)
    assert process.returncode == 0, stderr.decode()[-3000:]
    result = json.loads(stdout.decode().splitlines()[-1])
    children = [p for p in result["stats"]["processes"] if p["pid"] in result["pids"]]
    assert (
        sorted((p["state"], p["received"], p["lost"], p["dropped"]) for p in children)
        == [("exited", 500, 0, 0)] * 3
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines.count(f"{result['main']} celery.main INFO main ready") == 1
    made = sorted(line.split(" ", 3)[3] for line in lines if " proj.tasks INFO " in line)
    assert made == sorted(f"child {n} record {i}" for n in range(3) for i in range(500))
    assert len(lines) == 1 + 1500
