"""install_worker_logging and FunnelHandler in the worker's own process."""

from __future__ import annotations

import logging
import multiprocessing
import signal

import pytest

import logfunnel
from logfunnel.worker import FunnelHandler


@pytest.fixture
def listener():
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as running:
        yield running


def test_install_replaces_inherited_root_handlers(listener):
    """Handlers a worker inherited would write every line a second time: they are removed, not closed."""
    inherited = logging.StreamHandler()
    logging.getLogger().addHandler(inherited)
    handler = logfunnel.install_worker_logging(listener.queue)
    assert logging.getLogger().handlers == [handler]
    assert inherited.stream is not None


def test_install_is_idempotent_for_the_same_queue(listener):
    """A Pool initializer and every task may call it; the same handler comes back."""
    first = logfunnel.install_worker_logging(listener.queue)
    assert logfunnel.install_worker_logging(listener.queue) is first
    assert logfunnel.install_worker_logging(listener) is first  # the listener itself stands for its queue
    assert logging.getLogger().handlers == [first]


def test_install_sets_the_root_level(listener):
    """The root logger's level becomes the one asked for (NOTSET by default: the listener decides)."""
    logging.getLogger().setLevel(logging.WARNING)
    logfunnel.install_worker_logging(listener.queue)
    assert logging.getLogger().level == logging.NOTSET
    logfunnel.install_worker_logging(listener.queue, level="ERROR")
    assert logging.getLogger().level == logging.ERROR


def test_install_by_address_string_uses_the_environment_key(listener):
    """An address string joins the listener when LOGFUNNEL_AUTHKEY holds its key."""
    handler = logfunnel.install_worker_logging(listener.address)
    assert handler.queue == listener.queue


def test_install_with_nothing_uses_the_published_address(listener):
    """With no argument, LOGFUNNEL_ADDRESS (set by the running listener) is joined."""
    assert logfunnel.install_worker_logging().queue == listener.queue


def test_install_with_nothing_and_no_listener_says_what_to_do(monkeypatch):
    """No queue and no LOGFUNNEL_ADDRESS: a TypeError that says how to fix it."""
    monkeypatch.delenv("LOGFUNNEL_ADDRESS", raising=False)
    with pytest.raises(TypeError, match=r"^install_worker_logging\(\) needs a queue: none was given"):
        logfunnel.install_worker_logging()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_full": "wait"}, r"^on_full must be 'block' or 'drop', got 'wait'$"),
        ({"capacity": 0}, r"^capacity must be at least 1, got 0$"),
    ],
)
def test_bad_options_are_refused(listener, kwargs, message):
    """Options are checked when the handler is made, with a message that names the option."""
    with pytest.raises(ValueError, match=message):
        logfunnel.install_worker_logging(listener.queue, **kwargs)


def test_bad_address_is_refused():
    """A malformed address string says which forms are accepted."""
    with pytest.raises(ValueError, match=r"^expected an address like 'unix:/path' or 'tcp://127.0.0.1:PORT'"):
        logfunnel.install_worker_logging("http://example.invalid")


@pytest.mark.parametrize(
    "make", [lambda: multiprocessing.get_context("spawn").Queue(), lambda: __import__("queue").Queue()]
)
def test_existing_queues_are_accepted(make):
    """multiprocessing queues (and a thread queue) work as they do with QueueHandler."""
    handler = logfunnel.install_worker_logging(make())
    assert isinstance(handler, FunnelHandler)


def test_uninstall_flushes_and_removes(funnel):
    """uninstall_worker_logging() ships what is buffered and takes the handler off the root."""
    logfunnel.install_worker_logging(funnel.queue)
    for i in range(100):
        logging.getLogger("u").info("r %d", i)
    logfunnel.uninstall_worker_logging()
    assert not any(isinstance(h, FunnelHandler) for h in logging.getLogger().handlers)
    funnel.wait_for(lambda records: len(records) == 100)
    assert funnel.messages == [f"r {i}" for i in range(100)]
    assert funnel.stats()["received"] == 100


def test_flush_returns_true_once_everything_is_sent(listener):
    """flush_worker_logging() reports whether everything buffered reached the socket."""
    logfunnel.install_worker_logging(listener.queue)
    logging.getLogger("f").info("one")
    assert logfunnel.flush_worker_logging(5) is True


def test_sigterm_handler_is_installed_only_over_the_default():
    """The flush-on-SIGTERM hook never replaces a handler the application set (gunicorn, celery)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with logfunnel.start_listener(handlers=[logging.NullHandler()]) as running:
            logfunnel.install_worker_logging(running.queue)
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            logfunnel.uninstall_worker_logging()
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

            def custom(signum, frame):
                pass

            signal.signal(signal.SIGTERM, custom)
            logfunnel.install_worker_logging(running.queue)
            assert signal.getsignal(signal.SIGTERM) is custom
            logfunnel.uninstall_worker_logging()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_socket_path_merges_the_message_now_and_keeps_exc_text_apart():
    """The socket path merges the message at once (args mutated later cannot change it), exc_text apart."""
    from logfunnel.worker import _merge

    args = {"n": 1}
    record = logging.LogRecord("p", logging.INFO, __file__, 1, "value %(n)s", (args,), None)
    prepared = _merge(record)
    args["n"] = 2
    assert prepared.message == "value 1"
    try:
        raise RuntimeError("x")
    except RuntimeError:
        import sys

        record = logging.LogRecord("p", logging.ERROR, __file__, 1, "e", None, sys.exc_info())
    merged = _merge(record)
    assert (merged.message, merged.exc_text.endswith("RuntimeError: x")) == ("e", True)


@pytest.mark.timeout(20)
def test_sigterm_handler_during_own_write_does_not_deadlock():
    """A SIGTERM flush that interrupts this thread's own write (exit finalizers saying goodbye) returns
    instead of waiting forever for the send lock that the interrupted write holds."""
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as listener:
        handler = logfunnel.install_worker_logging(listener.queue)
        logging.getLogger("app").warning("connected and sent")
        assert logfunnel.flush_worker_logging(5)
        sink = handler._sink
        with sink._send_lock:  # as if the signal arrived inside _send(), below the handler
            sink._in_send = True
            try:
                sink._say_goodbye()  # what the SIGTERM handler's close() ends with
                assert not sink._send(b"x")
            finally:
                sink._in_send = False
        logfunnel.uninstall_worker_logging()
