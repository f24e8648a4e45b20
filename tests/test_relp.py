"""RelpConnection against a real rsyslog (imrelp on a free loopback port) and against fake, hostile
servers."""

from __future__ import annotations

import os
import pickle
import re
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _rsyslog import Rsyslog
from logfunnel.handlers._relp import MAX_RESPONSE, RelpConnection, RelpError

pytestmark = pytest.mark.timeout(90)

OPEN_OK = b"200 OK\nrelp_version=0\nrelp_software=fake,1\ncommands=syslog"


def message(i: int, text: str = "message") -> bytes:
    return b"<14>1 2026-12-01T09:00:00.000001+00:00 host test 4242 - - %s %d" % (text.encode(), i)


class RelpRsyslog(Rsyslog):
    """The shared fixture, with a RELP-over-TLS listener that accepts a client certificate from the CA.

    tests/_rsyslog.py configures imrelp's TLS listener without ``tls.authMode``: librelp then runs in
    fingerprint mode and refuses every client (measured: "non-permited fingerprint" with a client
    certificate, "peer did not provide a certificate" without). ``certvalid`` checks the client's
    certificate against the CA instead."""

    def config(self) -> str:
        text = super().config()
        if "tls.authMode" in text.split("imrelp", 1)[-1]:
            return text  # the fixture chose a mode of its own
        return text.replace('tls="on"', 'tls="on" tls.authMode="certvalid"')


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[RelpRsyslog]:
    """rsyslog with a plain imrelp listener only."""
    server = RelpRsyslog(tmp_path / "rsyslog", tls=False, unix=False)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def rsyslog_tls(tmp_path: Path) -> Iterator[RelpRsyslog]:
    """rsyslog with imrelp over TLS (certificates from trustme)."""
    server = RelpRsyslog(tmp_path / "rsyslog", tls=False, unix=False, relp_tls=True)
    try:
        yield server.start()
    finally:
        server.close()


def raw(server: Rsyslog) -> list[bytes]:
    return [m["raw"].encode("utf-8", "surrogateescape") for m in server.messages()]


# --- a real rsyslog ---------------------------------------------------------------------------------


def test_open_send_close(rsyslog: RelpRsyslog) -> None:
    """Three messages are acknowledged, written by rsyslog, and close() leaves nothing pending."""
    conn = RelpConnection.open(rsyslog.relp_address)
    sent = [message(i) for i in range(3)]
    conn.send(sent)
    assert conn.wait(10)
    assert conn.pending() == []
    conn.close()
    assert [m.encode() for m in (x["raw"] for x in rsyslog.wait_for(3))] == sent
    assert rsyslog.messages()[0]["input"] == "imrelp"


def test_ten_thousand_messages_acknowledged_and_written_in_order(rsyslog: RelpRsyslog) -> None:
    """10,000 messages sent in batches are all acknowledged and all in rsyslog's output, in order."""
    sent = [message(i) for i in range(10_000)]
    with RelpConnection.open(rsyslog.relp_address) as conn:
        for start in range(0, len(sent), 500):
            conn.send(sent[start : start + 500])
        assert conn.wait(30)
        assert conn.pending() == []
    rsyslog.wait_for(len(sent), timeout=30)
    assert raw(rsyslog) == sent


def test_multiline_message_arrives_intact(rsyslog: RelpRsyslog) -> None:
    """A message with line feeds (a traceback) is one message, byte for byte."""
    # not ending in LF: rsyslog drops a trailing LF on reception (parser.dropTrailingLFOnReception)
    text = b'failed\n\nTraceback (most recent call last):\n  File "x.py", line 1\nValueError: no'
    sent = [message(1, "first"), b"<11>1 - host test 1 - - " + text, message(3, "last")]
    with RelpConnection.open(rsyslog.relp_address) as conn:
        conn.send(sent)
        assert conn.wait(10)
    rsyslog.wait_for(3)
    assert raw(rsyslog) == sent


def test_close_collects_outstanding_acknowledgements(rsyslog: RelpRsyslog) -> None:
    """close() without wait(): the server answers close after every message, so nothing stays pending."""
    conn = RelpConnection.open(rsyslog.relp_address)
    conn.send([message(i) for i in range(2000)])
    conn.close()
    assert conn.pending() == []
    assert rsyslog.wait_for(2000, timeout=30)


class _CountingSocket:
    """A socket stand-in that records how many messages were unacknowledged at each write."""

    def __init__(self, sock: socket.socket, conn: RelpConnection) -> None:
        self._sock, self._conn, self.seen = sock, conn, [0]

    def sendall(self, data: bytes) -> None:
        self.seen.append(len(self._conn._unacked))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_window_is_never_exceeded_against_rsyslog(rsyslog: RelpRsyslog) -> None:
    """With window=8, no write ever leaves more than 8 messages unacknowledged; all 3,000 arrive."""
    conn = RelpConnection.open(rsyslog.relp_address, window=8)
    spy = _CountingSocket(conn._sock, conn)  # type: ignore[arg-type]
    conn._sock = spy  # type: ignore[assignment]
    sent = [message(i) for i in range(3000)]
    conn.send(sent)
    assert conn.wait(10)
    conn._sock = spy._sock
    conn.close()
    assert max(spy.seen) == 8
    rsyslog.wait_for(len(sent), timeout=30)
    assert raw(rsyslog) == sent


def test_sigkilled_rsyslog_pending_is_what_was_not_written(rsyslog: RelpRsyslog) -> None:
    """rsyslog SIGKILLed mid-stream: written + pending covers everything sent; resending it after a
    restart on the same port delivers everything, with duplicates at most what was pending."""
    everything = [message(i) for i in range(20_000)]
    conn = RelpConnection.open(rsyslog.relp_address, window=128, timeout=5)
    handed = 0
    with pytest.raises(RelpError):
        for start in range(0, len(everything), 100):
            if start == 5000:
                rsyslog.kill()
            handed = start + 100
            conn.send(everything[start:handed])
    sent = everything[:handed]
    pending = conn.pending()
    conn.close()
    written = raw(rsyslog)
    assert 5000 - 128 <= len(written) < handed
    assert written == sent[: len(written)]  # a prefix, in order, no duplicates
    assert pending == sent[len(sent) - len(pending) :]  # a suffix: the oldest unacknowledged onwards
    assert len(written) + len(pending) >= len(sent)  # nothing lost
    overlap = len(written) + len(pending) - len(sent)  # written, but its acknowledgement died with rsyslog
    assert overlap <= 128

    rsyslog.start()
    with RelpConnection.open(rsyslog.relp_address) as again:
        again.send(pending)
        again.send(everything[handed:])
        assert again.wait(30)
    rsyslog.wait_for(len(everything) + overlap, timeout=60)
    final = raw(rsyslog)
    assert final == written + pending + everything[handed:]
    assert len(final) - len(everything) == overlap <= len(pending)


# --- TLS ------------------------------------------------------------------------------------------


def test_tls_with_verification_delivers(rsyslog_tls: RelpRsyslog) -> None:
    """Over TLS, verifying rsyslog's certificate against the test CA, 1,000 messages arrive in order."""
    assert rsyslog_tls.certs is not None
    context = rsyslog_tls.certs.client_context(client_cert=True)
    sent = [message(i) for i in range(1000)]
    with RelpConnection.open(rsyslog_tls.relp_tls_address, ssl_context=context) as conn:
        assert isinstance(conn._sock, ssl.SSLSocket)
        conn.send(sent)
        assert conn.wait(10)
    rsyslog_tls.wait_for(len(sent), timeout=30)
    assert raw(rsyslog_tls) == sent


def test_tls_with_a_wrong_ca_is_refused(rsyslog_tls: RelpRsyslog) -> None:
    """A server certificate from a CA the client does not trust fails verification; nothing is sent."""
    trustme = pytest.importorskip("trustme")
    assert rsyslog_tls.certs is not None
    context = ssl.create_default_context(cadata=trustme.CA().cert_pem.bytes().decode())
    context.load_cert_chain(str(rsyslog_tls.certs.client_certfile), str(rsyslog_tls.certs.client_keyfile))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        RelpConnection.open(rsyslog_tls.relp_tls_address, ssl_context=context)
    assert rsyslog_tls.count() == 0


def test_tls_with_a_wrong_server_name_is_refused(rsyslog_tls: RelpRsyslog) -> None:
    """server_hostname is checked against the certificate: a name it does not carry fails."""
    assert rsyslog_tls.certs is not None
    context = rsyslog_tls.certs.client_context(client_cert=True)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        RelpConnection.open(rsyslog_tls.relp_tls_address, ssl_context=context, server_hostname="other.test")


def test_tls_refused_client_certificate_is_explained(rsyslog_tls: RelpRsyslog) -> None:
    """A client without a certificate is dropped by imrelp after the handshake: RelpError says why."""
    assert rsyslog_tls.certs is not None
    context = rsyslog_tls.certs.client_context()
    with pytest.raises(RelpError, match=r"refuses the client's certificate or its lack of one"):
        RelpConnection.open(rsyslog_tls.relp_tls_address, ssl_context=context)


# --- fake servers ---------------------------------------------------------------------------------


class FakeServer:
    """A RELP server of our own on a free loopback port: *script* runs on the accepted socket."""

    def __init__(self, script: Callable[[FakeServer, socket.socket], None]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.frames: list[tuple[int, bytes, bytes]] = []
        self.error: BaseException | None = None
        self._buffer = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(20)
                self.script(self, conn)
        except BaseException as exc:
            self.error = exc

    def read_frame(self, sock: socket.socket) -> tuple[int, bytes, bytes] | None:
        """The client's next frame (txnr, command, data), or None at its EOF."""
        while True:
            match = re.match(rb"(\d+) (\w+) (\d+)[ \n]", self._buffer)
            if match:
                length = int(match[3])
                end = match.end() + length + (1 if length else 0)
                if len(self._buffer) >= end:
                    frame = (int(match[1]), match[2], self._buffer[match.end() : match.end() + length])
                    assert self._buffer[end - 1 : end] == b"\n", self._buffer[:end]
                    self._buffer = self._buffer[end:]
                    self.frames.append(frame)
                    return frame
            data = sock.recv(65536)
            if not data:
                return None
            self._buffer += data

    def answer_open(self, sock: socket.socket) -> None:
        txnr, command, _ = self.read_frame(sock) or (0, b"", b"")
        assert command == b"open"
        sock.sendall(b"%d rsp %d %s\n" % (txnr, len(OPEN_OK), OPEN_OK))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(20)
        assert not self.thread.is_alive()


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[FakeServer, socket.socket], None]], FakeServer]]:
    servers: list[FakeServer] = []

    def make(script: Callable[[FakeServer, socket.socket], None]) -> FakeServer:
        servers.append(FakeServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _syslogs_then(reply: Callable[[FakeServer, socket.socket, list[int]], None], count: int) -> Any:
    """A script: answer open, read *count* syslog frames, then call *reply* with their txnrs."""

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)
        txnrs = []
        while len(txnrs) < count:
            frame = server.read_frame(sock)
            assert frame is not None and frame[1] == b"syslog"
            txnrs.append(frame[0])
        reply(server, sock, txnrs)
        server.read_frame(sock)  # until the client goes

    return script


def test_out_of_order_acknowledgements_are_matched(fake: Any) -> None:
    """Responses in any order are matched to their transaction numbers."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(b"".join(b"%d rsp 6 200 OK\n" % t for t in reversed(txnrs)))

    server = fake(_syslogs_then(reply, 5))
    conn = RelpConnection.open(server.address)
    conn.send([message(i) for i in range(5)])
    assert conn.wait(10)
    assert conn.pending() == []
    conn._sock.close()  # type: ignore[union-attr]


def test_transaction_numbers_wrap_after_999999999(fake: Any) -> None:
    """After 999,999,999 the next transaction number is 1."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(b"".join(b"%d rsp 6 200 OK\n" % t for t in txnrs))

    server = fake(_syslogs_then(reply, 4))
    conn = RelpConnection.open(server.address)
    conn._next_txnr = 999_999_998
    conn.send([message(i) for i in range(4)])
    assert conn.wait(10)
    conn._sock.close()  # type: ignore[union-attr]
    server.close()
    assert [f[0] for f in server.frames[1:]] == [999_999_998, 999_999_999, 1, 2]


def test_window_full_blocks_then_times_out(fake: Any) -> None:
    """A server that never acknowledges gets exactly `window` messages; send() then raises RelpError
    after the timeout, and pending() holds every message of the call, in order."""
    seen = threading.Event()

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)
        while server.read_frame(sock) is not None:
            if len(server.frames) == 1 + 4:
                seen.set()

    server = fake(script)
    conn = RelpConnection.open(server.address, window=4, timeout=0.5)
    sent = [message(i) for i in range(10)]
    with pytest.raises(RelpError, match=r"no acknowledgement .* within 0.5 s while 4 messages"):
        conn.send(sent)
    assert conn.pending() == sent
    assert seen.wait(10)
    conn.close()
    server.close()
    assert len(server.frames) == 1 + 4  # open and 4 messages: never more than the window


def test_refusal_500_keeps_the_session_and_the_refused_message(fake: Any) -> None:
    """A 500 for one message is no error of the session: acks around it are taken, it is in refused()
    (not in pending(): sent again, it would be refused again), and sending goes on."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(
            b"%d rsp 6 200 OK\n%d rsp 21 500 message too large\n%d rsp 6 200 OK\n"
            % (txnrs[0], txnrs[1], txnrs[2])
        )
        frame = server.read_frame(sock)  # the one sent after the refusal, on the same session
        assert frame is not None and frame[1] == b"syslog"
        sock.sendall(b"%d rsp 6 200 OK\n" % frame[0])

    server = fake(_syslogs_then(reply, 4))
    conn = RelpConnection.open(server.address)
    sent = [message(i) for i in range(4)]
    conn.send(sent)
    deadline = time.monotonic() + 10
    while len(conn.pending()) > 1 and time.monotonic() < deadline:
        conn.wait(0.05)  # the fake answers three of the four: wait() itself never returns True here
    assert conn.pending() == [sent[3]]
    assert conn.refused() == [sent[1]]
    assert conn.last_refusal.endswith("refused message 3 (status b'500': b'message too large')")
    conn.send([message(9)])  # the session goes on: message 9 is acknowledged on it
    deadline = time.monotonic() + 10
    while len(conn.pending()) > 1 and time.monotonic() < deadline:
        conn.wait(0.05)
    assert conn.pending() == [sent[3]]
    conn.close()


def test_serverclose_raises_and_leaves_pending(fake: Any) -> None:
    """A serverclose hint raises RelpError; what was not acknowledged stays in pending()."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(b"%d rsp 6 200 OK\n0 serverclose 0\n" % txnrs[0])

    server = fake(_syslogs_then(reply, 3))
    conn = RelpConnection.open(server.address)
    sent = [message(i) for i in range(3)]
    with pytest.raises(RelpError, match=r"closed the session \(serverclose\) with 2 messages unacknowledged"):
        conn.send(sent)
        conn.wait(10)
    assert conn.pending() == sent[1:]
    conn.close()


def test_unknown_transaction_number_is_a_protocol_error(fake: Any) -> None:
    """A response to a transaction that is not outstanding raises RelpError."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(b"77 rsp 6 200 OK\n")

    server = fake(_syslogs_then(reply, 2))
    conn = RelpConnection.open(server.address)
    with pytest.raises(RelpError, match=r"answered transaction 77, which is not outstanding \(2 are\)"):
        conn.send([message(1), message(2)])
        conn.wait(10)
    assert conn.pending() == [message(1), message(2)]
    conn.close()


@pytest.mark.parametrize(
    ("garbage", "expected"),
    [
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            r"not a RELP frame \(expected 'TXNR COMMAND DATALEN', got b'HTTP",
        ),
        (b"1234567890 rsp 6 200 OK\n", r"not a RELP frame"),  # a txnr of 10 digits
        (b"2 " + b"r" * 33 + b" 6 200 OK\n", r"not a RELP frame"),  # a command of 33 letters
        (b"2 rsp 6 200 OKX", r"not followed by LF"),
        (b"2 rsp 5\n", r"announcing 5 bytes of data but ending in LF"),
        (b"2 rsp 999999999 ", r"frame of 999,999,999 bytes; at most 65,536"),
        (b"2 start 0\n", r"sent the command 'start' \(txnr 2\)"),
    ],
)
def test_garbage_from_the_server_raises(fake: Any, garbage: bytes, expected: str) -> None:
    """Whatever is not a RELP response gives a RelpError saying what arrived; the message stays pending."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(garbage)

    server = fake(_syslogs_then(reply, 1))
    conn = RelpConnection.open(server.address)
    with pytest.raises(RelpError, match=expected):
        conn.send([message(1)])
        conn.wait(10)
    assert conn.pending() == [message(1)]
    conn.close()


def test_endless_stream_costs_bounded_memory(fake: Any) -> None:
    """A server that streams 64 MiB with no frame end in sight is cut off early, in bounded memory."""
    sent_bytes = []

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        chunk = b"x" * 65536
        total = len(header := b"%d rsp %d " % (txnrs[0], MAX_RESPONSE))
        try:
            sock.sendall(header)
            for _ in range(1024):
                sock.sendall(chunk)
                total += len(chunk)
        except OSError:
            pass
        sent_bytes.append(total)

    server = fake(_syslogs_then(reply, 1))
    conn = RelpConnection.open(server.address)
    tracemalloc.start()
    try:
        with pytest.raises(RelpError, match="not followed by LF"):
            conn.send([message(1)])
            conn.wait(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    conn.close()
    server.close()
    assert peak < 1024 * 1024
    assert sent_bytes[0] < 64 * 1024 * 1024  # the client stopped reading long before the end


def test_server_closing_mid_frame_raises(fake: Any) -> None:
    """An EOF inside a frame raises RelpError that shows the partial frame."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(b"%d rsp 6 20" % txnrs[0])
        sock.shutdown(socket.SHUT_WR)

    server = fake(_syslogs_then(reply, 1))
    conn = RelpConnection.open(server.address)
    with pytest.raises(RelpError, match=r"closed the connection, in the middle of a frame \(b'2 rsp 6 20'\)"):
        conn.send([message(1)])
        conn.wait(10)
    assert conn.pending() == [message(1)]
    conn.close()


def test_silent_server_open_times_out(fake: Any) -> None:
    """A server that accepts and never answers open costs one timeout, then RelpError."""
    done = threading.Event()

    def script(server: FakeServer, sock: socket.socket) -> None:
        done.wait(20)

    server = fake(script)
    with pytest.raises(RelpError, match=r"did not answer 'open' within 0.3 s"):
        RelpConnection.open(server.address, timeout=0.3)
    done.set()


def test_open_refused_with_500(fake: Any) -> None:
    """A 500 to open raises RelpError with the server's words."""

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.read_frame(sock)
        sock.sendall(b"1 rsp 21 500 too many sessions\n")
        server.read_frame(sock)

    server = fake(script)
    with pytest.raises(RelpError, match=r"refused 'open': status b'500': b'too many sessions'"):
        RelpConnection.open(server.address)


def test_open_without_syslog_command_is_refused(fake: Any) -> None:
    """A server that does not offer the syslog command cannot take messages: RelpError."""

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.read_frame(sock)
        offers = b"200 OK\nrelp_version=0\ncommands=eventlog"
        sock.sendall(b"1 rsp %d %s\n" % (len(offers), offers))
        server.read_frame(sock)

    server = fake(script)
    with pytest.raises(RelpError, match=r"does not offer the syslog command"):
        RelpConnection.open(server.address)


def test_open_sends_the_offers(fake: Any) -> None:
    """open sends relp_version=0, relp_software and commands=syslog with transaction number 1."""

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)
        frame = server.read_frame(sock)
        assert frame is not None and frame[1] == b"close"
        sock.sendall(b"%d rsp 0\n0 serverclose 0\n" % frame[0])

    server = fake(script)
    RelpConnection.open(server.address).close()
    server.close()
    assert server.error is None
    (txnr, command, data), (close_txnr, close, _) = server.frames
    assert (txnr, command, close_txnr, close) == (1, b"open", 2, b"close")
    assert data.split(b"\n")[0] == b"relp_version=0"
    assert b"commands=syslog" in data.split(b"\n")
    assert any(line.startswith(b"relp_software=logfunnel") for line in data.split(b"\n"))


def test_forked_child_cannot_use_the_parents_connection(fake: Any) -> None:
    """In a forked child, send() raises a RelpError naming the fork; close() there leaves the parent's
    session alone."""

    def reply(server: FakeServer, sock: socket.socket, txnrs: list[int]) -> None:
        sock.sendall(b"%d rsp 6 200 OK\n" % txnrs[0])

    server = fake(_syslogs_then(reply, 1))
    conn = RelpConnection.open(server.address)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            conn.send([message(0)])
        except RelpError as exc:
            code = 0 if "cannot be used in process" in str(exc) and "(a fork)" in str(exc) else 2
        finally:
            conn.close()
            os.write(write, b"%d" % code)
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 10) == b"0"
    os.close(read)
    assert os.WEXITSTATUS(status) == 0
    conn.send([message(1)])
    assert conn.wait(10)
    conn._sock.close()  # type: ignore[union-attr]
    server.close()
    assert [f[1] for f in server.frames] == [b"open", b"syslog"]


def test_unreachable_server_names_the_address() -> None:
    """Connection refused is an OSError that says which server could not be reached."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(
        ConnectionRefusedError, match=rf"cannot connect to the RELP server at 127.0.0.1:{port}"
    ):
        RelpConnection.open(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"window": 0}, r"expected window as an int from 1 to 100,000, got 0"),
        ({"timeout": 0}, r"expected timeout as a number of seconds > 0, got 0"),
    ],
)
def test_bad_options_raise_value_error(kwargs: dict[str, Any], expected: str) -> None:
    """A window or timeout out of range raises ValueError before connecting."""
    with pytest.raises(ValueError, match=expected):
        RelpConnection.open(("127.0.0.1", 9), **kwargs)


def test_text_instead_of_bytes_raises_type_error(fake: Any) -> None:
    """send() takes bytes: a str raises TypeError and sends nothing."""

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)
        server.read_frame(sock)

    server = fake(script)
    conn = RelpConnection.open(server.address)
    with pytest.raises(TypeError, match=r"expected a list of bytes, got an item of type str"):
        conn.send([message(1), "text"])  # type: ignore[list-item]
    assert conn.pending() == []
    conn._sock.close()  # type: ignore[union-attr]


def test_wait_zero_takes_what_has_arrived(rsyslog: RelpRsyslog) -> None:
    """wait(0) does not wait, but takes the acknowledgements already received."""
    with RelpConnection.open(rsyslog.relp_address) as conn:
        conn.send([message(1)])
        rsyslog.wait_for(1)
        deadline = time.monotonic() + 10  # the acknowledgement follows the write within moments
        while not conn.wait(0):
            assert time.monotonic() < deadline, "no acknowledgement within 10 s"
            time.sleep(0.01)
        assert conn.pending() == []


def test_relp_error_pickles() -> None:
    """RelpError crosses a process boundary with its message (and errno, when it has one)."""
    for error in (RelpError("bad frame"), RelpError(104, "reset")):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.args, str(again)) == (RelpError, error.args, str(error))


def test_server_that_stops_reading_costs_one_timeout(fake: Any) -> None:
    """A server that stops reading blocks the write only for the timeout: RelpError, everything pending."""
    done = threading.Event()

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)
        done.wait(20)

    server = fake(script)
    conn = RelpConnection.open(server.address, timeout=0.5)
    sent = [message(i, "z" * (1 << 20)) for i in range(24)]  # more than the kernel buffers hold
    with pytest.raises(RelpError, match=r"did not finish within 0.5 s: the server is stuck"):
        conn.send(sent)
    assert conn.pending() == sent
    done.set()
    conn.close()


def test_close_never_raises_and_the_connection_is_then_unusable(fake: Any) -> None:
    """close() on a server that vanished does not raise; send() afterwards says the connection is closed."""

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)

    server = fake(script)
    conn = RelpConnection.open(server.address, timeout=1)
    server.close()  # the script returned: the server closed its side
    conn.close()
    conn.close()
    with pytest.raises(RelpError, match=r"RelpConnection.send\(\): the connection to .* is closed"):
        conn.send([message(1)])
    assert conn.pending() == [message(1)]


def test_streaming_server_cannot_hold_send_or_wait(fake: Any) -> None:
    """A server that streams hints without pause and never acknowledges: send() returns, wait() returns
    False after its timeout, and neither stays inside the reading."""
    stop = threading.Event()

    def script(server: FakeServer, sock: socket.socket) -> None:
        server.answer_open(sock)
        flood = b"0 hint 0\n" * 4096
        try:
            while not stop.is_set():
                sock.sendall(flood)
        except OSError:
            pass

    server = fake(script)
    conn = RelpConnection.open(server.address, timeout=2)
    for i in range(20):
        conn.send([message(i)])
    assert conn.wait(0.5) is False
    assert conn.pending() == [message(i) for i in range(20)]
    stop.set()
    conn._drop()
