"""RFC5424Handler against a real rsyslog: every field as rsyslog parsed it, over UDP, TCP and TLS."""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import time
from datetime import datetime, timezone

import pytest

from _rsyslog import Rsyslog, free_port, running
from logfunnel.handlers import RFC5424Handler
from logfunnel.handlers._rfc5424 import sd_name

STREAMS = ["tcp", "tls"]


@pytest.fixture
def rsyslog(request, tmp_path):
    """A running rsyslog, killed at teardown: UDP, TCP, RELP and a Unix socket, plus TLS for a test with
    transport 'tls' (rsyslog's TLS listener alone costs about 0.5 CPU-s to start; tests without it never
    reach for it: `tls_address` of an Rsyslog without TLS fails the test)."""
    callspec = getattr(request.node, "callspec", None)
    tls = callspec is not None and callspec.params.get("transport") == "tls"
    yield from running(tmp_path, tls=tls)


@pytest.fixture
def rsyslog_tls(tmp_path):
    """A running rsyslog with every listener, TLS included, killed at teardown."""
    yield from running(tmp_path)


def make_handler(server: Rsyslog, transport: str = "tcp", **options: object) -> RFC5424Handler:
    """A handler for *transport* into *server* (TLS trusting the test CA)."""
    address = {
        "udp": server.udp_address,
        "tcp": server.tcp_address,
        "tls": server.tls_address if server.tls else None,
        "relp": server.relp_address if server.relp else None,
    }[transport]
    if transport == "tls" and "ssl_context" not in options and "cafile" not in options:
        assert server.certs is not None
        options["cafile"] = server.certs.cafile
    return RFC5424Handler(address, transport=transport, **options)  # type: ignore[arg-type]


def log_one(
    handler: logging.Handler, level: int, msg: str, *args: object, **kwargs: object
) -> logging.LogRecord:
    """Log one record through *handler* alone on a fresh logger; return the record."""
    logger = logging.getLogger(f"test.rfc5424.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logger.handlers[:] = [handler, keep]
    try:
        logger.log(level, msg, *args, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.handlers[:] = []
    return seen[0]


def unescape_sd(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Parse STRUCTURED-DATA text back into (SD-ID, [(name, value)]) per element."""
    elements = []
    for element in re.finditer(r'\[([^ \]]+)((?: [^=]+="(?:[^"\\]|\\.)*")*)\]', text):
        params = [
            (name, re.sub(r"\\(.)", r"\1", value))
            for name, value in re.findall(r' ([^=]+)="((?:[^"\\]|\\.)*)"', element.group(2))
        ]
        elements.append((element.group(1), params))
    return elements


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_every_header_field_as_rsyslog_parsed_it(rsyslog, transport):
    """PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID and MSGID arrive as configured."""
    handler = make_handler(rsyslog, transport, facility="local3", hostname="web-1", app_name="shop")
    record = log_one(handler, logging.WARNING, "hello")
    [message] = rsyslog.wait_for(1)
    handler.close()
    assert message["input"] == {"udp": "imudp", "tcp": "imptcp", "tls": "imtcp"}[transport]
    assert (message["pri"], message["facility"], message["severity"]) == (str(19 * 8 + 4), "19", "4")
    assert message["version"] == "1"
    expected = datetime.fromtimestamp(record.created).astimezone()
    assert datetime.fromisoformat(message["header_timestamp"].replace("Z", "+00:00")) == expected
    assert (message["hostname"], message["app_name"]) == ("web-1", "shop")
    assert (message["procid"], message["msgid"]) == (str(os.getpid()), record.name[:32])
    assert message["msg"] == "\ufeffhello"


@pytest.mark.timeout(60)
def test_timestamp_has_microseconds_and_utc_offset(rsyslog):
    """TIMESTAMP carries six fractional digits and the offset (local), or Z with utc=True."""
    local, utc = make_handler(rsyslog), make_handler(rsyslog, utc=True)
    log_one(local, logging.INFO, "local")
    record = log_one(utc, logging.INFO, "utc")
    messages = {m["msg"]: m for m in rsyslog.wait_for(2)}
    local.close()
    utc.close()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", messages["\ufefflocal"]["header_timestamp"]
    )
    stamp = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert messages["\ufeffutc"]["header_timestamp"] == stamp


@pytest.mark.timeout(60)
def test_structured_data_escaping_round_trips(rsyslog):
    """Extras with '"', '\\' and ']' come back from rsyslog's STRUCTURED-DATA as they were logged."""
    handler = make_handler(rsyslog)
    extras = {"quote": 'say "hi"', "backslash": "C:\\temp\\", "bracket": "a]b[c", "number": 42, "é": "ü"}
    log_one(handler, logging.INFO, "sd", extra=extras)
    [message] = rsyslog.wait_for(1)
    handler.close()
    [(sd_id, params)] = unescape_sd(message["structured_data"])
    assert sd_id == "extra@32473"
    assert params == [
        ("quote", 'say "hi"'),
        ("backslash", "C:\\temp\\"),
        ("bracket", "a]b[c"),
        ("number", "42"),
        ("_", "ü"),  # a non-ASCII PARAM-NAME is replaced, not dropped
    ]
    assert message["msg"] == "\ufeffsd"  # the SD ended where it should: MSG is intact


@pytest.mark.timeout(60)
def test_invalid_sd_names_are_replaced_deterministically(rsyslog):
    """'=', space, ']', '"' and over-long names become the same valid SD-NAME every time."""
    handler = make_handler(rsyslog, extras=["a=b", "c d", 'e"f]', "x" * 40])
    extras = {"a=b": 1, "c d": 2, 'e"f]': 3, "x" * 40: 4, "ignored": 5}
    log_one(handler, logging.INFO, "one", extra=extras)
    log_one(handler, logging.INFO, "two", extra=extras)
    first, second = rsyslog.wait_for(2)
    handler.close()
    assert first["structured_data"] == second["structured_data"]
    names = [name for name, _ in unescape_sd(first["structured_data"])[0][1]]
    assert names == ["a_b", "c_d", "e_f_", "x" * 32]
    assert all(sd_name(name) == name for name in names)


@pytest.mark.timeout(60)
def test_no_extras_give_the_nilvalue(rsyslog):
    """A record without extras (or extras=()) has STRUCTURED-DATA '-'."""
    handler = make_handler(rsyslog, extras=())
    log_one(handler, logging.INFO, "plain", extra={"user": "x"})
    [message] = rsyslog.wait_for(1)
    handler.close()
    assert message["structured_data"] == "-"
    assert message["raw"].split(" ", 7)[6] == "-"


@pytest.mark.timeout(60)
def test_utf8_msg_starts_with_bom(rsyslog):
    """MSG is UTF-8 after a BOM; bom=False leaves the BOM out."""
    with_bom, without = make_handler(rsyslog), make_handler(rsyslog, bom=False)
    log_one(with_bom, logging.INFO, "grüße %s", "東京")
    log_one(without, logging.INFO, "naïve")
    messages = sorted(m["msg"] for m in rsyslog.wait_for(2))
    with_bom.close()
    without.close()
    assert messages == ["naïve", "\ufeffgrüße 東京"]


@pytest.mark.timeout(60)
def test_header_fields_are_cut_and_non_printable_characters_replaced(rsyslog):
    """HOSTNAME, APP-NAME and MSGID keep RFC 5424's limits and printable US-ASCII only."""
    handler = make_handler(rsyslog, hostname="h" * 300, app_name="my app\tname" + "a" * 60, msgid="id é\n")
    log_one(handler, logging.INFO, "fields")
    [message] = rsyslog.wait_for(1)
    handler.close()
    assert message["hostname"] == "h" * 255
    assert message["app_name"] == ("my_app_name" + "a" * 60)[:48]
    assert message["msgid"] == "id___"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", STREAMS)
def test_multiline_traceback_arrives_intact(rsyslog, transport):
    """Octet counting keeps a multi-line message and its traceback in one message over TCP and TLS."""
    handler = make_handler(rsyslog, transport)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = log_one(handler, logging.ERROR, "failed:\n  step %d", 2, exc_info=True)
    log_one(handler, logging.INFO, "next")
    first, second = rsyslog.wait_for(2)
    handler.close()
    assert first["msg"] == "\ufeff" + handler.format(record)
    assert "Traceback (most recent call last):" in first["msg"]
    assert first["msg"].endswith("ValueError: bad\nvalue")
    assert second["msg"] == "\ufeffINFO next"


@pytest.mark.timeout(60)
def test_udp_oversize_is_truncated_and_counted(rsyslog):
    """Over UDP a message longer than max_size is cut (never inside a UTF-8 character) and counted."""
    handler = make_handler(rsyslog, "udp", max_size=600)
    log_one(handler, logging.INFO, "é" * 1000)
    log_one(handler, logging.INFO, "small")
    first, second = rsyslog.wait_for(2)
    assert handler.drain(5) == 0
    stats = handler.lane_stats()
    handler.close()
    assert len(first["raw"].encode()) <= 600
    assert first["msg"].startswith("\ufeffééé") and first["msg"].strip("\ufeffé") == ""
    assert second["msg"] == "\ufeffsmall"
    assert (stats["truncated"], stats["handled"], stats["failed"]) == (1, 2, 0)


@pytest.mark.timeout(60)
def test_udp_default_max_size_is_2048(rsyslog):
    """The default UDP limit is 2048 bytes, RFC 5426's size every receiver should take."""
    handler = make_handler(rsyslog, "udp")
    log_one(handler, logging.INFO, "x" * 5000)
    [message] = rsyslog.wait_for(1)
    handler.close()
    assert len(message["raw"].encode()) == 2048


def _refused(handler: RFC5424Handler, server: Rsyslog, capsys) -> str:
    """Log one record, wait for the handler to fail to connect; return its last_error."""
    log_one(handler, logging.INFO, "secret")
    deadline = time.monotonic() + 15
    while handler.lane_stats()["connect_failures"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = handler.lane_stats()
    assert handler.drain(0.5) == 1
    handler.close()
    assert stats["connect_failures"] >= 1 and stats["handled"] == 0
    assert server.count() == 0
    assert "cannot connect" in capsys.readouterr().err
    return str(stats["last_error"])


@pytest.mark.timeout(60)
def test_tls_verifies_the_server_by_default(rsyslog_tls, capsys):
    """Without the test CA (only the system's), the server's certificate is refused and reported."""
    handler = RFC5424Handler(rsyslog_tls.tls_address, transport="tls", drain_timeout=0.5)
    assert "CERTIFICATE_VERIFY_FAILED" in _refused(handler, rsyslog_tls, capsys)


@pytest.mark.timeout(60)
def test_tls_refuses_a_certificate_from_another_ca(rsyslog_tls, tmp_path, capsys):
    """A server certificate signed by a CA other than cafile's is refused; nothing is sent."""
    trustme = pytest.importorskip("trustme")
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    handler = RFC5424Handler(rsyslog_tls.tls_address, transport="tls", cafile=other, drain_timeout=0.5)
    assert "CERTIFICATE_VERIFY_FAILED" in _refused(handler, rsyslog_tls, capsys)


@pytest.mark.timeout(60)
def test_tls_checks_the_server_hostname(rsyslog_tls, capsys):
    """A name the certificate does not hold is refused even with the right CA."""
    handler = make_handler(rsyslog_tls, "tls", server_hostname="elsewhere.example", drain_timeout=0.5)
    assert "CERTIFICATE_VERIFY_FAILED" in _refused(handler, rsyslog_tls, capsys)


@pytest.mark.timeout(60)
def test_tls_takes_an_ssl_context_and_a_client_certificate(tmp_path):
    """An rsyslog that requires client certificates takes the messages of a handler that has one."""
    with Rsyslog(tmp_path / "rs", relp=False, unix=False, client_auth=True) as server:
        assert server.certs is not None
        context = server.certs.client_context(client_cert=True)
        handler = RFC5424Handler(server.tls_address, transport="tls", ssl_context=context)
        log_one(handler, logging.INFO, "with a client certificate")
        [message] = server.wait_for(1)
        handler.close()
    assert message["msg"] == "\ufeffwith a client certificate"


@pytest.mark.timeout(60)
def test_records_logged_while_the_server_is_down_arrive_after_it_returns(rsyslog):
    """TCP: records kept during an outage are sent once rsyslog is back on its port."""
    handler = make_handler(rsyslog, retry_max=0.2)
    log_one(handler, logging.INFO, "before")
    rsyslog.wait_for(1)
    rsyslog.stop()
    for i in range(20):
        log_one(handler, logging.INFO, "during %d", i)
    time.sleep(0.5)
    rsyslog.start()
    messages = rsyslog.wait_for(21)
    assert handler.drain(10) == 0
    stats = handler.lane_stats()
    handler.close()
    got = [m["msg"] for m in messages]
    assert got[1:] == [f"\ufeffduring {i}" for i in range(20)][-len(got) + 1 :]
    assert stats["emitted"] == stats["handled"] + stats["possibly_lost"] == 21


@pytest.mark.timeout(60)
def test_emit_never_blocks_and_counts_drops_without_a_server(capsys):
    """With nobody listening, emit returns at once; past capacity records are dropped and counted."""
    handler = RFC5424Handler(("127.0.0.1", free_port()), capacity=10, drain_timeout=0.2, retry_max=0.1)
    started = time.monotonic()
    for i in range(100):
        log_one(handler, logging.INFO, "r %d", i)
    assert time.monotonic() - started < 10  # a did-not-hang bound, not a timing measurement
    stats = handler.lane_stats()
    assert stats["emitted"] == 100
    assert stats["dropped"] + stats["backlog"] == 100 and stats["backlog"] <= 10
    assert handler.drain(0.2) == stats["backlog"]
    handler.close()
    assert handler.lane_stats()["state"] == "abandoned"


@pytest.mark.timeout(60)
def test_drop_oldest_keeps_the_newest_records(rsyslog):
    """when_full='drop_oldest' drops from the front of the buffer."""
    handler = RFC5424Handler(
        ("127.0.0.1", free_port()), capacity=3, when_full="drop_oldest", drain_timeout=0.2
    )
    handler._start_sender = lambda: None  # no sender taking records meanwhile: the buffer alone decides
    for i in range(10):
        log_one(handler, logging.INFO, "r %d", i)
    stats = handler.lane_stats()
    kept = list(handler._buffer)
    handler.close()
    assert stats["dropped"] == 7
    assert [message.rsplit(b" ", 1)[-1] for message in kept] == [b"7", b"8", b"9"]


@pytest.mark.timeout(60)
def test_forked_child_sends_on_its_own_connection(rsyslog):
    """After os.fork the child's handler has its own thread and socket; both processes' records arrive."""
    handler = make_handler(rsyslog)
    log_one(handler, logging.INFO, "parent before fork")
    rsyslog.wait_for(1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            assert handler._link is None and handler._thread is None
            log_one(handler, logging.INFO, "child")
            code = 0 if handler.drain(10) == 0 else 2
        finally:
            os._exit(code)
    log_one(handler, logging.INFO, "parent after fork")
    _, status = os.waitpid(pid, 0)
    messages = rsyslog.wait_for(3)
    handler.close()
    assert os.waitstatus_to_exitcode(status) == 0
    procids = {m["msg"]: m["procid"] for m in messages}
    assert procids["\ufeffchild"] == str(pid)
    assert procids["\ufeffparent after fork"] == str(os.getpid())


@pytest.mark.parametrize(
    ("address", "match"),
    [
        ("127.0.0.1:514", r"^RFC5424Handler expected an address \(host, port\).*got '127\.0\.0\.1:514'$"),
        (("127.0.0.1", "514"), r"^RFC5424Handler expected an address \(host, port\)"),
        (("127.0.0.1", 0), r"^RFC5424Handler expected an address \(host, port\)"),
    ],
)
def test_a_bad_address_is_refused_clearly(address, match):
    """Anything but a (host, port) tuple raises TypeError saying what was expected."""
    with pytest.raises(TypeError, match=match):
        RFC5424Handler(address)


def test_a_bad_transport_is_refused_clearly():
    """An unknown transport raises ValueError listing the four."""
    with pytest.raises(
        ValueError, match=r"^RFC5424Handler expected a transport of 'udp', 'tcp', 'tls', 'relp'"
    ):
        RFC5424Handler(("127.0.0.1", 514), transport="http")


def test_a_bad_facility_and_sd_id_are_refused_clearly():
    """Unknown facility names and invalid SD-IDs raise ValueError at construction."""
    with pytest.raises(ValueError, match=r"^RFC5424Handler expected a facility name"):
        RFC5424Handler(("127.0.0.1", 514), facility="locl0")
    with pytest.raises(ValueError, match=r"^RFC5424Handler expected an SD-ID"):
        RFC5424Handler(("127.0.0.1", 514), sd_id="has space")


def test_tls_context_defaults_to_verification():
    """transport='tls' without options builds a context that checks certificates and hostnames."""
    handler = RFC5424Handler(("127.0.0.1", 6514), transport="tls")
    assert handler.ssl_context is not None
    assert handler.ssl_context.verify_mode == ssl.CERT_REQUIRED and handler.ssl_context.check_hostname
    handler.close()


def test_send_timeout_is_a_socket_option():
    """The connection's socket timeout bounds a blocked send (no unbounded wait inside the sender)."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        handler = RFC5424Handler(("127.0.0.1", port), timeout=1.5)
        link = handler._connect()
        assert link.sock.gettimeout() == 1.5  # type: ignore[attr-defined]
        link.close()
        handler.close()
