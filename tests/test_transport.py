"""Unit tests for ``logfunnel._transport``: addresses, the queue handle, the server socket and the
worker's side of the handshake (against a real listener and against impostors)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import os
import pickle
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dill
import pytest

import logfunnel
from logfunnel import _transport, _wire
from logfunnel._transport import AuthenticationError, QueueHandle, connect, create_server, parse_address

HELLO = (os.getpid(), "test-worker", b"incarnat", os.getppid())


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- parse_address ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("unix:/tmp/x.sock", (socket.AF_UNIX, "/tmp/x.sock")),
        ("unix:relative.sock", (socket.AF_UNIX, "relative.sock")),
        ("tcp://127.0.0.1:5", (socket.AF_INET, ("127.0.0.1", 5))),
        ("tcp://localhost:0", (socket.AF_INET, ("localhost", 0))),
        ("tcp://[::1]:5", (socket.AF_INET6, ("::1", 5))),
        ("tcp://[fe80::1%eth0]:65535", (socket.AF_INET6, ("fe80::1%eth0", 65535))),
    ],
)
def test_parse_address_splits_family_and_socket_address(address: str, expected: tuple[Any, Any]) -> None:
    """unix:PATH and tcp://HOST:PORT (IPv6 in brackets) become a family and a socket address."""
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("unix:", r"^expected 'unix:/path/to/socket', got 'unix:'$"),
        ("tcp://127.0.0.1", r"^expected 'tcp://HOST:PORT', got 'tcp://127\.0\.0\.1'$"),
        ("tcp://:5", r"^expected 'tcp://HOST:PORT', got 'tcp://:5'$"),
        ("tcp://host:port", r"^expected 'tcp://HOST:PORT', got 'tcp://host:port'$"),
        ("tcp://host:-1", r"^expected 'tcp://HOST:PORT', got 'tcp://host:-1'$"),
        ("tcp://[::1]", r"^expected 'tcp://HOST:PORT', got 'tcp://\[::1\]'$"),
        (
            "tcp://127.0.0.1:65536",
            r"^expected a port from 0 to 65535 in 'tcp://HOST:PORT', got 'tcp://127\.0\.0\.1:65536'$",
        ),
        (
            "/tmp/x.sock",
            r"^expected an address like 'unix:/path' or 'tcp://127\.0\.0\.1:PORT', got '/tmp/x\.sock'$",
        ),
        (
            "http://127.0.0.1:80",
            r"^expected an address like 'unix:/path' or 'tcp://127\.0\.0\.1:PORT', got 'http://",
        ),
        ("", r"^expected an address like 'unix:/path' or 'tcp://127\.0\.0\.1:PORT', got ''$"),
    ],
)
def test_parse_address_rejects_malformed_addresses(address: str, message: str) -> None:
    """A malformed address fails at once with a message showing the expected form."""
    with pytest.raises(ValueError, match=message):
        parse_address(address)


@pytest.mark.parametrize(("address", "kind"), [(b"unix:/tmp/x", "bytes"), (None, "NoneType"), (5, "int")])
def test_parse_address_rejects_non_strings(address: Any, kind: str) -> None:
    """Bytes, None or a number as address is a TypeError naming the type."""
    with pytest.raises(
        TypeError, match=rf"^a logfunnel address is a string such as 'unix:/path', got '{kind}'$"
    ):
        parse_address(address)


def test_answer_is_hmac_sha256_of_the_challenge() -> None:
    """answer() is HMAC-SHA256(key, challenge), so other implementations can interoperate."""
    assert _transport.answer(b"key", b"challenge") == hmac.new(b"key", b"challenge", hashlib.sha256).digest()


# -- QueueHandle --------------------------------------------------------------------------------------

KEY = bytes(range(32))
HANDLE = QueueHandle("unix:/tmp/logfunnel-test/listener.sock", KEY)


@pytest.mark.parametrize(
    "dumps_loads",
    [
        lambda h: pickle.loads(pickle.dumps(h)),
        lambda h: pickle.loads(pickle.dumps(h, protocol=0)),
        lambda h: dill.loads(dill.dumps(h)),
        lambda h: dill.loads(dill.dumps(h, recurse=True)),
        copy.copy,
        copy.deepcopy,
    ],
    ids=["pickle", "pickle-protocol-0", "dill", "dill-recurse", "copy", "deepcopy"],
)
def test_queue_handle_survives_pickling(dumps_loads: Callable[[QueueHandle], QueueHandle]) -> None:
    """The handle crosses to spawned workers (pickle, and dill for multiprocess/pathos) intact."""
    clone = dumps_loads(HANDLE)
    assert type(clone) is QueueHandle
    assert clone == HANDLE
    assert (clone.address, clone.authkey) == (HANDLE.address, KEY)


def test_queue_handle_equality_needs_address_and_key() -> None:
    """Handles are equal (and hash alike) only with the same address and the same key."""
    assert QueueHandle(HANDLE.address, bytes(KEY)) == HANDLE
    assert hash(QueueHandle(HANDLE.address, bytes(KEY))) == hash(HANDLE)
    assert QueueHandle(HANDLE.address, b"other key") != HANDLE
    assert QueueHandle("unix:/elsewhere.sock", KEY) != HANDLE
    assert HANDLE.address != HANDLE
    assert (HANDLE.address, KEY) != HANDLE


def test_queue_handle_repr_hides_the_auth_key() -> None:
    """repr() and str() show the address and never the key, so a logged handle leaks nothing."""
    handle = QueueHandle("tcp://127.0.0.1:5000", b"\xde\xad\xbe\xef" * 8)
    assert repr(handle) == "QueueHandle('tcp://127.0.0.1:5000')"
    for text in (repr(handle), str(handle), f"{handle}", repr([handle])):
        assert "deadbeef" not in text and "\\xde" not in text and "dead" not in text.lower()


@pytest.mark.parametrize("authkey", [b"", "text key", None, bytearray(b"k")])
def test_queue_handle_refuses_a_bad_auth_key(authkey: Any) -> None:
    """An empty or non-bytes key is refused when the handle is made, not at the first connection."""
    with pytest.raises(TypeError, match=r"^authkey must be non-empty bytes$"):
        QueueHandle("unix:/tmp/x.sock", authkey)


def test_queue_handle_refuses_a_bad_address() -> None:
    """A handle with a malformed address cannot be made."""
    with pytest.raises(ValueError, match=r"^expected 'tcp://HOST:PORT', got 'tcp://nowhere'$"):
        QueueHandle("tcp://nowhere", KEY)


def test_queue_handle_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOGFUNNEL_ADDRESS and LOGFUNNEL_AUTHKEY (hex) make a handle."""
    monkeypatch.setenv(_transport.ADDRESS_ENV, "tcp://127.0.0.1:4000")
    monkeypatch.setenv(_transport.AUTHKEY_ENV, KEY.hex())
    assert QueueHandle.from_environment() == QueueHandle("tcp://127.0.0.1:4000", KEY)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LOGFUNNEL_ADDRESS": "unix:/tmp/x.sock"},
        {"LOGFUNNEL_AUTHKEY": "00ff"},
        {"LOGFUNNEL_ADDRESS": "", "LOGFUNNEL_AUTHKEY": "00ff"},
    ],
    ids=["neither", "address-only", "key-only", "empty-address"],
)
def test_queue_handle_from_environment_without_a_listener(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """Without both variables there is no handle (None), not an error."""
    monkeypatch.delenv(_transport.ADDRESS_ENV, raising=False)
    monkeypatch.delenv(_transport.AUTHKEY_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert QueueHandle.from_environment() is None


def test_non_hex_authkey_in_the_environment_is_a_value_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A LOGFUNNEL_AUTHKEY that is not hex says which variable is wrong and what it must hold."""
    monkeypatch.setenv(_transport.ADDRESS_ENV, "tcp://127.0.0.1:4000")
    monkeypatch.setenv(_transport.AUTHKEY_ENV, "zz" + KEY.hex())
    with pytest.raises(
        ValueError,
        match=r"^LOGFUNNEL_AUTHKEY must hold the listener's auth key as hex, got 'zz…' \(66 characters, "
        r"a non-hex character at 0\); set it to the listener's queue\.authkey\.hex\(\), or unset it$",
    ):
        QueueHandle.from_environment()


def test_non_hex_authkey_error_does_not_show_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message shows at most the first two characters of a malformed key, never the key."""
    secret = KEY.hex() + "x"
    monkeypatch.setenv(_transport.AUTHKEY_ENV, secret)
    with pytest.raises(ValueError) as caught:
        _transport.authkey_from_environment()
    assert "'00…'" in str(caught.value) and secret[:3] not in str(caught.value)


def test_authkey_of_an_odd_number_of_hex_digits_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key cut short by one digit is reported as odd, not as a bad character."""
    monkeypatch.setenv(_transport.AUTHKEY_ENV, KEY.hex()[:-1])
    with pytest.raises(
        ValueError, match=r"^LOGFUNNEL_AUTHKEY .* \(63 characters, an odd number of hex digits\)"
    ):
        _transport.authkey_from_environment()


def test_authkey_from_environment_reads_hex(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hex key becomes bytes; an unset or blank variable is None."""
    monkeypatch.setenv(_transport.AUTHKEY_ENV, KEY.hex())
    assert _transport.authkey_from_environment() == KEY
    monkeypatch.setenv(_transport.AUTHKEY_ENV, " ")
    assert _transport.authkey_from_environment() is None
    monkeypatch.delenv(_transport.AUTHKEY_ENV)
    assert _transport.authkey_from_environment() is None


@pytest.mark.timeout(30)
def test_a_running_listener_publishes_its_handle_for_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a listener runs, from_environment() returns its handle; after stop() the variables are gone."""
    monkeypatch.delenv(_transport.ADDRESS_ENV, raising=False)
    monkeypatch.delenv(_transport.AUTHKEY_ENV, raising=False)
    listener = logfunnel.start_listener(handlers=[logging.NullHandler()])
    try:
        assert QueueHandle.from_environment() == listener.queue
    finally:
        listener.stop()
    assert QueueHandle.from_environment() is None


# -- create_server ------------------------------------------------------------------------------------


def test_create_server_default_is_a_private_unix_socket() -> None:
    """With no address: a Unix socket of mode 0600 inside a fresh directory of mode 0700."""
    sock, address, private_dir = create_server(None)
    try:
        assert sock.family == socket.AF_UNIX
        assert private_dir is not None
        assert address == f"unix:{os.path.join(private_dir, 'listener.sock')}"
        path = address[len("unix:") :]
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(private_dir).st_mode) == 0o700
        assert os.listdir(private_dir) == ["listener.sock"]
    finally:
        sock.close()
        if private_dir:
            shutil.rmtree(private_dir)


def test_create_server_restores_the_umask() -> None:
    """Binding a Unix socket with a tight umask does not leave that umask on the process."""
    before = os.umask(0o022)
    os.umask(before)
    sock, _, private_dir = create_server(None)
    sock.close()
    shutil.rmtree(private_dir or "", ignore_errors=True)
    after = os.umask(before)
    assert after == before


def test_create_server_at_a_given_unix_path(short_dir: str) -> None:
    """A given unix: path is used as is, also mode 0600, with no private directory to remove."""
    path = os.path.join(short_dir, "l.sock")
    sock, address, private_dir = create_server(f"unix:{path}")
    try:
        assert (address, private_dir) == (f"unix:{path}", None)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()


def test_create_server_refuses_a_path_in_use(short_dir: str) -> None:
    """Binding over an existing socket file fails (the other listener's socket is not stolen)."""
    path = os.path.join(short_dir, "l.sock")
    first, _, _ = create_server(f"unix:{path}")
    try:
        with pytest.raises(OSError, match=r"^\[Errno 98\] a listener is already running at unix:"):
            create_server(f"unix:{path}")
    finally:
        first.close()


def test_create_server_in_a_missing_folder_names_the_path_and_the_folder(short_dir: str) -> None:
    """bind() would say only "No such file or directory"; the error names the address and its folder."""
    address = f"unix:{short_dir}/missing/l.sock"
    with pytest.raises(
        FileNotFoundError,
        match=rf"^address='{re.escape(address)}': the folder {re.escape(short_dir)}/missing does not exist "
        r"\(create it first, or leave address=None for a private socket\)$",
    ):
        create_server(address)


def test_create_server_with_a_socket_path_too_long_names_the_limit(short_dir: str) -> None:
    """bind() would say "AF_UNIX path too long"; the error names the path, its length and the limit."""
    address = f"unix:{short_dir}/{'s' * 120}.sock"
    limit = _transport.MAX_UNIX_PATH
    with pytest.raises(
        ValueError,
        match=rf"^address='unix:.*': the socket path is \d+ bytes long, and a Unix socket allows {limit} ",
    ):
        create_server(address)


def test_create_server_bind_error_names_the_address() -> None:
    """A port already taken: the OSError says where it could not listen, and keeps its errno."""
    taken, address, _ = create_server("tcp://127.0.0.1:0")
    try:
        with pytest.raises(
            OSError, match=rf"^\[Errno 98\] could not listen at {re.escape(address)}: "
        ) as caught:
            create_server(address)
        assert caught.value.errno == 98
    finally:
        taken.close()


def test_create_server_that_fails_removes_its_private_folder(
    short_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private socket that cannot be bound leaves no logfunnel-* folder behind."""
    deep = os.path.join(short_dir, "d" * 100)
    os.mkdir(deep)
    monkeypatch.setattr(tempfile, "tempdir", deep)
    with pytest.raises(ValueError, match=r"^address='unix:.*': the socket path is \d+ bytes long"):
        create_server(None)
    assert os.listdir(deep) == []


def test_create_server_on_tcp_port_zero_reports_the_real_port() -> None:
    """tcp://127.0.0.1:0 binds an ephemeral port and the returned address names it."""
    sock, address, private_dir = create_server("tcp://127.0.0.1:0")
    try:
        port = sock.getsockname()[1]
        assert port != 0
        assert (address, private_dir) == (f"tcp://127.0.0.1:{port}", None)
        assert parse_address(address) == (socket.AF_INET, ("127.0.0.1", port))
    finally:
        sock.close()


def test_create_server_on_ipv6_keeps_the_brackets() -> None:
    """tcp://[::1]:0 gives back an address in brackets that parse_address reads as IPv6."""
    try:
        sock, address, _ = create_server("tcp://[::1]:0")
    except OSError as exc:
        if os.environ.get("CI"):
            raise  # CI machines have an IPv6 loopback: its absence there is a failure, not a skip
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        port = sock.getsockname()[1]
        assert address == f"tcp://[::1]:{port}"
        assert parse_address(address) == (socket.AF_INET6, ("::1", port))
    finally:
        sock.close()


# -- connect, against a real listener ------------------------------------------------------------------


@pytest.fixture(params=[None, "tcp://127.0.0.1:0"], ids=["unix", "tcp"])
def listener(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[logfunnel.LogListener]:
    handler = logging.FileHandler(tmp_path / "out.log")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    started = logfunnel.start_listener(handlers=[handler], level=logging.INFO, address=request.param)
    try:
        yield started
    finally:
        started.stop()
        handler.close()


@pytest.mark.timeout(30)
def test_connect_returns_a_blocking_socket_and_the_plan(listener: logfunnel.LogListener) -> None:
    """A worker with the right key gets the listener's plan: the formats to render, and the level."""
    sock, plan = connect(listener.queue, HELLO)
    try:
        assert sock.gettimeout() is None
        assert plan["level"] == logging.INFO
        assert plan["formats"] == [
            ("%(levelname)s %(message)s", None, "%", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local")
        ]
        assert type(plan["full"]) is bool
    finally:
        sock.close()


@pytest.mark.timeout(30)
def test_connect_registers_the_process(listener: logfunnel.LogListener) -> None:
    """After the handshake the listener knows the process by its hello."""
    sock, _ = connect(listener.queue, HELLO)
    try:
        _wait_for(lambda: len(listener.stats()["processes"]) == 1, "the process to be registered")
        (process,) = listener.stats()["processes"]
        assert (process["pid"], process["name"], process["ppid"], process["state"]) == (
            HELLO[0],
            "test-worker",
            HELLO[3],
            "connected",
        )
    finally:
        sock.close()


@pytest.mark.timeout(30)
def test_connect_with_the_wrong_key_is_refused(listener: logfunnel.LogListener) -> None:
    """A worker with the wrong key gets no plan: the listener hangs up and counts a rejection."""
    impostor = QueueHandle(listener.queue.address, b"not the key")
    with pytest.raises(ConnectionError, match=r"^(the listener closed the connection|\[Errno \d+\] .*)$"):
        connect(impostor, HELLO)
    _wait_for(lambda: listener.stats()["rejected"] == 1, "the rejection to be counted")
    assert listener.stats()["processes"] == []


@pytest.mark.timeout(30)
def test_connect_refuses_a_hello_that_is_not_plain(listener: logfunnel.LogListener) -> None:
    """A hello the listener could not unpickle fails in the worker, before anything is sent."""
    with pytest.raises(ValueError, match=r"^not a plain value: object$"):
        connect(listener.queue, (1, "name", b"x", object()))


def test_connect_without_a_listener_raises_file_not_found(short_dir: str) -> None:
    """No listener at the address: the OSError from connect() reaches the caller."""
    with pytest.raises(FileNotFoundError):
        connect(QueueHandle(f"unix:{os.path.join(short_dir, 'none.sock')}", KEY), HELLO)


# -- connect, against impostors -----------------------------------------------------------------------


class FakeListener:
    """A server socket whose single connection is handled by *serve* in a thread."""

    def __init__(self, directory: str, serve: Callable[[socket.socket], None]) -> None:
        self.address = f"unix:{os.path.join(directory, 'fake.sock')}"
        self.server, _, _ = create_server(self.address)
        self._serve = serve
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            try:
                self._serve(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)


@pytest.fixture
def fake_listener(short_dir: str) -> Iterator[Callable[[Callable[[socket.socket], None]], FakeListener]]:
    made: list[FakeListener] = []

    def make(serve: Callable[[socket.socket], None]) -> FakeListener:
        made.append(FakeListener(short_dir, serve))
        return made[-1]

    try:
        yield make
    finally:
        for fake in made:
            fake.close()


def _wait_for_eof(conn: socket.socket) -> None:
    while conn.recv(4096):
        pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "greeting",
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", _transport.GREETING + b"short", b"logfunnel/2 " + bytes(32)],
    ids=["http", "short-challenge", "other-version"],
)
def test_connect_refuses_a_server_that_is_not_a_listener(
    fake_listener: Callable[..., FakeListener], greeting: bytes
) -> None:
    """A server that does not greet like a logfunnel listener is refused before the key is used."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(_wire.frame(greeting))
        _wait_for_eof(conn)

    fake = fake_listener(serve)
    with pytest.raises(ConnectionError, match=rf"^{fake.address} is not a logfunnel listener$"):
        connect(QueueHandle(fake.address, KEY), HELLO)


@pytest.mark.timeout(30)
def test_connect_refuses_a_listener_that_does_not_know_the_key(
    fake_listener: Callable[..., FakeListener],
) -> None:
    """A server that greets correctly but cannot answer the worker's challenge gets AuthenticationError."""
    received: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        conn.sendall(_wire.frame(_transport.GREETING + os.urandom(32)))
        received.append(_transport.recv_frame(conn))
        plan = {"formats": [], "full": True, "level": 0}
        conn.sendall(_wire.frame(_transport.answer(b"guessed key", received[0][32:64]) + _wire.encode(plan)))
        _wait_for_eof(conn)

    fake = fake_listener(serve)
    with pytest.raises(
        AuthenticationError, match=rf"^the listener at {fake.address} did not prove it knows the auth key$"
    ):
        connect(QueueHandle(fake.address, KEY), HELLO)
    assert _wire.decode(received[0][64:]) == HELLO  # the hello went out after the digest, as documented


@pytest.mark.timeout(30)
def test_connect_refuses_an_oversized_handshake_frame(fake_listener: Callable[..., FakeListener]) -> None:
    """A server announcing a 4 GiB greeting is refused without trying to read (or allocate) it."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(b"\xff\xff\xff\xff")
        _wait_for_eof(conn)

    fake = fake_listener(serve)
    with pytest.raises(ConnectionError, match=r"^handshake frame of 4294967295 bytes exceeds 1048576$"):
        connect(QueueHandle(fake.address, KEY), HELLO)


@pytest.mark.timeout(30)
def test_connect_refuses_a_listener_whose_plan_names_a_global(
    fake_listener: Callable[..., FakeListener], tmp_path: Any
) -> None:
    """Even a server that knows the key cannot make the worker unpickle a global."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    def serve(conn: socket.socket) -> None:
        conn.sendall(_wire.frame(_transport.GREETING + os.urandom(32)))
        reply = _transport.recv_frame(conn)
        conn.sendall(_wire.frame(_transport.answer(KEY, reply[32:64]) + pickle.dumps(Evil())))
        _wait_for_eof(conn)

    fake = fake_listener(serve)
    with pytest.raises(_wire.FrameError, match=r"^undecodable frame \(DecodeError: "):
        connect(QueueHandle(fake.address, KEY), HELLO)
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_connect_gives_up_on_a_silent_server(fake_listener: Callable[..., FakeListener]) -> None:
    """A server that accepts but never greets makes connect() time out instead of hanging."""
    done = threading.Event()
    fake = fake_listener(lambda conn: done.wait(10))
    try:
        with pytest.raises(TimeoutError):
            connect(QueueHandle(fake.address, KEY), HELLO, timeout=0.2)
    finally:
        done.set()
