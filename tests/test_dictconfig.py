"""dictConfig declares the funnel: ``logfunnel.config.funnel`` (every version) and its options."""

from __future__ import annotations

import json
import logging
import logging.config
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import logfunnel
import logfunnel.config
from _workers import Collect, log_records

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
LINE = "%(processName)s %(name)s %(levelname)s %(message)s"

# A program that configures logging with a dictConfig given as JSON, logs from the parent and from a
# Pool's workers, and returns from main: whatever the funnel had must be in the files by then.
PROGRAM = textwrap.dedent(
    """
    import json, logging, logging.config, multiprocessing, os, sys
    import logfunnel

    def work(i):
        logging.getLogger("app.work").info("item %d", i)
        logging.getLogger("app.work").debug("below the root's level %d", i)

    def join_by_dictconfig():
        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"funnel": {"()": "logfunnel.config.worker_handler"}},
            "root": {"level": "INFO", "handlers": ["funnel"]},
        })

    def main():
        spec = json.loads(sys.argv[1])
        multiprocessing.set_start_method(spec["start"])
        logging.config.dictConfig(spec["config"])
        print(json.dumps({"address": os.environ.get("LOGFUNNEL_ADDRESS")}), flush=True)
        for i in range(spec["parent"]):
            logging.getLogger("app.main").info("parent %d", i)
        if spec["items"]:
            init = {"install": logfunnel.install_worker_logging, "dictconfig": join_by_dictconfig}.get(
                spec["initializer"]
            )
            with multiprocessing.Pool(2, initializer=init) as pool:
                pool.map(work, range(spec["items"]), chunksize=1)

    if __name__ == "__main__":
        main()
    """
)


def program_env() -> dict[str, str]:
    """The environment for a program of a test: it imports the logfunnel under test, from any folder."""
    source = str(Path(logfunnel.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}


def run_script(script: Path, *args: str) -> str:
    """Run *script* in its own process group; return its stdout. On a timeout, kill the whole group."""
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=program_env(),
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"{script.name} did not finish within 60 s") from None
    assert process.returncode == 0, err
    assert "logfunnel" not in err, err  # no banner: nothing lost, nothing refused
    return out


def run_program(
    tmp_path: Path, config: dict, *, start="fork", parent=3, items=40, initializer: str | None = "install"
) -> dict:
    """Run PROGRAM with *config*; return what it printed (the funnel's address)."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    spec = {"config": config, "start": start, "parent": parent, "items": items, "initializer": initializer}
    out = run_script(script, json.dumps(spec))
    return dict(json.loads(out.splitlines()[0]))


def funnel_config(path: Path, **funnel: object) -> dict:
    """A dictConfig: a file handler owned by a funnel on the root (at INFO)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LINE}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "line"},
            "funnel": {"()": "logfunnel.config.funnel", "handlers": ["file"], **funnel},
        },
        "root": {"level": "INFO", "handlers": ["funnel"]},
    }


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def assert_once(path: Path, parent: int, items: int) -> None:
    """Every record of the program is in *path* exactly once, and nothing else is."""
    got = lines(path)
    assert len(got) == len(set(got)) == parent + items, got[:5]
    messages = sorted(line.split(" INFO ", 1)[1] for line in got)
    assert messages == sorted([f"parent {i}" for i in range(parent)] + [f"item {i}" for i in range(items)])


@pytest.fixture
def configure():
    """Apply a dictConfig in this process; afterwards, stop every funnel it made and close its handlers."""
    made: list[logging.Handler] = []

    def apply(config: dict) -> None:
        before = set(logging._handlers.values())
        logging.config.dictConfig(config)
        made.extend(h for h in logging._handlers.values() if h not in before)

    yield apply
    for handler in reversed(made):
        listener = getattr(handler, "listener", None)
        if isinstance(listener, logfunnel.LogListener) or getattr(listener, "_thread", None) is not None:
            listener.stop()  # (3.12's QueueListener.stop fails when it is not running)
        handler.close()
    for name in ("app", "app.work", "app.main", "test.worker"):
        logging.getLogger(name).handlers.clear()


# -- Pool workers through a dictConfig-declared funnel ------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_records_arrive_once(tmp_path, start):
    """Records of a Pool's workers and of the parent arrive exactly once; DEBUG stays below the root's."""
    path = tmp_path / "app.log"
    run_program(tmp_path, funnel_config(path), start=start)
    assert_once(path, parent=3, items=40)


@pytest.mark.timeout(90)
def test_fork_workers_need_no_initializer(tmp_path):
    """Fork children inherit the funnel handler, which rebuilds its connection: their records arrive once."""
    path = tmp_path / "app.log"
    run_program(tmp_path, funnel_config(path), initializer=None)
    assert_once(path, parent=3, items=40)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_workers_joining_by_their_own_dictconfig(tmp_path, start):
    """Pool workers whose initializer is a dictConfig with worker_handler deliver every record once."""
    path = tmp_path / "app.log"
    run_program(tmp_path, funnel_config(path), start=start, initializer="dictconfig")
    assert_once(path, parent=3, items=40)


@pytest.mark.timeout(90)
def test_listener_stops_at_exit_with_every_record(tmp_path):
    """A program that logs and returns from main finds every record in the file; the socket is removed."""
    path = tmp_path / "app.log"
    printed = run_program(tmp_path, funnel_config(path), parent=5000, items=0)
    assert_once(path, parent=5000, items=0)
    assert printed["address"].startswith("unix:")
    assert not os.path.exists(printed["address"].removeprefix("unix:"))


@pytest.mark.timeout(90)
def test_manager_funnel_delivers_pool_records(tmp_path):
    """With manager=True the listener is a LogManager process: records arrive once, it stops at exit."""
    path = tmp_path / "app.log"
    run_program(tmp_path, funnel_config(path, manager=True))
    assert_once(path, parent=3, items=40)


@pytest.mark.timeout(90)
def test_disable_existing_loggers_holds_for_workers(tmp_path):
    """A logger that existed before the dictConfig is disabled in the parent and in spawned workers."""
    script = tmp_path / "program.py"
    path = tmp_path / "app.log"
    config = funnel_config(path)
    config["disable_existing_loggers"] = True
    script.write_text(
        textwrap.dedent(
            f"""
            import logging, logging.config, multiprocessing
            import logfunnel

            def work(i):
                logging.getLogger("old").warning("old %d", i)
                logging.getLogger("new").warning("new %d", i)

            if __name__ == "__main__":
                multiprocessing.set_start_method("spawn")
                logging.getLogger("old")  # exists before the configuration: disabled by it
                logging.config.dictConfig({config!r})
                logging.getLogger("old").warning("old parent")
                with multiprocessing.Pool(1, initializer=logfunnel.install_worker_logging) as pool:
                    pool.map(work, range(4))
            """
        )
    )
    run_script(script)
    got = lines(path)
    assert all(re.fullmatch(r"SpawnPoolWorker-\d+ new WARNING new \d", line) for line in got), got
    assert sorted(line[-1] for line in got) == ["0", "1", "2", "3"]


# -- in this process: levels, filters, formatters, names -----------------------------------------------


def test_owned_handler_named_after_the_funnel_is_made_first(configure, tmp_path):
    """A handler named after the funnel in sort order is made for it once, with formatter, level, filter."""
    path = tmp_path / "z.log"
    configure(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"short": {"format": "%(levelname)s:%(message)s"}},
            "filters": {"only_app": {"name": "app"}},
            "handlers": {
                "funnel": {"()": "logfunnel.config.funnel", "handlers": ["zfile"]},
                "zfile": {
                    "class": "logging.FileHandler",
                    "filename": str(path),
                    "formatter": "short",
                    "level": "WARNING",
                    "filters": ["only_app"],
                },
            },
            "root": {"level": "DEBUG", "handlers": ["funnel"]},
        }
    )
    funnel = logfunnel.config.funnel_handler("funnel")
    zfile = logging._handlers["zfile"]
    assert funnel.listener.owned == [zfile]
    logging.getLogger("app").info("info")
    logging.getLogger("app").warning("warning")
    logging.getLogger("other").error("other")
    funnel.listener.stop()
    assert lines(path) == ["WARNING:warning"]


@pytest.mark.parametrize("respect", [True, False])
def test_respect_handler_level(configure, tmp_path, respect):
    """respect_handler_level True honours the owned handlers' levels; False gives them every record."""
    path = tmp_path / "app.log"
    config = funnel_config(path, respect_handler_level=respect)
    config["handlers"]["file"]["level"] = "WARNING"
    configure(config)
    logging.getLogger("app").info("info")
    logging.getLogger("app").warning("warning")
    logfunnel.config.funnel_handler().listener.stop()
    assert [line.split(" ", 2)[2] for line in lines(path)] == (
        ["WARNING warning"] if respect else ["INFO info", "WARNING warning"]
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("manager", [False, True], ids=["thread", "manager"])
def test_funnel_level_holds_for_worker_records(configure, tmp_path, manager):
    """The funnel handler's own level drops a spawned worker's records below it, even from a worker at
    DEBUG, whether the listener is a thread or a LogManager process (manager: true)."""
    path = tmp_path / "app.log"
    config = funnel_config(path, manager=manager)
    config["handlers"]["funnel"]["level"] = "WARNING"
    configure(config)
    funnel = logfunnel.config.funnel_handler()
    # Spawned: a forked worker would also inherit the parent's funnel handler, level and all.
    process = SPAWN.Process(target=_log_two_levels, args=(funnel.queue,))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    funnel.listener.stop()
    assert [line.split(" ", 1)[1] for line in lines(path)] == ["app WARNING warning"]
    stats = funnel.listener.stats()
    # The worker asked for DEBUG itself, so its INFO record travels; the listener skips it.
    assert (stats["received"], stats["dropped"], stats["lost"]) == (2, 0, 0)


def _log_two_levels(queue) -> None:
    logfunnel.install_worker_logging(queue, level=logging.DEBUG)
    logging.getLogger("app").info("info")
    logging.getLogger("app").warning("warning")


@pytest.mark.timeout(60)
def test_spawned_worker_records_arrive_once(configure, tmp_path):
    """A spawned worker given handler.queue delivers every record once; the stats add up."""
    path = tmp_path / "app.log"
    configure(funnel_config(path))
    funnel = logfunnel.config.funnel_handler()
    process = SPAWN.Process(target=log_records, args=("s", 200, funnel.queue))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    funnel.listener.stop()
    got = lines(path)
    assert sorted(line.split(" INFO ", 1)[1] for line in got) == sorted(f"w=s i={i}" for i in range(200))
    stats = funnel.listener.stats()
    assert (stats["received"], stats["dropped"], stats["lost"]) == (200, 0, 0)


def test_second_dictconfig_stops_the_first_listener(configure, tmp_path):
    """A later dictConfig closes the funnel: its listener drains, stops and withdraws its address."""
    path = tmp_path / "app.log"
    configure(funnel_config(path))
    funnel = logfunnel.config.funnel_handler()
    address = funnel.listener.address
    assert os.environ["LOGFUNNEL_ADDRESS"] == address
    logging.getLogger("app").info("before")
    configure({"version": 1, "disable_existing_loggers": False, "root": {"handlers": []}})
    assert funnel.listener._state == "stopped"
    assert [line.split(" ", 1)[1] for line in lines(path)] == ["app INFO before"]
    assert os.environ.get("LOGFUNNEL_ADDRESS") != address
    assert not os.path.exists(address.removeprefix("unix:"))


def test_incremental_config_keeps_the_listener(configure, tmp_path):
    """An incremental dictConfig changes levels and leaves the funnel running."""
    path = tmp_path / "app.log"
    configure(funnel_config(path))
    funnel = logfunnel.config.funnel_handler()
    configure({"version": 1, "incremental": True, "root": {"level": "WARNING"}})
    assert funnel.listener._state == "running"
    logging.getLogger("app").info("dropped by the new root level")
    logging.getLogger("app").warning("kept")
    funnel.listener.stop()
    assert [line.split(" ", 1)[1] for line in lines(path)] == ["app WARNING kept"]


def test_owned_handler_also_on_a_logger_is_reported(configure, tmp_path, capfd):
    """A handler owned by the funnel and also on a logger is named on stderr (its lines are doubled)."""
    path = tmp_path / "app.log"
    config = funnel_config(path)
    config["loggers"] = {"app": {"handlers": ["file"]}}
    configure(config)
    logging.getLogger("app").warning("twice")
    logfunnel.config.funnel_handler().listener.stop()
    err = capfd.readouterr().err
    assert "handlers.funnel: handler 'file' belongs to the funnel and is also on logger 'app'" in err


def test_lanes_from_the_configuration(configure, tmp_path):
    """lanes puts a named handler on a lane with its options, and marks another inline."""
    config = funnel_config(tmp_path / "app.log")
    config["handlers"]["slow"] = {"()": Collect}
    config["handlers"]["fast"] = {"()": Collect}
    config["handlers"]["funnel"].update(
        handlers=["file", "slow", "fast"],
        lanes={
            "slow": {"capacity": 7, "when_full": "drop_oldest", "retry": {"give_up_after": 0}},
            "fast": "inline",
        },
    )
    configure(config)
    funnel = logfunnel.config.funnel_handler()
    logging.getLogger("app").warning("to all three")
    funnel.listener.stop()
    (lane,) = funnel.listener.stats()["lanes"]
    assert (lane["name"], lane["handled"]) == ("slow", 1)
    assert [h.__class__.__name__ for h in funnel.listener.handlers] == ["FileHandler", "Lane", "Collect"]
    assert funnel.listener.handlers[1].capacity == 7
    fast = funnel.listener.owned[2]
    assert [r.getMessage() for r in fast.records] == ["to all three"]


# -- the worker side --------------------------------------------------------------------------------


def _worker_with_dictconfig() -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"funnel": {"()": "logfunnel.config.worker_handler"}},
            "root": {"level": "INFO", "handlers": ["funnel"]},
        }
    )
    logging.getLogger("app").debug("below the worker's level")
    logging.getLogger("app").info("from the worker's own dictConfig")


def test_worker_dictconfig_sends_to_the_funnel(configure, tmp_path):
    """A worker's own dictConfig with config.worker_handler reaches the listener by LOGFUNNEL_ADDRESS."""
    path = tmp_path / "app.log"
    config = funnel_config(path)
    config["root"]["level"] = "DEBUG"
    configure(config)
    process = SPAWN.Process(target=_worker_with_dictconfig)
    process.start()
    process.join(30)
    assert process.exitcode == 0
    funnel = logfunnel.config.funnel_handler()
    funnel.listener.stop()
    assert [line.split(" ", 1)[1] for line in lines(path)] == ["app INFO from the worker's own dictConfig"]


# -- errors name the key ------------------------------------------------------------------------------


def test_unknown_handler_name_names_the_key(configure, tmp_path):
    """A name that is not a handler of the configuration is refused, naming handlers.funnel.handlers."""
    config = funnel_config(tmp_path / "app.log")
    config["handlers"]["funnel"]["handlers"] = ["file", "nope"]
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(config)
    assert str(caught.value.__cause__) == (
        "handlers.funnel.handlers: no handler named 'nope' in this configuration (it has file, funnel); "
        "add it under 'handlers' or fix the name"
    )


def test_bad_lane_option_names_the_key(configure, tmp_path):
    """An unknown lane option is refused, naming handlers.funnel.lanes.file."""
    config = funnel_config(tmp_path / "app.log", lanes={"file": {"speed": 3}})
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(config)
    assert str(caught.value.__cause__) == (
        "handlers.funnel.lanes.file: unknown lane options ['speed']; "
        "expected block_timeout, capacity, drain_timeout, name, retry, when_full"
    )


def test_lane_for_a_handler_the_funnel_does_not_own(configure, tmp_path):
    """lanes naming a handler outside the funnel's handlers is refused, naming the key."""
    config = funnel_config(tmp_path / "app.log", lanes={"web": "lane"})
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(config)
    assert str(caught.value.__cause__) == (
        "handlers.funnel.lanes.web: not one of the funnel's handlers (file); "
        "list it under handlers or remove it"
    )


def test_funnel_handler_lookup_says_what_it_found():
    """funnel_handler() with no funnel configured says none is running and how to make one."""
    with pytest.raises(LookupError, match=r"found 0 running \(none\); configure one with"):
        logfunnel.config.funnel_handler("missing")


def test_funnel_without_handlers_is_refused(configure, tmp_path):
    """A funnel that owns no handler is refused: it would route records back into itself."""
    config = funnel_config(tmp_path / "app.log")
    config["handlers"]["funnel"]["handlers"] = []
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(config)
    assert str(caught.value.__cause__).startswith(
        "handlers.funnel: expected the names of the handlers the funnel owns under 'handlers', got none;"
    )


def test_manager_without_respect_handler_level_is_refused(configure, tmp_path):
    """manager: true with respect_handler_level: false is refused, naming the key."""
    config = funnel_config(tmp_path / "app.log", manager=True, respect_handler_level=False)
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(config)
    assert str(caught.value.__cause__).startswith(
        "handlers.funnel.respect_handler_level: a LogManager always respects its handlers' levels;"
    )
