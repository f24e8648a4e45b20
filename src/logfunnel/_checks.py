"""Checks of what users pass to the public entry points, made in the caller before anything starts.

Each check takes the value and the *caller* as users wrote it (``"start_listener()"``,
``"LogManager()"``), and returns the value in the form the machinery wants, or raises a
``TypeError``/``ValueError`` that names the caller, says what was expected and what arrived, and
what to do. They run before a socket, a folder or a process exists, so a mistake costs nothing
to undo and its traceback points at the user's own line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from ._transport import check_unix_path, non_loopback, parse_address

__all__ = ["check_address", "check_count", "check_handlers", "check_level", "check_seconds", "describe"]


def check_handlers(handlers: object, caller: str) -> list[logging.Handler]:
    """None (no handlers: []) or an iterable of ``logging.Handler`` instances, as a new list."""
    if handlers is None:
        return []
    if isinstance(handlers, logging.Handler):
        raise TypeError(
            f"{caller} expected a list of logging.Handler objects for handlers, "
            f"got a single {type(handlers).__name__}: pass [handler]"
        )
    expected = f"{caller} expected a list of logging.Handler objects for handlers"
    if isinstance(handlers, (str, bytes, bytearray)):
        raise TypeError(f"{expected}, got {type(handlers).__name__!r}")
    try:
        items: list[logging.Handler] = list(handlers)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{expected}, got {type(handlers).__name__!r}") from None
    for position, item in enumerate(items):
        if isinstance(item, logging.Handler):
            continue
        if isinstance(item, type) and issubclass(item, logging.Handler):
            raise TypeError(
                f"{caller} expected logging.Handler objects in handlers, got the class {item.__name__} "
                f"at position {position}: pass an instance, {item.__name__}(...)"
            )
        raise TypeError(
            f"{caller} expected logging.Handler objects in handlers, "
            f"got {type(item).__name__!r} at position {position}"
        )
    return items


def _level_names() -> dict[str, int]:
    # logging.getLevelNamesMapping() is new in 3.11; the dict behind it is what addLevelName updates.
    return dict(logging._nameToLevel)  # noqa: SLF001  (3.10 has no public way to read it)


def check_level(level: object, caller: str) -> int:
    """An int, or a level name registered with ``logging`` (custom ones too), as an int."""
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(
            f"{caller} expected a level as an int or a name such as 'INFO', got {type(level).__name__!r}"
        )
    if isinstance(level, int):
        return level
    names = _level_names()
    if level in names:
        return names[level]
    # One name per level, the one records show (WARNING, not WARN), highest first.
    known = ", ".join(logging.getLevelName(value) for value in sorted(set(names.values()), reverse=True))
    hint = f"; did you mean {level.upper()!r}?" if level.upper() in names else ""
    raise ValueError(f"{caller} got an unknown level {level!r} (expected an int or one of {known}){hint}")


def _describe(hosts: list[str]) -> str:
    return ", ".join(
        f"{host}, every interface" if ipaddress.ip_address(host).is_unspecified else host for host in hosts
    )


def check_address(address: object, caller: str, allow_remote: object = False) -> str | None:
    """None (a private socket) or an address that can be bound: ``unix:/path`` in an existing folder,
    within the length a Unix socket allows, or ``tcp://HOST:PORT`` on loopback (127.0.0.0/8 or ::1,
    names such as ``localhost`` resolved), or beyond loopback with *allow_remote* True."""
    if not isinstance(allow_remote, bool):
        raise TypeError(
            f"{caller} expected allow_remote as True or False, got {type(allow_remote).__name__!r}"
        )
    if address is None:
        return None
    if not isinstance(address, str):
        raise TypeError(
            f"{caller} expected address as a string like 'unix:/path' or 'tcp://127.0.0.1:PORT' "
            f"(or None for a private socket), got {type(address).__name__!r}"
        )
    try:
        family, sockaddr = parse_address(address)
    except ValueError as exc:
        raise ValueError(f"{caller} {exc}") from None  # parse_address's messages start "expected"
    if family == socket.AF_UNIX:
        try:
            check_unix_path(address, sockaddr)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"{caller} got {exc}") from None
        return address
    try:
        outside = non_loopback(family, sockaddr)
    except (OSError, UnicodeError) as exc:
        raise ValueError(
            f"{caller} got address={address!r}, whose host {sockaddr[0]!r} does not resolve ({exc})"
        ) from None
    if outside and not allow_remote:
        # The README promises loopback; 0.0.0.0 would open the port to the network without a word.
        raise ValueError(
            f"{caller} got address={address!r}, which is not loopback ({_describe(outside)}): "
            "records and the handshake would travel unencrypted, and anyone who can reach the port "
            "could try the auth key; listen on 'tcp://127.0.0.1:PORT' or a Unix socket, "
            "or pass allow_remote=True to listen there anyway"
        )
    return address


def describe(value: object) -> str:
    """A short description of *value* for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_count(value: object, caller: str, option: str, low: int = 1, high: int | None = None) -> int:
    """*value* as an int from *low* (to *high*); bools are refused, as they are ints by accident."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f">= {low}" if high is None else f"from {low} to {high:,}"
        raise ValueError(f"{caller} expected {option} as an int {bounds}, got {describe(value)}")
    return value


def check_seconds(value: object, caller: str, option: str, *, zero: bool = False) -> float:
    """*value* as a number of seconds, > 0 (or >= 0 with *zero*); bools are refused."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value >= 0 if zero else value > 0)  # NaN fails both
    ):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{caller} expected {option} as a number of seconds {bound}, got {describe(value)}")
    return float(value)
