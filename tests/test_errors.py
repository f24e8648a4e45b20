"""Unit tests for ``logfunnel._checks``: the messages users get for wrong handlers, levels and addresses."""

from __future__ import annotations

import logging
import os
import re

import pytest

from logfunnel._checks import check_address, check_handlers, check_level
from logfunnel._transport import MAX_UNIX_PATH

CALLER = "start_listener()"


STANDARD_LEVELS = {"CRITICAL": 50, "ERROR": 40, "WARNING": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}


@pytest.fixture(autouse=True)
def standard_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the standard level names (other tests register their own in this process), restored after."""
    monkeypatch.setattr(logging, "_levelToName", {v: k for k, v in STANDARD_LEVELS.items()})
    monkeypatch.setattr(logging, "_nameToLevel", dict(STANDARD_LEVELS, WARN=30, FATAL=50))


@pytest.fixture
def custom_level() -> int:
    """A level named VERBOSE (15), registered for the test (standard_levels removes it afterwards)."""
    logging.addLevelName(15, "VERBOSE")
    return 15


# -- check_handlers -----------------------------------------------------------------------------------


def test_check_handlers_none_is_an_empty_list() -> None:
    """None means no handlers: an empty list."""
    assert check_handlers(None, CALLER) == []


def test_check_handlers_takes_any_iterable_of_handlers() -> None:
    """A generator or a tuple of handlers becomes a list, in order."""
    first, second = logging.NullHandler(), logging.StreamHandler()
    assert check_handlers((h for h in (first, second)), CALLER) == [first, second]
    assert check_handlers((first,), CALLER) == [first]


def test_single_handler_for_handlers_is_a_type_error_saying_pass_a_list() -> None:
    """handlers=StreamHandler() (a common slip) says to pass [handler]."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected a list of logging\.Handler objects for handlers, "
        r"got a single StreamHandler: pass \[handler\]$",
    ):
        check_handlers(logging.StreamHandler(), CALLER)


def test_non_handler_in_handlers_names_its_type_and_position() -> None:
    """An item that is not a Handler is named by type and position."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected logging\.Handler objects in handlers, got 'str' at position 1$",
    ):
        check_handlers([logging.NullHandler(), "app.log"], CALLER)


def test_string_for_handlers_is_not_an_iterable_of_handlers() -> None:
    """handlers='app.log' is refused as a whole, not character by character."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected a list of logging\.Handler objects for handlers, got 'str'$",
    ):
        check_handlers("app.log", CALLER)


def test_non_iterable_for_handlers_names_its_type() -> None:
    """handlers=5 names the type that arrived."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected a list of logging\.Handler objects for handlers, got 'int'$",
    ):
        check_handlers(5, CALLER)


def test_handler_class_in_handlers_says_pass_an_instance() -> None:
    """[StreamHandler] (the class, not an instance) says to call it."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected logging\.Handler objects in handlers, got the class "
        r"StreamHandler at position 0: pass an instance, StreamHandler\(\.\.\.\)$",
    ):
        check_handlers([logging.StreamHandler], CALLER)


# -- check_level --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "expected"), [(0, 0), (25, 25), ("INFO", 20), ("WARN", 30), ("NOTSET", 0)])
def test_check_level_takes_ints_and_level_names(level: int | str, expected: int) -> None:
    """Ints pass as they are; names, aliases included, become their numbers, as logging's own do."""
    assert check_level(level, CALLER) == expected


def test_check_level_takes_a_registered_custom_level_name(custom_level: int) -> None:
    """A name registered with logging.addLevelName() is a level like any other."""
    assert check_level("VERBOSE", CALLER) == custom_level


def test_unknown_level_name_lists_the_known_names() -> None:
    """An unknown name is a ValueError naming the caller and every level name, highest first."""
    with pytest.raises(
        ValueError,
        match=r"^install_worker_logging\(\) got an unknown level 'VERBOSE' "
        r"\(expected an int or one of CRITICAL, ERROR, WARNING, INFO, DEBUG, NOTSET\)$",
    ):
        check_level("VERBOSE", "install_worker_logging()")


def test_unknown_level_name_lists_custom_names_too(custom_level: int) -> None:
    """Registered custom names appear among the known ones, in their place."""
    with pytest.raises(
        ValueError, match=r"\(expected an int or one of CRITICAL, ERROR, WARNING, INFO, VERBOSE, DEBUG"
    ):
        check_level("LOUD", CALLER)


def test_lowercase_level_name_suggests_the_registered_one() -> None:
    """'info' is not a level name (as in logging), and the message offers 'INFO'."""
    with pytest.raises(
        ValueError, match=r"^start_listener\(\) got an unknown level 'info' \(.*\); did you mean 'INFO'\?$"
    ):
        check_level("info", CALLER)


@pytest.mark.parametrize(("level", "kind"), [(2.5, "float"), (None, "NoneType"), (True, "bool")])
def test_level_of_a_wrong_type_is_a_type_error(level: object, kind: str) -> None:
    """A float, None or a bool is a TypeError naming the type."""
    with pytest.raises(
        TypeError,
        match=rf"^start_listener\(\) expected a level as an int or a name such as 'INFO', got '{kind}'$",
    ):
        check_level(level, CALLER)


# -- check_address ------------------------------------------------------------------------------------


def test_check_address_none_means_a_private_socket() -> None:
    """None passes as None (the listener makes a private socket)."""
    assert check_address(None, CALLER) is None


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "tcp://[::1]:5000", "unix:relative.sock"])
def test_check_address_returns_a_usable_address_unchanged(address: str) -> None:
    """A well-formed TCP address, or a Unix path in an existing folder, comes back as it was."""
    assert check_address(address, CALLER) == address


def test_unix_address_in_a_missing_folder_names_the_path_and_the_folder() -> None:
    """A socket in a folder that does not exist fails before anything is bound, naming both."""
    with pytest.raises(
        FileNotFoundError,
        match=r"^LogManager\(\) got address='unix:/missing/dir/x\.sock': the folder /missing/dir does not "
        r"exist \(create it first, or leave address=None for a private socket\)$",
    ):
        check_address("unix:/missing/dir/x.sock", "LogManager()")


def test_unix_address_under_a_file_is_not_a_directory_error(short_dir: str) -> None:
    """A socket 'inside' a regular file names the file that is not a folder."""
    path = os.path.join(short_dir, "file")
    open(path, "w").close()
    with pytest.raises(
        NotADirectoryError,
        match=rf"^start_listener\(\) got address='unix:{re.escape(path)}/x\.sock': "
        rf"{re.escape(path)} is not a folder$",
    ):
        check_address(f"unix:{path}/x.sock", CALLER)


def test_unix_address_too_long_for_a_socket_names_the_limit(short_dir: str) -> None:
    """A path longer than a Unix socket allows fails here, not as bind()'s 'AF_UNIX path too long'."""
    address = f"unix:{short_dir}/{'s' * 120}.sock"
    size = len(address) - len("unix:")
    with pytest.raises(
        ValueError,
        match=rf"^start_listener\(\) got address='unix:.*': the socket path is {size} bytes long, and a Unix "
        rf"socket allows {MAX_UNIX_PATH} \(choose a shorter path, e\.g\. under /tmp\)$",
    ):
        check_address(address, CALLER)


def test_malformed_address_names_the_caller_and_the_expected_form() -> None:
    """'bogus' is a ValueError that shows the caller and the forms an address takes."""
    with pytest.raises(
        ValueError,
        match=r"^LogManager\(\) expected an address like 'unix:/path' or 'tcp://127\.0\.0\.1:PORT', "
        r"got 'bogus'$",
    ):
        check_address("bogus", "LogManager()")


def test_non_string_address_names_its_type() -> None:
    """A number or bytes as address is a TypeError naming the type."""
    with pytest.raises(
        TypeError,
        match=r"^start_listener\(\) expected address as a string like 'unix:/path' or "
        r"'tcp://127\.0\.0\.1:PORT' \(or None for a private socket\), got 'bytes'$",
    ):
        check_address(b"unix:/tmp/x.sock", CALLER)
