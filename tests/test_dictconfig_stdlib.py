"""The Python 3.12+ dictConfig form: ``logging.handlers.QueueHandler`` with a logfunnel listener.

On 3.10 and 3.11 the standard library refuses the form; those tests pin the error a user gets.
"""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

import logfunnel
import logfunnel.config
import test_dictconfig
from _workers import Collect
from test_dictconfig import LINE, assert_once, lines, run_program

configure = test_dictconfig.configure  # the fixture: dictConfig in this process, undone afterwards

FORK = multiprocessing.get_context("fork")
NEW = pytest.mark.skipif(sys.version_info < (3, 12), reason="the QueueHandler form needs Python 3.12+")
OLD = pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ accepts the QueueHandler form")


def queue_config(path: Path, **funnel: object) -> dict:
    """A dictConfig: a file handler owned by a QueueHandler whose listener is logfunnel's."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LINE}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "line"},
            "funnel": {
                "class": "logging.handlers.QueueHandler",
                "listener": "logfunnel.config.FunnelListener",
                "handlers": ["file"],
                "respect_handler_level": True,
                **funnel,
            },
        },
        "root": {"level": "INFO", "handlers": ["funnel"]},
    }


@OLD
def test_queue_handler_form_is_refused_before_312(configure, tmp_path):
    """3.10 and 3.11 refuse "listener" and "handlers" on a QueueHandler: the user sees which keyword."""
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(queue_config(tmp_path / "app.log"))
    assert "got an unexpected keyword argument 'listener'" in str(caught.value.__cause__)


@NEW
@pytest.mark.timeout(90)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_records_arrive_once(tmp_path, start):
    """Through the QueueHandler form, a Pool's records and the parent's arrive exactly once."""
    path = tmp_path / "app.log"
    run_program(tmp_path, queue_config(path), start=start)
    assert_once(path, parent=3, items=40)


@NEW
@pytest.mark.timeout(90)
def test_listener_stops_at_exit_with_every_record(tmp_path):
    """The parent's records, queued by the stdlib QueueHandler, are all in the file when the program ends."""
    path = tmp_path / "app.log"
    printed = run_program(tmp_path, queue_config(path), parent=5000, items=0)
    assert_once(path, parent=5000, items=0)
    assert not os.path.exists(printed["address"].removeprefix("unix:"))


@NEW
def test_listener_runs_once_configured(configure, tmp_path):
    """The listener runs as soon as dictConfig returns; start(), as the stdlib documents, changes nothing."""
    configure(queue_config(tmp_path / "app.log"))
    handler = logging.getHandlerByName("funnel")
    assert type(handler) is logging.handlers.QueueHandler
    listener = handler.listener
    assert isinstance(listener, logfunnel.config.FunnelListener)
    assert listener.start() is listener
    assert os.environ["LOGFUNNEL_ADDRESS"] == listener.address


@NEW
def test_cookbook_queue_listener_is_left_unstarted(configure, tmp_path):
    """The same form with the stdlib QueueListener writes nothing until the user starts it (gh-117827)."""
    path = tmp_path / "app.log"
    config = queue_config(path)
    del config["handlers"]["funnel"]["listener"]
    configure(config)
    logging.getLogger("app").warning("waits in the queue")
    handler = logging.getHandlerByName("funnel")
    assert lines(path) == []
    handler.listener.start()
    handler.listener.stop()
    assert lines(path) == ["MainProcess app WARNING waits in the queue"]


@NEW
def test_second_dictconfig_stops_the_listener(configure, tmp_path):
    """A later dictConfig closes the handlers: the listener drains into the file, then stops."""
    path = tmp_path / "app.log"
    configure(queue_config(path))
    listener = logging.getHandlerByName("funnel").listener
    logging.getLogger("app").info("before")
    configure({"version": 1, "disable_existing_loggers": False, "root": {"handlers": []}})
    assert listener._state == "stopped"
    assert lines(path) == ["MainProcess app INFO before"]
    assert not os.path.exists(listener.address.removeprefix("unix:"))


@NEW
def test_respect_handler_level_defaults_to_false_as_in_the_stdlib(configure, tmp_path):
    """Without respect_handler_level the stdlib passes False: the owned handler's level is not consulted."""
    path = tmp_path / "app.log"
    config = queue_config(path)
    del config["handlers"]["funnel"]["respect_handler_level"]
    config["handlers"]["file"]["level"] = "WARNING"
    configure(config)
    listener = logging.getHandlerByName("funnel").listener
    logging.getLogger("app").info("info")
    listener.stop()
    assert lines(path) == ["MainProcess app INFO info"]


@NEW
def test_listener_options_from_the_configuration(configure, tmp_path):
    """ "listener": {"()": "logfunnel.config.listener", ...} gives the listener lanes and a level."""
    config = queue_config(tmp_path / "app.log")
    config["handlers"]["slow"] = {"()": Collect}
    config["handlers"]["funnel"].update(
        handlers=["file", "slow"],
        listener={"()": "logfunnel.config.listener", "lanes": {"slow": {"capacity": 3}}, "level": "WARNING"},
    )
    configure(config)
    listener = logging.getHandlerByName("funnel").listener
    logging.getLogger("app").info("below the listener's level")
    logging.getLogger("app").error("kept")
    listener.stop()
    (lane,) = listener.stats()["lanes"]
    assert (lane["name"], lane["handled"]) == ("slow", 1)
    assert [r.getMessage() for r in listener.owned[1].records] == ["kept"]


@pytest.mark.skipif(sys.version_info[:3] != (3, 12, 1), reason="pinned on 3.12.1, which refuses them")
def test_multiprocessing_queue_is_refused_on_312(configure, tmp_path):
    """3.12.1 refuses a multiprocessing queue under "queue": the user sees "Invalid queue specifier"."""
    config = queue_config(tmp_path / "app.log", queue=FORK.Queue())
    with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
        configure(config)
    assert str(caught.value.__cause__).startswith("Invalid queue specifier <multiprocessing.queues.Queue")


@pytest.mark.skipif(sys.version_info < (3, 13), reason="3.13 accepts multiprocessing queues; 3.12.1 does not")
def test_multiprocessing_queue_is_read_on_313(configure, tmp_path):
    """On 3.13 a multiprocessing queue is accepted: records a fork child puts there arrive once."""
    path = tmp_path / "app.log"
    shared = FORK.Queue()
    configure(queue_config(path, queue=shared))
    listener = logging.getHandlerByName("funnel").listener
    process = FORK.Process(target=_put_records, args=(shared,))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    listener.stop()
    assert sorted(lines(path)) == sorted(f"{process.name} app INFO put {i}" for i in range(50))


def _put_records(shared) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(shared)]  # the cookbook's worker side
    for i in range(50):
        logging.getLogger("app").info("put %d", i)


@NEW
def test_listener_without_handlers_writes_none_and_says_so(configure, tmp_path, capfd):
    """Without "handlers", 3.12 refuses the form; 3.13 lets it through, and the listener (as a
    QueueListener with none) takes the records and writes none, saying so on stderr."""
    config = queue_config(tmp_path / "app.log")
    del config["handlers"]["funnel"]["handlers"]
    if sys.version_info < (3, 13):
        with pytest.raises(ValueError, match=r"^Unable to configure handler 'funnel'$") as caught:
            configure(config)
        assert str(caught.value.__cause__).startswith("No handlers specified for a QueueHandler")
        return
    configure(config)
    listener = logging.getHandlerByName("funnel").listener
    logging.getLogger("app").warning("handled by none")
    listener.stop()
    assert listener.local_queue.empty()
    assert "a FunnelListener with no handlers takes the records and writes none" in capfd.readouterr().err


@NEW
def test_cookbook_form_loses_a_fork_childs_records(configure, tmp_path):
    """Under the stdlib QueueListener, even started, a fork child logs into its copy of the queue: lost."""
    path = tmp_path / "app.log"
    config = queue_config(path)
    del config["handlers"]["funnel"]["listener"]
    configure(config)
    listener = logging.getHandlerByName("funnel").listener
    listener.start()
    process = FORK.Process(target=_log_one, args=("from the child",))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    logging.getLogger("app").warning("from the parent")
    listener.stop()
    assert lines(path) == ["MainProcess app WARNING from the parent"]


@NEW
def test_funnel_listener_gets_a_fork_childs_records(configure, tmp_path):
    """The same fork child under FunnelListener, joining with install_worker_logging(), is delivered."""
    path = tmp_path / "app.log"
    configure(queue_config(path))
    listener = logging.getHandlerByName("funnel").listener
    process = FORK.Process(target=_log_one, args=("from the child",), kwargs={"join": True})
    process.start()
    process.join(30)
    assert process.exitcode == 0
    listener.stop()
    assert lines(path) == [f"{process.name} app WARNING from the child"]


def _log_one(message: str, join: bool = False) -> None:
    if join:
        logfunnel.install_worker_logging()  # finds the listener through LOGFUNNEL_ADDRESS
    logging.getLogger("app").warning(message)
