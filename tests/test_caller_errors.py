"""The listener's and the worker's entry points refuse bad arguments clearly, before changing anything."""

from __future__ import annotations

import logging
import os

import pytest

import logfunnel


def test_start_listener_with_a_string_handler_names_it():
    """start_listener(handlers=["x"]) is a TypeError naming the item, not an AttributeError on .formatter."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected logging\.Handler objects in handlers, got 'str' at position 0$",
    ):
        logfunnel.start_listener(handlers=["x"])


def test_start_listener_with_a_single_handler_says_pass_a_list():
    """start_listener(handlers=StreamHandler()) says to pass a list, not a TypeError about '*'."""
    with pytest.raises(TypeError, match=r"got a single StreamHandler: pass \[handler\]$"):
        logfunnel.start_listener(handlers=logging.StreamHandler())


def test_listener_constructor_checks_its_handlers_too():
    """LogListener(None, "x") is refused before a socket or folder exists."""
    with pytest.raises(TypeError, match=r"^LogListener\(\) expected logging\.Handler objects in handlers"):
        logfunnel.LogListener(None, "x")  # type: ignore[arg-type]


def test_listener_in_a_missing_folder_names_the_path(tmp_path):
    """address='unix:/missing/dir/x.sock' names the path and the missing folder."""
    missing = tmp_path / "missing" / "dir"
    with pytest.raises(
        FileNotFoundError, match=rf"address='unix:{missing}/x\.sock': the folder {missing} does"
    ):
        logfunnel.start_listener(handlers=[logging.NullHandler()], address=f"unix:{missing}/x.sock")


def test_listener_with_an_unknown_level_is_a_value_error():
    """start_listener(level="VERBOSE") lists the known level names."""
    with pytest.raises(
        ValueError, match=r"^start_listener\(\) got an unknown level 'VERBOSE' \(expected an int"
    ):
        logfunnel.start_listener(handlers=[logging.NullHandler()], level="VERBOSE")


def test_unknown_install_level_leaves_the_root_handlers_alone():
    """install_worker_logging(q, level="VERBOSE") raises before replacing any handler."""
    root = logging.getLogger()
    sentinel = logging.NullHandler()
    root.addHandler(sentinel)
    with logfunnel.start_listener(handlers=[logging.NullHandler()]) as listener:
        with pytest.raises(ValueError, match=r"^install_worker_logging\(\) got an unknown level 'VERBOSE'"):
            logfunnel.install_worker_logging(listener.queue, level="VERBOSE")
    assert sentinel in root.handlers
    assert not any(isinstance(h, logfunnel.FunnelHandler) for h in root.handlers)


def test_non_hex_authkey_names_the_variable(monkeypatch):
    """Joining by address with a non-hex LOGFUNNEL_AUTHKEY names the variable, without showing the key."""
    monkeypatch.setenv("LOGFUNNEL_AUTHKEY", "not-hex-at-all-secret")
    with pytest.raises(
        ValueError, match=r"^LOGFUNNEL_AUTHKEY must hold the listener's auth key as hex"
    ) as info:
        logfunnel.install_worker_logging("unix:/tmp/x.sock")
    assert "secret" not in str(info.value)
    assert os.environ["LOGFUNNEL_AUTHKEY"] == "not-hex-at-all-secret"


def test_handlers_module_is_reachable_after_import_logfunnel():
    """logfunnel.handlers works after a bare import logfunnel, as the README's block uses it."""
    assert logfunnel.handlers.LockedRotatingFileHandler.__name__ == "LockedRotatingFileHandler"
