"""Addresses, the picklable queue handle, and the handshake that opens a worker's connection.

Each worker process opens its own connection to the listener (never a shared pipe: a process killed
while it holds a shared pipe's lock hangs every other writer). A connection starts with a mutual
HMAC-SHA256 challenge over the auth key that the handle carries::

    listener -> worker   GREETING + challenge (32 bytes)
    worker   -> listener HMAC(key, challenge) + own challenge (32 bytes) + hello (MessagePack)
    listener -> worker   HMAC(key, worker's challenge) + plan (MessagePack)

The listener checks the digest before it decodes anything the worker sent. The plan tells the
worker which lines to render and whether whole records are wanted (see ``_wire``).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import os
import shutil
import socket
import stat
import string
import sys
import tempfile
from typing import Any

from . import _wire
from ._handling import banner

__all__ = [
    "ADDRESS_ENV",
    "AUTHKEY_ENV",
    "GREETING",
    "AuthenticationError",
    "QueueHandle",
    "answer",
    "authkey_from_environment",
    "check_unix_path",
    "connect",
    "create_server",
    "non_loopback",
    "parse_address",
    "publish",
    "recv_frame",
    "withdraw",
]

ADDRESS_ENV = "LOGFUNNEL_ADDRESS"
AUTHKEY_ENV = "LOGFUNNEL_AUTHKEY"
COUNTS_ENV = "LOGFUNNEL_COUNTS"  # the listener's folder for workers' count files (see _counts)
GREETING = b"logfunnel/1 "
CHALLENGE_SIZE = 32
DIGEST_SIZE = 32
HANDSHAKE_TIMEOUT = 10.0
_HANDSHAKE_FRAME_LIMIT = 1024 * 1024
# The longest path a Unix socket can bind: sun_path is 108 bytes on Linux, 104 on the BSDs and macOS,
# and both count the terminating NUL.
MAX_UNIX_PATH = 107 if sys.platform.startswith("linux") else 103


class AuthenticationError(ConnectionError):
    """The peer did not prove that it knows the auth key."""


def answer(authkey: bytes, challenge: bytes) -> bytes:
    """The digest that proves knowledge of *authkey* for *challenge*."""
    return hmac.new(authkey, challenge, hashlib.sha256).digest()


def parse_address(address: str) -> tuple[socket.AddressFamily, Any]:
    """Split ``unix:/path`` or ``tcp://host:port`` into a socket family and a socket address."""
    if not isinstance(address, str):
        raise TypeError(
            f"a logfunnel address is a string such as 'unix:/path', got {type(address).__name__!r}"
        )
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ValueError(f"expected 'unix:/path/to/socket', got {address!r}")
        return socket.AF_UNIX, path
    if address.startswith("tcp://"):
        host, sep, port = address[len("tcp://") :].rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"expected 'tcp://HOST:PORT', got {address!r}")
        if int(port) > 65535:
            raise ValueError(f"expected a port from 0 to 65535 in 'tcp://HOST:PORT', got {address!r}")
        if host.startswith("[") and host.endswith("]"):
            return socket.AF_INET6, (host[1:-1], int(port))
        return socket.AF_INET, (host, int(port))
    raise ValueError(f"expected an address like 'unix:/path' or 'tcp://127.0.0.1:PORT', got {address!r}")


def check_unix_path(address: str, path: str) -> None:
    """Refuse a socket path that cannot be bound, naming it: a missing folder, a folder that is a
    file, or a path longer than a Unix socket allows (bind's own errors do not name the path)."""
    folder = os.path.dirname(path) or "."
    if not os.path.exists(folder):
        raise FileNotFoundError(
            f"address={address!r}: the folder {folder} does not exist "
            "(create it first, or leave address=None for a private socket)"
        )
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"address={address!r}: {folder} is not a folder")
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH:
        raise ValueError(
            f"address={address!r}: the socket path is {size} bytes long, and a Unix socket allows "
            f"{MAX_UNIX_PATH} (choose a shorter path, e.g. under /tmp)"
        )


def non_loopback(family: socket.AddressFamily, sockaddr: Any) -> list[str]:
    """The addresses that a TCP *sockaddr* resolves to (``localhost`` too) outside 127.0.0.0/8 and
    ::1; an empty list for loopback and for Unix sockets. A name that does not resolve is an OSError
    (``socket.gaierror``)."""
    if family == socket.AF_UNIX:
        return []
    found = socket.getaddrinfo(sockaddr[0], sockaddr[1], family, socket.SOCK_STREAM)
    outside = []
    for *_, resolved in found:
        host = str(resolved[0]).partition("%")[0]  # an IPv6 scope (fe80::1%eth0)
        ip = ipaddress.ip_address(host)
        mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
            outside.append(host)
    return sorted(set(outside))


def remote_warning(address: str) -> str:
    return (
        f"listening at {address}, beyond loopback (allow_remote=True): records and the handshake travel "
        "unencrypted, and anyone who can reach the port can try the auth key; "
        "keep the port behind a firewall, or listen on 'tcp://127.0.0.1:PORT' or a Unix socket"
    )


def format_address(family: socket.AddressFamily, sockaddr: Any) -> str:
    if family == socket.AF_UNIX:
        return f"unix:{sockaddr}"
    host, port = sockaddr[0], sockaddr[1]
    return f"tcp://[{host}]:{port}" if family == socket.AF_INET6 else f"tcp://{host}:{port}"


class QueueHandle:
    """What a worker needs to reach a listener: its address and auth key. Small and picklable.

    Pass it through ``Pool(initializer=install_worker_logging, initargs=(handle,))``, as an argument
    of ``ProcessPoolExecutor.submit`` or to a spawned ``Process``; each process that uses it opens its
    own connection.
    """

    __slots__ = ("address", "authkey", "counts")

    def __init__(self, address: str, authkey: bytes, counts: str | None = None) -> None:
        parse_address(address)
        if not isinstance(authkey, bytes) or not authkey:
            raise TypeError("authkey must be non-empty bytes")
        if counts is not None and not isinstance(counts, str):
            raise TypeError(f"counts must be a folder path or None, got {type(counts).__name__!r}")
        self.address = address
        self.authkey = authkey
        # The folder (mode 0700, made by the listener) where each worker keeps its count file. A
        # handle made from an address alone finds it beside a private socket; otherwise None, and
        # its workers keep no count file.
        if counts is None:
            counts = _counts_beside(address) or counts_from_environment(address)
        self.counts = counts

    @classmethod
    def from_environment(cls) -> QueueHandle | None:
        """The handle that a running listener published for its children, if any."""
        address = os.environ.get(ADDRESS_ENV)
        if not address:
            return None
        key = authkey_from_environment()
        if key is None:
            return None
        return cls(address, key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (QueueHandle, (self.address, self.authkey, self.counts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QueueHandle):
            return NotImplemented
        # The address and the key name a listener; the count folder is only where its workers count.
        return self.address == other.address and hmac.compare_digest(self.authkey, other.authkey)

    def __hash__(self) -> int:
        return hash(self.address)

    def __repr__(self) -> str:
        return f"QueueHandle({self.address!r})"  # the key stays out of logs


def _counts_beside(address: str) -> str | None:
    """The count folder of a listener whose socket is in a private folder (``create_server``):
    ``counts`` next to ``listener.sock``, if it is a folder of this user that only this user can use."""
    if not address.startswith("unix:") or os.path.basename(address) != "listener.sock":
        return None
    return _private_folder(os.path.join(os.path.dirname(address[len("unix:") :]), "counts"))


def _private_folder(folder: str) -> str | None:
    """*folder* if it is a folder of this user that only this user can use, else None."""
    try:
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    return folder


def authkey_from_environment() -> bytes | None:
    """The auth key in ``LOGFUNNEL_AUTHKEY`` (hex), None if unset; a ValueError naming the variable,
    and showing no more than the first two characters of its value, if it is not hex."""
    value = os.environ.get(AUTHKEY_ENV, "")
    if not value.strip():
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        pass
    allowed = set(string.hexdigits + string.whitespace)
    position = next((i for i, char in enumerate(value) if char not in allowed), None)
    problem = "an odd number of hex digits" if position is None else f"a non-hex character at {position}"
    shown = value[: min(2, len(value) // 2)] + "…"  # the key is a secret: never print it whole
    raise ValueError(
        f"{AUTHKEY_ENV} must hold the listener's auth key as hex, got {shown!r} ({len(value)} characters, "
        f"{problem}); set it to the listener's queue.authkey.hex(), or unset it"
    )


Saved = tuple[str | None, ...]
_PUBLISHED = (ADDRESS_ENV, AUTHKEY_ENV, COUNTS_ENV)


def publish(handle: QueueHandle) -> Saved:
    """Name *handle* in the environment, for child processes; return what was there before."""
    saved = tuple(os.environ.get(name) for name in _PUBLISHED)
    os.environ[ADDRESS_ENV] = handle.address
    os.environ[AUTHKEY_ENV] = handle.authkey.hex()
    if handle.counts:
        os.environ[COUNTS_ENV] = handle.counts
    else:
        os.environ.pop(COUNTS_ENV, None)
    return saved


def counts_from_environment(address: str) -> str | None:
    """The count folder that the listener published with *address*, if it is a private folder of ours."""
    folder = os.environ.get(COUNTS_ENV)
    if not folder or os.environ.get(ADDRESS_ENV) != address:
        return None
    return _private_folder(folder)


def withdraw(address: str | None, saved: Saved | None) -> None:
    """Put back what ``publish`` replaced, unless someone has published another address since."""
    if saved is None or os.environ.get(ADDRESS_ENV) != address:
        return
    for name, value in zip(_PUBLISHED, saved):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def create_server(address: str | None, allow_remote: bool = False) -> tuple[socket.socket, str, str | None]:
    """Bind and listen; return the socket, its address string, and a private directory to remove.

    A TCP address outside loopback is refused with a ValueError unless *allow_remote*; with it,
    a banner warns that the port is open to whoever can reach it (DESIGN rule 9)."""
    private_dir = None
    if address is None:
        private_dir = tempfile.mkdtemp(prefix="logfunnel-")  # mode 0700
        address = f"unix:{os.path.join(private_dir, 'listener.sock')}"
    try:
        family, sockaddr = parse_address(address)
        if family == socket.AF_UNIX:
            check_unix_path(address, sockaddr)
            _remove_stale_socket(sockaddr)
        sock = socket.socket(family, socket.SOCK_STREAM)
    except BaseException:
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)
        raise
    try:
        try:
            if family == socket.AF_UNIX:
                old_umask = os.umask(0o177)  # the socket file is created 0600
                try:
                    sock.bind(sockaddr)
                finally:
                    os.umask(old_umask)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
            if family != socket.AF_UNIX:
                # What was bound, not what was asked: the caller checked the name, but a name can
                # resolve differently a moment later.
                outside = non_loopback(family, sock.getsockname())
                if outside and not allow_remote:
                    raise ValueError(
                        f"refused to listen at {address}: it is not a loopback address ({outside[0]}); "
                        "pass allow_remote=True to listen there anyway"
                    )
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            # bind() says "Address already in use" or "Permission denied" without saying where.
            message = f"could not listen at {address}: {exc.strerror or exc}"
            raise (type(exc)(exc.errno, message) if exc.errno else type(exc)(message)) from exc
    except BaseException:
        sock.close()
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)
        raise
    bound = format_address(family, sock.getsockname())
    if family != socket.AF_UNIX and allow_remote and non_loopback(family, sock.getsockname()):
        banner(remote_warning(bound))
    return sock, bound, private_dir


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a listener that died (a restart reuses its address); refuse to
    take over one that still answers."""
    if not os.path.exists(path):
        return
    if not stat.S_ISSOCK(os.stat(path).st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError:
        return  # let bind() report it
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"a listener is already running at unix:{path}")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the listener closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int = _HANDSHAKE_FRAME_LIMIT) -> bytes:
    (size,) = _wire.HEADER.unpack(_recv_exact(sock, _wire.HEADER.size))
    if size > limit:
        raise ConnectionError(f"handshake frame of {size} bytes exceeds {limit}")
    return _recv_exact(sock, size)


def connect(
    handle: QueueHandle, hello: tuple[Any, ...], timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[socket.socket, Any]:
    """Open and authenticate a connection; return it (blocking, no timeout) and the listener's plan."""
    family, sockaddr = parse_address(handle.address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        greeting = recv_frame(sock)
        if not greeting.startswith(GREETING) or len(greeting) != len(GREETING) + CHALLENGE_SIZE:
            raise ConnectionError(f"{handle.address} is not a logfunnel listener")
        own_challenge = os.urandom(CHALLENGE_SIZE)
        reply = answer(handle.authkey, greeting[len(GREETING) :]) + own_challenge + _wire.encode(hello)
        sock.sendall(_wire.frame(reply))
        welcome = recv_frame(sock)
        if not hmac.compare_digest(welcome[:DIGEST_SIZE], answer(handle.authkey, own_challenge)):
            raise AuthenticationError(f"the listener at {handle.address} did not prove it knows the auth key")
        plan = _wire.decode(welcome[DIGEST_SIZE:])
        # Arrays arrive as lists; a formatter spec is a tuple.
        if type(plan) is dict and type(plan.get("formats")) is list:
            plan["formats"] = [tuple(spec) if type(spec) is list else spec for spec in plan["formats"]]
        sock.settimeout(None)
        return sock, plan
    except BaseException:
        sock.close()
        raise
