"""The standard library's SysLogHandler behind the funnel, against a real rsyslog over UDP, TCP and a Unix
socket: rsyslog receives what it receives from the same handler in the worker, and what happens when the
server is down, slow or refusing (documented behaviour; nothing hangs)."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import signal
import socket
import time

import pytest

import logfunnel
from _rsyslog import Rsyslog, free_port, running

RECORDS = 5
FORMAT = "%(name)s: %(levelname)s %(message)s"
KINDS = ["udp", "tcp", "unix"]


@pytest.fixture
def rsyslog(tmp_path):
    """A running rsyslog (UDP, TCP, Unix socket), killed at teardown."""
    yield from running(tmp_path, tls=False, relp=False)


def make_syslog(server: Rsyslog, kind: str, fmt: str = FORMAT) -> logging.handlers.SysLogHandler:
    """A stdlib SysLogHandler for *kind* ('udp', 'tcp' or 'unix') into *server*."""
    if kind == "unix":
        handler = logging.handlers.SysLogHandler(server.unix_socket)
    else:
        socktype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        handler = logging.handlers.SysLogHandler(
            server.udp_address if kind == "udp" else server.tcp_address, socktype=socktype
        )
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def log_some(tag: str, count: int = RECORDS) -> None:
    """Log *count* records of several levels (one of them two lines long) on logger app.*tag*."""
    log = logging.getLogger("app.syslog")
    levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    log.setLevel(logging.DEBUG)
    for i in range(count):
        log.log(levels[i % 5], "record %d from %s%s", i, tag, "\n  second line" if i == 2 else "")


def _direct(address: object, kind: str, fmt: str, unix_socket: str) -> None:
    """In a worker: the SysLogHandler configured right there, as without logfunnel."""

    class Server:  # the parts of Rsyslog that make_syslog reads
        udp_address = tcp_address = address

    Server.unix_socket = unix_socket  # type: ignore[attr-defined]
    handler = make_syslog(Server, kind, fmt)  # type: ignore[arg-type]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    log_some("worker")
    handler.close()


def _funnelled(handle: object) -> None:
    logfunnel.install_worker_logging(handle)
    log_some("worker")
    logfunnel.flush_worker_logging(10)


def run_direct(server: Rsyslog, kind: str, fmt: str = FORMAT) -> None:
    address = server.udp_address if kind == "udp" else server.tcp_address
    process = multiprocessing.get_context("fork").Process(
        target=_direct, args=(address, kind, fmt, server.unix_socket)
    )
    process.start()
    process.join(30)
    assert process.exitcode == 0


def run_funnelled(server: Rsyslog, kind: str, fmt: str = FORMAT) -> logging.handlers.SysLogHandler:
    handler = make_syslog(server, kind, fmt)
    with logfunnel.start_listener(handlers=[handler]) as listener:
        process = multiprocessing.get_context("fork").Process(target=_funnelled, args=(listener.queue,))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    handler.close()
    return handler


def comparable(message: dict[str, str]) -> tuple[str, ...]:
    """A message without what rsyslog fills in itself on arrival (its reception time)."""
    return tuple(message[key] for key in ("raw", "pri", "hostname", "app_name", "msg", "input"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_rsyslog_receives_the_same_as_from_the_handler_in_the_worker(rsyslog, kind):
    """UDP and Unix socket: the same messages arrive, byte for byte, as from a worker's own handler."""
    run_direct(rsyslog, kind)
    direct = rsyslog.wait_for(RECORDS)
    run_funnelled(rsyslog, kind)
    both = rsyslog.wait_for(2 * RECORDS, settle=0.3)
    assert len(both) == 2 * RECORDS
    assert [comparable(m) for m in both[RECORDS:]] == [comparable(m) for m in direct]
    assert "second line" in direct[2]["msg"]


@pytest.mark.timeout(60)
def test_tcp_with_a_newline_format_arrives_as_in_the_worker(rsyslog):
    """TCP, with a format ending in a newline (LF framing): whole lines arrive, the same both ways."""
    fmt = FORMAT + "\n"
    run_direct(rsyslog, "tcp", fmt)
    direct = rsyslog.wait_quiet(0.5)
    run_funnelled(rsyslog, "tcp", fmt)
    messages = rsyslog.wait_for(2 * direct, settle=0.3)
    assert [comparable(m) for m in messages[direct:]] == [comparable(m) for m in messages[:direct]]
    # ... except that a multi-line message is cut at its newline, both ways
    assert direct == RECORDS + 1


@pytest.mark.timeout(60)
def test_stdlib_tcp_syslog_has_no_framing_and_rsyslog_garbles_it(rsyslog):
    """The stdlib's SysLogHandler over TCP writes '<PRI>msg\\0' with no framing: rsyslog (imptcp, LF
    framing) does not see RECORDS messages, in the worker as behind the funnel (gh-84532's cousin)."""
    run_direct(rsyslog, "tcp")
    direct = rsyslog.wait_quiet(1.0)
    run_funnelled(rsyslog, "tcp")
    total = rsyslog.wait_quiet(1.0)
    assert direct < RECORDS  # measured with rsyslog 8.2302: 0 of 5 (NUL is no delimiter; the tail is dropped)
    assert total - direct == direct


@pytest.mark.timeout(60)
def test_udp_server_down_loses_records_silently(rsyslog, capsys):
    """UDP with rsyslog stopped: records vanish without an error; once it is back, new ones arrive."""
    handler = make_syslog(rsyslog, "udp")
    rsyslog.stop()
    with logfunnel.start_listener(handlers=[handler]) as listener:
        process = multiprocessing.get_context("fork").Process(target=_funnelled, args=(listener.queue,))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    rsyslog.start()
    logger = logging.getLogger("test.after")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning("after the outage")
    [message] = rsyslog.wait_for(1, settle=0.3)
    handler.close()
    assert "after the outage" in message["msg"]
    assert "Logging error" not in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_tcp_server_restart_is_not_survived(rsyslog, capsys):
    """TCP: after rsyslog restarts, the stdlib handler keeps its dead socket: errors on stderr, and no
    later record arrives (it reconnects only when it has no socket at all)."""
    handler = make_syslog(rsyslog, "tcp", FORMAT + "\n")
    logger = logging.getLogger("test.restart")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning("before")
    rsyslog.wait_for(1)
    rsyslog.stop()
    rsyslog.start()
    for i in range(5):
        logger.warning("after %d", i)
        time.sleep(0.05)
    count = rsyslog.wait_quiet(0.5)
    handler.close()
    assert count == 1
    assert "Logging error" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_unix_socket_server_down_then_back(rsyslog, capsys):
    """Unix socket: records logged while rsyslog is down fail on stderr; once it is back, the handler
    reconnects by itself and new records arrive."""
    handler = make_syslog(rsyslog, "unix")
    logger = logging.getLogger("test.unix.down")
    logger.propagate = False
    logger.addHandler(handler)
    rsyslog.stop()
    logger.warning("while down")
    assert "Logging error" in capsys.readouterr().err
    rsyslog.start()
    logger.warning("back")
    [message] = rsyslog.wait_for(1, settle=0.3)
    handler.close()
    assert "back" in message["msg"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_slow_server_is_absorbed_by_kernel_buffers(rsyslog, kind):
    """rsyslog stopped (SIGSTOP) for a second while a burst is logged behind the funnel: nothing hangs
    and every record arrives after SIGCONT (a longer stall blocks TCP's sendall, which has no timeout)."""
    fmt = FORMAT + ("\n" if kind == "tcp" else "")
    assert rsyslog.process is not None
    rsyslog.process.send_signal(signal.SIGSTOP)
    try:
        run_funnelled(rsyslog, kind, fmt)
        time.sleep(1.0)
    finally:
        rsyslog.process.send_signal(signal.SIGCONT)
    expected = RECORDS + (1 if kind == "tcp" else 0)  # TCP cuts the two-line record in two
    messages = rsyslog.wait_for(expected, settle=0.3)
    assert len(messages) == expected


@pytest.mark.parametrize("socktype", [socket.SOCK_STREAM])
def test_refusing_tcp_server_fails_at_construction(socktype):
    """Nobody on the TCP port: SysLogHandler() itself raises ConnectionRefusedError, before any funnel."""
    with pytest.raises(ConnectionRefusedError):
        logging.handlers.SysLogHandler(("127.0.0.1", free_port()), socktype=socktype)


@pytest.mark.timeout(60)
def test_refusing_unix_socket_fails_per_record(tmp_path, capsys):
    """No socket at the path: construction succeeds; behind the funnel the handler's lane retries each
    record, and stop() reports the records it could not deliver; nothing hangs, nothing goes unsaid."""
    handler = logging.handlers.SysLogHandler(str(tmp_path / "nobody.sock"))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        process = multiprocessing.get_context("fork").Process(target=_funnelled, args=(listener.queue,))
        process.start()
        process.join(30)
        assert process.exitcode == 0
    handler.close()
    (lane,) = listener.stats()["lanes"]
    assert lane["handled"] == 0
    assert lane["failed"] + lane["undelivered"] == RECORDS
    assert "kept failing" in capsys.readouterr().err
