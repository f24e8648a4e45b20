"""celery with ``worker_pool_start_method = "spawn"``: children that billiard starts as fresh interpreters
re-import the app module, run ``install`` there, and join the worker's manager through the address it
published in the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _celery_worker import celery_worker, stop, wait_for_line
from _need import need_module

TESTS = str(Path(__file__).resolve().parent)


@pytest.mark.timeout(150)
def test_spawned_pool_children_deliver_every_record_once(tmp_path):
    """4 tasks on spawned children: each task's 40 records arrive once with its id; every child
    flushed before it left ('exited', nothing lost)."""
    need_module("celery", "celery (the test extra)")
    from _celery_app import FOLDER_ENV, make_app

    client, _ = make_app(str(tmp_path))
    env = {FOLDER_ENV: str(tmp_path), "LOGFUNNEL_CELERY_START_METHOD": "spawn"}
    with celery_worker("_celery_app", TESTS, str(tmp_path), env) as worker:
        assert wait_for_line(tmp_path / "worker.log", " ready.", 60, worker), (
            tmp_path / "stderr.txt"
        ).read_text()
        sent = [(f"s{i}", client.send_task("log_records", args=(f"s{i}", 40))) for i in range(4)]
        tasks = [(tag, result.id, result.get(timeout=60, interval=0.05)) for tag, result in sent]
        assert stop(worker) == []
        main = worker.pid
    lines = [
        line.split("|", 5)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.count("|") >= 5
    ]
    for tag, task_id, pid in tasks:
        mine = [f for f in lines if f[5].endswith(f" of {tag}")]
        assert sorted(int(f[5].split()[1]) for f in mine) == list(range(40))
        assert {(int(f[0]), f[1], f[2]) for f in mine} == {(pid, "log_records", task_id)}
    stats = json.loads((tmp_path / "stats.json").read_text())
    children = [p for p in stats["processes"] if p["ppid"] == main]
    assert len(children) >= 2
    assert all((p["state"], p["lost"], p["dropped"]) == ("exited", 0, 0) for p in children), children
    assert {p["name"].split("-")[0] for p in children} == {"SpawnPoolWorker"}
