"""Where the receiver listens: ``"host:port"`` parsed (``parse_host_port``), then bound (``_bind``),
on loopback only unless the caller allows more.

Kept apart from the receiver so that a config file's addresses (``_configfile``) can be checked
without loading the receiver and its decoder.
"""

from __future__ import annotations

import socket

from ._handling import banner
from ._transport import non_loopback

__all__ = ["parse_host_port"]


def parse_host_port(
    value: object, option: str, caller: str, allow_remote: bool
) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6; port 0 for any free one) as a family and address,
    refused unless on loopback or *allow_remote*."""
    if not isinstance(value, str):
        raise TypeError(
            f"{caller} expected {option} as a string like '127.0.0.1:9020', got {type(value).__name__!r}"
        )
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"{caller} expected {option} like '127.0.0.1:9020' (port 0 for any free one), got {value!r}"
        )
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    try:
        outside = non_loopback(family, (host, int(port)))
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"{caller} got {option}={value!r}, whose host does not resolve ({exc})") from None
    if outside and not allow_remote:
        raise ValueError(
            f"{caller} got {option}={value!r}, which is not loopback ({', '.join(outside)}): anyone who can "
            "reach the port could send records, unauthenticated and unencrypted; use '127.0.0.1:PORT', "
            "or pass allow_remote=True to listen there anyway"
        )
    return family, (host, int(port))


def _bind(
    family: socket.AddressFamily, address: tuple[str, int], kind: int, option: str, allow_remote: bool
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        outside = non_loopback(family, sock.getsockname())  # what was bound, not what was asked
        if outside and not allow_remote:
            raise ValueError(f"refused to receive at {option}: it is not a loopback address ({outside[0]})")
        if kind == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise type(exc)(
            exc.errno, f"could not receive at {option}={address!r}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise
    if outside:
        banner(f"receiving records at {option}={sock.getsockname()[:2]}, beyond loopback (allow_remote=True)")
    return sock
