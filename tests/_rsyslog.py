"""A real rsyslog for the tests: an ordinary process on free loopback ports, its own config, pid file and
work directory under a temporary directory, no system socket, writing every message it receives to a JSON
lines file that exposes each RFC 5424 field as rsyslog parsed it (and the raw message).

    with Rsyslog(tmp_path) as server:          # or the ``rsyslog`` fixture below
        handler = RFC5424Handler(server.tcp_address)
        ...
        [message] = server.wait_for(1)
        assert message["procid"] == str(os.getpid())
        server.stop()                           # SIGTERM (server.kill() for SIGKILL)
        server.start()                          # the same ports again

Listeners: ``udp_address`` (imudp), ``tcp_address`` (imptcp, RFC 6587 octet counting or LF framing),
``tls_address`` (imtcp with the gtls driver, RFC 5425; certificates from ``trustme`` in ``certs``),
``relp_address`` (imrelp), ``relp_tls_address`` (imrelp with TLS, when ``relp_tls=True``) and
``unix_socket`` (imuxsock on a path of our own). Each message is a dict with the keys ``pri``,
``facility``, ``severity``, ``version``, ``timestamp`` (RFC 3339 as rsyslog parsed it), ``hostname``,
``app_name``, ``procid``, ``msgid``, ``structured_data``, ``msg``, ``raw`` (the message as received,
without framing), ``input`` (which listener took it) and ``header_timestamp`` (the TIMESTAMP field as
sent, cut from ``raw``; ``None`` when the message is not RFC 5424).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from _need import need_module, need_program

MODULE_DIR = "/usr/lib/x86_64-linux-gnu/rsyslog"
INSTALL = "the Debian packages rsyslog rsyslog-relp rsyslog-gnutls"


#: The most any file rsyslogd writes may grow to. A run once left an rsyslogd orphaned (its parent
#: was killed) and something kept feeding it: it filled the disk (84 GB) and took every process on
#: the machine down with it. Past this size the kernel kills rsyslogd (SIGXFSZ).
MAX_OUTPUT_BYTES = 2 * 1024**3
_PR_SET_PDEATHSIG = 1


def _bound_child() -> None:
    """In the rsyslogd child, before exec: die with the process that started it, and never write a
    file past MAX_OUTPUT_BYTES."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the fixture's own teardown still kills it


@dataclass
class Certs:
    """A test CA and a server certificate for 127.0.0.1/localhost, plus a client certificate, as files."""

    ca: Any  # trustme.CA
    cafile: Path
    certfile: Path
    keyfile: Path
    client_certfile: Path
    client_keyfile: Path

    @classmethod
    def make(cls, directory: Path) -> Certs:
        """Issue the certificates into *directory*."""
        trustme = need_module("trustme", "the test extra (pip install -e '.[test]')")
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("client.logfunnel.test")
        paths = cls(
            ca,
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
            directory / "client.pem",
            directory / "client.key",
        )
        ca.cert_pem.write_to_path(str(paths.cafile))
        server.cert_chain_pems[0].write_to_path(str(paths.certfile))
        server.private_key_pem.write_to_path(str(paths.keyfile))
        client.cert_chain_pems[0].write_to_path(str(paths.client_certfile))
        client.private_key_pem.write_to_path(str(paths.client_keyfile))
        return paths

    def client_context(self, *, client_cert: bool = False) -> ssl.SSLContext:
        """A client context that trusts this CA (and presents the client certificate if asked)."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        if client_cert:
            context.load_cert_chain(str(self.client_certfile), str(self.client_keyfile))
        return context


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nobody listens on right now (TCP and UDP free alike)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            try:
                with socket.socket(socket.AF_INET, other) as second:
                    second.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


TEMPLATE = """
template(name="lf_json" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}
template(name="lf_line" type="string" string="%rawmsg%\\n")
"""


class Rsyslog:
    """One rsyslogd under *directory*; ports are chosen once and kept across stop()/start()."""

    def __init__(
        self,
        directory: Path | str,
        *,
        tls: bool = True,
        relp: bool = True,
        relp_tls: bool = False,
        unix: bool = True,
        client_auth: bool = False,
        max_message_size: int = 256 * 1024,
    ) -> None:
        self.program = need_program("rsyslogd", INSTALL)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.work = self.directory / "work"
        self.work.mkdir(exist_ok=True)
        self.conf = self.directory / "rsyslog.conf"
        self.pidfile = self.directory / "rsyslogd.pid"
        self.output = self.directory / "received.jsonl"
        self.internal_log = self.directory / "rsyslogd-internal.log"
        self.stdout_log = self.directory / "rsyslogd-stdout.log"
        self.tls, self.relp, self.relp_tls, self.unix = tls, relp, relp_tls, unix
        self.client_auth = client_auth
        self.max_message_size = max_message_size
        self.certs: Certs | None = Certs.make(self.directory / "certs") if tls or relp_tls else None
        # a Unix socket path must stay under 108 bytes: tmp_path can be longer
        self._socket_dir = tempfile.mkdtemp(prefix="lfrs-")
        self.unix_socket = os.path.join(self._socket_dir, "log.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self._pick_ports()

    # --- addresses ---------------------------------------------------------------------------------
    def _pick_ports(self) -> None:
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.tcp_port = free_port()
        self.tls_port = free_port() if self.tls else 0
        self.relp_port = free_port() if self.relp else 0
        self.relp_tls_port = free_port() if self.relp_tls else 0

    @property
    def udp_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.udp_port)

    @property
    def tcp_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.tcp_port)

    @property
    def tls_address(self) -> tuple[str, int]:
        assert self.tls, "this Rsyslog was made with tls=False"
        return ("127.0.0.1", self.tls_port)

    @property
    def relp_address(self) -> tuple[str, int]:
        assert self.relp, "this Rsyslog was made with relp=False"
        return ("127.0.0.1", self.relp_port)

    @property
    def relp_tls_address(self) -> tuple[str, int]:
        assert self.relp_tls, "this Rsyslog was made with relp_tls=False"
        return ("127.0.0.1", self.relp_tls_port)

    # --- configuration -----------------------------------------------------------------------------
    def config(self) -> str:
        """The rsyslog.conf text for the current ports."""
        lines = [
            f'global(workDirectory="{self.work}" maxMessageSize="{self.max_message_size}"',
            '       parser.escapeControlCharactersOnReceive="off" net.enableDNS="off"',
            '       processInternalMessages="on")',
            'main_queue(queue.type="Direct")',
            f'module(load="{MODULE_DIR}/imudp.so")',
            f'input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="lf"'
            ' rateLimit.interval="0")',
            f'module(load="{MODULE_DIR}/imptcp.so")',
            f'input(type="imptcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="lf"'
            ' ratelimit.interval="0")',
        ]
        if self.tls:
            assert self.certs is not None
            auth = "x509/certvalid" if self.client_auth else "anon"
            lines += [
                f'module(load="{MODULE_DIR}/imtcp.so" streamDriver.name="gtls" streamDriver.mode="1"',
                f'       streamDriver.authMode="{auth}" maxSessions="1000")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="lf"',
                f'      streamDriver.CAFile="{self.certs.cafile}"',
                f'      streamDriver.CertFile="{self.certs.certfile}"',
                f'      streamDriver.KeyFile="{self.certs.keyfile}")',
            ]
        if self.relp or self.relp_tls:
            lines.append(f'module(load="{MODULE_DIR}/imrelp.so")')
        if self.relp:
            lines.append(
                f'input(type="imrelp" address="127.0.0.1" port="{self.relp_port}" ruleset="lf"'
                f' maxDataSize="{self.max_message_size}")'
            )
        if self.relp_tls:
            assert self.certs is not None
            lines += [
                f'input(type="imrelp" address="127.0.0.1" port="{self.relp_tls_port}" ruleset="lf"',
                f'      maxDataSize="{self.max_message_size}" tls="on"',
                f'      tls.caCert="{self.certs.cafile}" tls.myCert="{self.certs.certfile}"',
                f'      tls.myPrivKey="{self.certs.keyfile}")',
            ]
        if self.unix:
            lines += [
                f'module(load="{MODULE_DIR}/imuxsock.so" SysSock.Use="off")',
                f'input(type="imuxsock" Socket="{self.unix_socket}" ruleset="lf"'
                ' RateLimit.Interval="0" CreatePath="on")',
            ]
        lines += [
            TEMPLATE,
            'ruleset(name="lf") {',
            f'  action(type="omfile" file="{self.output}" template="lf_json")',
            "}",
            # rsyslog's own messages (startup errors, TLS failures) go to a file of their own
            f'action(type="omfile" file="{self.internal_log}")',
        ]
        return "\n".join(lines) + "\n"

    # --- life cycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> Rsyslog:
        """Start rsyslogd (on the same ports as before, if it ran already) and wait until it listens."""
        assert self.process is None or self.process.poll() is not None, "rsyslogd already runs"
        first = not hasattr(self, "_started_once")
        for attempt in range(3):
            self.conf.write_text(self.config())
            self.pidfile.unlink(missing_ok=True)
            with open(self.stdout_log, "ab") as out:
                self.process = subprocess.Popen(
                    [self.program, "-n", "-i", str(self.pidfile), "-f", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_bound_child,
                )
            if self._wait_listening(timeout):
                self._started_once = True
                return self
            self.kill()
            if not first or attempt == 2:
                break
            self._pick_ports()  # another test took a port between our probe and rsyslog's bind
        raise AssertionError(
            f"rsyslogd did not listen on {self._wanted()} within {timeout} s; its output:\n"
            f"{self._read(self.stdout_log)}\ninternal log:\n{self._read(self.internal_log)}\n"
            f"config:\n{self.config()}"
        )

    def _wanted(self) -> set[tuple[str, int]]:
        wanted = {("udp", self.udp_port), ("tcp", self.tcp_port)}
        for port in (self.tls_port, self.relp_port, self.relp_tls_port):
            if port:
                wanted.add(("tcp", port))
        return wanted

    def _wait_listening(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        wanted = self._wanted()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                connections = psutil.Process(self.process.pid).net_connections(kind="inet")
            except psutil.Error:
                connections = []
            bound = set()
            for conn in connections:
                if conn.type == socket.SOCK_DGRAM:
                    bound.add(("udp", conn.laddr.port))
                elif conn.status == psutil.CONN_LISTEN:
                    bound.add(("tcp", conn.laddr.port))
            if wanted <= bound and (not self.unix or os.path.exists(self.unix_socket)):
                return True
            time.sleep(0.02)
        return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after *timeout*); rsyslog writes out what it had received."""
        if not self.running:
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL and reap: a crash, nothing flushed."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(10)

    def restart(self) -> Rsyslog:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what arrived ------------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self) -> list[dict[str, Any]]:
        """Every message written so far, oldest first (a half-written last line is left for later)."""
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:
            text = line.decode("utf-8", "surrogateescape")
            try:
                message = json.loads(text)
            except ValueError:  # rsyslog cuts an over-long output line: keep it, marked
                message = {"raw": text, "msg": "", "broken": True}
            message["header_timestamp"] = header_timestamp(message.get("raw", ""))
            out.append(message)
        return out

    def count(self) -> int:
        """How many messages were written so far."""
        try:
            return self.output.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_for(self, count: int, timeout: float = 15.0, *, settle: float = 0.0) -> list[dict[str, Any]]:
        """Wait until at least *count* messages arrived; then (after *settle* s of quiet) return all.

        Fails with what did arrive when *timeout* passes first."""
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                got = self.messages()
                raise AssertionError(
                    f"rsyslog received {len(got)} of {count} messages within {timeout} s; last ones: "
                    f"{got[-3:]!r}\ninternal log:\n{self._read(self.internal_log)[-2000:]}"
                )
            time.sleep(0.02)
        if settle:
            self.wait_quiet(settle, timeout=max(0.0, deadline - time.monotonic()) + settle)
        return self.messages()

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 15.0) -> int:
        """Wait until no message arrived for *quiet* seconds; return the count."""
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.count()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def internal(self) -> str:
        """rsyslog's own messages (errors about inputs, TLS handshakes, ...)."""
        return self._read(self.internal_log) + self._read(self.stdout_log)


def header_timestamp(raw: str) -> str | None:
    """The TIMESTAMP field of an RFC 5424 message as sent: ``<PRI>1 TIMESTAMP ...``."""
    if not raw.startswith("<"):
        return None
    end = raw.find(">")
    parts = raw[end + 1 :].split(" ", 2)
    if end < 0 or len(parts) < 3 or parts[0] != "1":
        return None
    return parts[1]


def running(tmp_path: Path, **options: Any) -> Iterator[Rsyslog]:
    """Yield a started Rsyslog under *tmp_path*, killed afterwards: the body of an ``rsyslog`` fixture::

    @pytest.fixture
    def rsyslog(tmp_path):
        yield from running(tmp_path)
    """
    server = Rsyslog(tmp_path / "rsyslog", **options)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    """A running rsyslog with every listener (UDP, TCP, TLS, RELP, Unix socket), killed at teardown."""
    yield from running(tmp_path)
