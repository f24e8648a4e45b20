"""The user's own logging configuration decides: levels, filters, propagate, inherited handlers."""

from __future__ import annotations

import gc
import logging
import logging.config
import multiprocessing
import os
import queue
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import logfunnel
from _routing_workers import explicit_then_log, levels_seen, log_db, log_every_level, log_mix
from _workers import Collect

METHODS = ["fork", "spawn", "forkserver"]
LINE = "%(name)s %(levelname)s %(message)s"


@pytest.fixture
def restore_loggers():
    """Put back the level, handlers, propagate and disabled flag of every logger a test configures."""
    root = logging.getLogger()
    before = {
        name: (logger.level, logger.handlers[:], logger.propagate, logger.disabled, logger.filters[:])
        for name, logger in root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    for name, logger in list(root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if handler not in before.get(name, (0, []))[1]:
                handler.close()
        level, handlers, propagate, disabled, filters = before.get(
            name, (logging.NOTSET, [], True, False, [])
        )
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled
        logger.filters[:] = filters


def _config(path: Path, **extra_loggers: dict) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LINE}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "line"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "loggers": {"noisy.lib": {"level": "WARNING"}, **extra_loggers},
    }


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _expected_mix(workers: int) -> list[str]:
    return sorted(f"app INFO info {w}" for w in range(workers))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_manager_config_levels_are_those_of_one_process(method, tmp_path, restore_loggers):
    """LogManager(config=...): root INFO and noisy.lib WARNING let 3 of 9 lines through, as in one process."""
    path = tmp_path / "app.log"
    with logfunnel.LogManager(config=_config(path), start_method=method) as manager:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(3, initializer=logfunnel.install_worker_logging, initargs=(manager.queue,)) as pool:
            pool.map(log_mix, range(3))
            pool.close()
            pool.join()
    assert sorted(_lines(path)) == _expected_mix(3)
    assert manager.stats()["received"] == 3  # the workers never made the six records it would discard


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_parent_dictconfig_levels_hold_through_start_listener(method, tmp_path, restore_loggers):
    """A parent's dictConfig + start_listener() (handlers=None): no DEBUG line although workers log one."""
    path = tmp_path / "app.log"
    logging.config.dictConfig(_config(path))
    with logfunnel.start_listener() as listener:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(3, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)) as pool:
            pool.map(log_mix, range(3))
            pool.close()
            pool.join()
    logging.getLogger().handlers[0].flush()
    assert sorted(_lines(path)) == _expected_mix(3)
    assert listener.stats()["received"] == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_workers_learn_the_listener_levels_when_they_connect(method, tmp_path, restore_loggers):
    """A worker's effective levels are the listener configuration's, before its first record."""
    logging.config.dictConfig(_config(tmp_path / "app.log", **{"app.deep": {"level": "ERROR"}}))
    with logfunnel.start_listener() as listener:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(1, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)) as pool:
            seen = pool.apply(levels_seen, (["", "noisy.lib", "noisy.lib.sub", "app", "app.deep"],))
    assert seen == {
        "": logging.INFO,
        "noisy.lib": logging.WARNING,
        "noisy.lib.sub": logging.WARNING,
        "app": logging.INFO,
        "app.deep": logging.ERROR,
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_level_set_by_worker_code_wins_in_the_worker(method, tmp_path, restore_loggers):
    """A level the worker's own code set is kept: its WARNING is never made, its ERROR arrives."""
    logging.config.dictConfig(_config(tmp_path / "app.log", app={"level": "DEBUG"}))
    with logfunnel.start_listener() as listener:
        process = multiprocessing.get_context(method).Process(
            target=explicit_then_log, args=(listener.queue,)
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    logging.getLogger().handlers[0].flush()
    assert _lines(tmp_path / "app.log") == ["app ERROR at the worker's own level"]
    assert listener.stats()["received"] == 1


@pytest.mark.timeout(60)
def test_explicit_install_level_is_kept_and_the_listener_still_decides(tmp_path, restore_loggers):
    """install_worker_logging(level=DEBUG) ships DEBUG records; a listener at INFO still discards them."""
    logging.config.dictConfig(_config(tmp_path / "app.log"))

    def child(handle):
        logfunnel.install_worker_logging(handle, level=logging.DEBUG)
        assert logging.getLogger().level == logging.DEBUG
        log_mix(0)

    with logfunnel.start_listener() as listener:
        process = multiprocessing.get_context("fork").Process(target=child, args=(listener.queue,))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    logging.getLogger().handlers[0].flush()
    assert _lines(tmp_path / "app.log") == ["app INFO info 0"]
    assert listener.stats()["received"] == 2  # app DEBUG was made and shipped; the listener discarded it


@pytest.mark.timeout(60)
def test_inherited_propagate_false_handler_does_not_write_every_line_twice(tmp_path, restore_loggers):
    """Fork workers inherit app.db's own FileHandler (propagate False): db.log still gets each line once."""
    db = tmp_path / "db.log"
    config = _config(tmp_path / "root.log")
    config["handlers"]["db"] = {"class": "logging.FileHandler", "filename": str(db), "formatter": "line"}
    config["loggers"]["app.db"] = {"handlers": ["db"], "propagate": False}
    logging.config.dictConfig(config)
    with logfunnel.start_listener() as listener:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)) as pool:
            pool.starmap(log_db, [(0, 5), (1, 5)])
            pool.close()
            pool.join()
    logging.getLogger("app.db").handlers[0].flush()
    assert sorted(_lines(db)) == sorted(f"app.db INFO w={w} i={i}" for w in range(2) for i in range(5))
    assert _lines(tmp_path / "root.log") == []  # propagate False holds at the listener
    assert listener.stats()["received"] == 10  # every line went through the funnel, none around it


class _NoSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "secret" not in record.getMessage()


def _configure_everything() -> tuple[Collect, Collect]:
    """A configuration that uses each thing a listener must honour: filters, disabled, propagate, levels."""
    root_sink, quiet_sink = Collect(logging.INFO), Collect(logging.ERROR)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(root_sink)
    logging.getLogger("filtered").addFilter(_NoSecrets())
    logging.getLogger("off").disabled = True
    quiet = logging.getLogger("quiet")
    quiet.propagate = False
    quiet.addHandler(quiet_sink)
    logging.getLogger("high").setLevel(logging.WARNING)
    return root_sink, quiet_sink


def _calls() -> None:
    for name in ("filtered", "off", "off.child", "quiet", "high", "plain"):
        log = logging.getLogger(name)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            log.log(level, "%s %s", name, logging.getLevelName(level))
        log.warning("%s secret", name)


def _messages(sink: Collect) -> list[str]:
    return sorted(r.getMessage() for r in sink.records)


@pytest.mark.timeout(60)
def test_routed_records_are_handled_exactly_as_in_one_process(restore_loggers):
    """Filters, disabled loggers, propagate False and handler levels give what one process gives."""
    root_sink, quiet_sink = _configure_everything()
    _calls()
    expected = _messages(root_sink), _messages(quiet_sink)
    root_sink.records.clear()
    quiet_sink.records.clear()

    def child(handle):
        logfunnel.install_worker_logging(handle)
        _calls()

    with logfunnel.start_listener() as listener:
        process = multiprocessing.get_context("fork").Process(target=child, args=(listener.queue,))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    assert (_messages(root_sink), _messages(quiet_sink)) == expected
    assert "off ERROR" not in expected[0] and "filtered secret" not in expected[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_handler_levels_decide_a_worker_root_level_with_explicit_handlers(method):
    """With handlers=[...] at WARNING, workers never make the DEBUG and INFO records nobody would take."""
    sink = Collect(logging.WARNING)
    with logfunnel.start_listener(handlers=[sink]) as listener:
        process = multiprocessing.get_context(method).Process(
            target=log_every_level, args=(listener.queue, "app")
        )
        process.start()
        process.join(30)
        assert process.exitcode == 0
    assert [r.getMessage() for r in sink.records] == ["app at WARNING", "app at ERROR"]
    assert listener.stats()["received"] == 2


def test_uninstall_gives_back_the_handlers_install_took(restore_loggers):
    """uninstall_worker_logging() puts back each logger's handlers and propagate flag."""
    sink = Collect()
    db = logging.getLogger("app.db")
    db.addHandler(sink)
    db.propagate = False
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as listener:
        logfunnel.install_worker_logging(listener.queue)
        assert db.handlers == [] and db.propagate
        logfunnel.uninstall_worker_logging()
    assert db.handlers == [sink] and not db.propagate


# -- the listener's own resources -------------------------------------------------------------------


def test_never_started_queue_listener_leaks_no_socket():
    """A LogListener over a queue that is never started (3.12's dictConfig makes those) leaks nothing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        listener = logfunnel.LogListener(queue.Queue(), logging.NullHandler())
        del listener
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_never_started_listener_leaves_no_temporary_folder():
    """A socket listener that is never started or stopped removes its folder when it goes."""
    listener = logfunnel.LogListener(None, logging.NullHandler())
    folder = os.path.dirname(listener.address.removeprefix("unix:"))
    assert os.path.isdir(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del listener
        gc.collect()
    assert not os.path.exists(folder)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_failed_start_leaves_no_temporary_folder(monkeypatch):
    """start() that fails closes the socket and removes the folder before the error reaches the caller."""
    listener = logfunnel.LogListener(None, logging.NullHandler())
    folder = os.path.dirname(listener.address.removeprefix("unix:"))

    def broken() -> None:
        raise RuntimeError("no plan")

    monkeypatch.setattr(listener, "_plan_dispatch", broken)
    with pytest.raises(RuntimeError, match=r"^no plan$"):
        listener.start()
    assert not os.path.exists(folder)


def _run_script(source: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    paths = [os.path.dirname(logfunnel.__path__[0]), os.path.dirname(__file__)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    env.pop("LOGFUNNEL_ADDRESS", None)
    env.pop("LOGFUNNEL_AUTHKEY", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.mark.timeout(90)
def test_listener_left_running_drains_and_cleans_up_at_exit(tmp_path):
    """A script that never stops its listener still gets every record written and leaves no folder."""
    path = tmp_path / "left.log"
    result = _run_script(f"""
        import logging, multiprocessing, os
        import logfunnel
        from _workers import log_records

        handler = logging.FileHandler({str(path)!r})
        handler.setFormatter(logging.Formatter("%(process)d %(processName)s %(levelname)s %(message)s"))
        listener = logfunnel.start_listener(handlers=[handler])
        print(os.path.dirname(listener.address.removeprefix("unix:")))
        fork = multiprocessing.get_context("fork")
        process = fork.Process(target=log_records, args=(0, 2000, listener.queue))
        process.start()
        process.join(30)
    """)
    assert result.returncode == 0, result.stderr
    assert len(_lines(path)) == 2000
    assert not os.path.exists(result.stdout.strip())


@pytest.mark.timeout(60)
def test_typo_address_is_reported_at_install_and_error_does_not_wait():
    """A wrong address says so on stderr at install, and error() then does not wait out block_timeout."""
    result = _run_script(
        """
        import logging, os
        os.environ["LOGFUNNEL_AUTHKEY"] = "ab" * 16
        import logfunnel
        logfunnel.install_worker_logging("unix:/nonexistent/x.sock", block_timeout=600)
        logging.getLogger("app").info("lost in the void")
        logging.getLogger("app").error("said out loud")
        print("done")
    """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "cannot reach the log listener at unix:/nonexistent/x.sock" in result.stderr


@pytest.mark.timeout(60)
def test_listener_without_any_handler_says_what_it_discards():
    """start_listener() with no handlers and an unconfigured root logger says so once on stderr."""
    result = _run_script("""
        import logfunnel
        logfunnel.start_listener().stop()
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("the root logger has none") == 1
    assert "below WARNING are discarded" in result.stderr
