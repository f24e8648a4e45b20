"""The standard library's network handlers behind the funnel, each against a real server on loopback.

Each test sends the same workers' records two ways: through the listener (the handler is the
listener's) and through the same handler configured in the worker itself, each way to a server of its
own, and compares what the two servers received. Only what must differ is normalised (an SMTP
``Date``, HTTP connection headers); record fields must be equal.
"""

from __future__ import annotations

import pytest

import logfunnel
from _need import need_module
from _netservers import DatagramServer, HTTPServer, RecordServer, SMTPServer
from _network_workers import (
    CONTAINER_EXTRAS,
    RECIPIENTS,
    SENDER,
    log_both_ways,
    log_container_extras,
    make_handler,
    run_workers,
)

WORKERS = 3
PER_WORKER = 7  # records emit_every_kind() logs
TOTAL = WORKERS * PER_WORKER
CREDENTIALS = ("logs-user", "s3cret pass:word")


@pytest.fixture
def ca():
    """A certificate authority made for the test (trustme)."""
    return need_module("trustme").CA()


@pytest.fixture
def cafile(ca, tmp_path):
    """The test CA's certificate, as a PEM file that a worker can load."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _both_ways(handle, kind, local, options, method="fork"):
    run_workers(method, log_both_ways, [(handle, kind, local.address, options, w) for w in range(WORKERS)])


def _assert_on_a_lane(listener, handler, count):
    """The listener ran *handler* on a lane of its own, which delivered all *count* records."""
    (lane,) = [lane for lane in listener.stats()["lanes"] if lane["handler"] == repr(handler)]
    assert (lane["handled"], lane["dropped"], lane["failed"], lane["undelivered"]) == (count, 0, 0, 0), lane


def _by_record(items):
    return sorted(items, key=lambda d: (d["process"], d["created"], d["msg"]))


# -- SocketHandler and DatagramHandler -----------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_socket_handler_sends_what_it_sends_from_the_worker(method):
    """SocketHandler behind the funnel: every pickled attribute dict equals the worker's own."""
    with RecordServer() as remote, RecordServer() as local:
        handler = make_handler("socket", remote.address)
        with logfunnel.start_listener(handlers=[handler]) as listener:
            _both_ways(listener.queue, "socket", local, {}, method)
        expected = _by_record(local.wait_for(TOTAL))
        got = _by_record(remote.wait_for(TOTAL))
        handler.close()
    assert len(expected) == TOTAL
    assert got == expected
    assert listener.stats()["received"] == TOTAL
    _assert_on_a_lane(listener, handler, TOTAL)


@pytest.mark.timeout(120)
def test_datagram_handler_sends_what_it_sends_from_the_worker():
    """DatagramHandler behind the funnel: every datagram's attribute dict equals the worker's own."""
    with DatagramServer() as remote, DatagramServer() as local:
        handler = make_handler("datagram", remote.address)
        with logfunnel.start_listener(handlers=[handler]) as listener:
            _both_ways(listener.queue, "datagram", local, {})
        expected = _by_record(local.wait_for(TOTAL))
        got = _by_record(remote.wait_for(TOTAL))
        handler.close()
    assert len(expected) == TOTAL
    assert got == expected


# -- HTTPHandler ---------------------------------------------------------------------------------------

# HTTPHandler sends record.__dict__ as it is. In the worker its `msg` is still the format string,
# `args` the arguments and `exc_info` the exception (with a traceback's address); behind the funnel,
# as behind the stdlib's QueueHandler, the message is merged in the worker (`msg` is the message,
# `args` None) and the exception travels rendered (`exc_text`, equal both ways), so those three
# fields are compared through the merged `message`, which HTTPHandler sends both ways.
_MERGED = ("msg", "args", "exc_info")


def _http_fields(requests, merged):
    fields = []
    for request in requests:
        item = request.fields
        if merged:
            assert item["msg"] == item["message"], "behind the funnel, msg is the merged message"
            assert item["args"] == "None" and item["exc_info"] == "None"
        for key in _MERGED:
            item.pop(key)
        item["msg"] = item["message"]  # for sorting
        fields.append(item)
    return _by_record(fields)


def _http_request_parts(request):
    """What must be equal besides the fields: method, path, TLS, and the headers that are not about
    the connection (the Host header names each server's own port)."""
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "host"}
    path = request.path.split("&", 1)[0] if request.method == "GET" else request.path
    return (request.method, path, request.tls, headers.get("authorization"),
            headers.get("content-type"))  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("method", "http_method"), [("fork", "GET"), ("spawn", "POST"), ("forkserver", "GET"), ("fork", "POST")]
)
def test_https_handler_with_credentials_sends_what_it_sends_from_the_worker(method, http_method, ca, cafile):
    """HTTPHandler (secure=True, a context trusting the test CA, Basic credentials): the same requests."""
    options = {"tls": True, "credentials": CREDENTIALS, "cafile": cafile, "method": http_method}
    with (
        HTTPServer(ca=ca, credentials=CREDENTIALS) as remote,
        HTTPServer(ca=ca, credentials=CREDENTIALS) as local,
    ):
        handler = make_handler("http", remote.address, **options)
        with logfunnel.start_listener(handlers=[handler]) as listener:
            _both_ways(listener.queue, "http", local, options, method)
        expected, got = local.wait_for(TOTAL), remote.wait_for(TOTAL)
    assert len(expected) == TOTAL and len(got) == TOTAL
    assert _http_fields(got, merged=True) == _http_fields(expected, merged=False)
    assert {_http_request_parts(r) for r in got} == {_http_request_parts(r) for r in expected}
    assert remote.unauthorized == 0 and all(r.tls for r in got)
    _assert_on_a_lane(listener, handler, TOTAL)


@pytest.mark.timeout(120)
def test_plain_http_get_handler_sends_what_it_sends_from_the_worker():
    """HTTPHandler over plain HTTP without credentials: the same query strings."""
    options = {"method": "GET"}
    with HTTPServer() as remote, HTTPServer() as local:
        with logfunnel.start_listener(handlers=[make_handler("http", remote.address, **options)]) as listener:
            _both_ways(listener.queue, "http", local, options)
        expected, got = local.wait_for(TOTAL), remote.wait_for(TOTAL)
    assert _http_fields(got, merged=True) == _http_fields(expected, merged=False)
    assert {_http_request_parts(r) for r in got} == {_http_request_parts(r) for r in expected}


@pytest.mark.timeout(120)
def test_http_handler_given_to_a_log_manager_sends_what_it_sends_from_the_worker():
    """HTTPHandler (POST, Basic credentials) handed to LogManager(handlers=[...]): the same requests."""
    options = {"credentials": CREDENTIALS, "method": "POST"}
    with HTTPServer(credentials=CREDENTIALS) as remote, HTTPServer(credentials=CREDENTIALS) as local:
        with logfunnel.LogManager(handlers=[make_handler("http", remote.address, **options)]) as manager:
            _both_ways(manager.queue, "http", local, options, "spawn")
        expected, got = local.wait_for(TOTAL), remote.wait_for(TOTAL)
    assert _http_fields(got, merged=True) == _http_fields(expected, merged=False)
    assert {_http_request_parts(r) for r in got} == {_http_request_parts(r) for r in expected}
    assert remote.unauthorized == 0


@pytest.mark.timeout(120)
def test_https_handler_in_a_log_manager_sends_what_it_sends_from_the_worker(ca, cafile):
    """HTTPHandler in a LogManager (configured there: an SSLContext does not pickle): the same requests."""
    options = {"tls": True, "credentials": CREDENTIALS, "cafile": cafile, "method": "POST"}
    with (
        HTTPServer(ca=ca, credentials=CREDENTIALS) as remote,
        HTTPServer(ca=ca, credentials=CREDENTIALS) as local,
    ):
        config = {
            "version": 1,
            "handlers": {
                "http": {
                    "()": "_network_workers.make_handler",
                    "kind": "http",
                    "address": list(remote.address),
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                }
            },
            "root": {"level": "DEBUG", "handlers": ["http"]},
        }
        with logfunnel.LogManager(config=config, start_method="spawn") as manager:
            _both_ways(manager.queue, "http", local, options)
        expected, got = local.wait_for(TOTAL), remote.wait_for(TOTAL)
    assert _http_fields(got, merged=True) == _http_fields(expected, merged=False)
    assert {_http_request_parts(r) for r in got} == {_http_request_parts(r) for r in expected}


# -- SMTPHandler ---------------------------------------------------------------------------------------


def _mails(mails):
    """Each message's envelope, headers (the Date excepted: each handler stamps its own) and body."""
    items = []
    for mail in mails:
        headers = [(k, v) for k, v in mail.message.items() if k != "Date"]
        items.append((mail.mail_from, tuple(mail.rcpt_tos), tuple(headers), mail.message.get_payload(),
                      mail.tls, mail.login))  # fmt: skip
    return sorted(items, key=lambda item: item[3])


def _run_smtp(owner, server_options, handler_options, method="fork"):
    with SMTPServer(**server_options) as remote, SMTPServer(**server_options) as local:
        if owner == "listener":
            handler = make_handler("smtp", remote.address, **handler_options)
            with logfunnel.start_listener(handlers=[handler]) as listener:
                _both_ways(listener.queue, "smtp", local, handler_options, method)
            _assert_on_a_lane(listener, handler, TOTAL)
        else:
            handler = make_handler("smtp", remote.address, **handler_options)
            with logfunnel.LogManager(handlers=[handler]) as manager:
                _both_ways(manager.queue, "smtp", local, handler_options, method)
        return local.wait_for(TOTAL), remote.wait_for(TOTAL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("owner", ["listener", "manager"])
def test_smtp_handler_sends_what_it_sends_from_the_worker(owner):
    """SMTPHandler, plain SMTP, owned by a listener or a LogManager: the same messages."""
    expected, got = _run_smtp(owner, {}, {})
    assert len(expected) == TOTAL
    assert _mails(got) == _mails(expected)
    assert {m.mail_from for m in got} == {SENDER} and all(m.rcpt_tos == RECIPIENTS for m in got)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("owner", ["listener", "manager"])
def test_smtp_handler_with_starttls_and_credentials_sends_what_it_sends_from_the_worker(owner, ca):
    """SMTPHandler with secure=() (STARTTLS) and credentials (AUTH): the same messages, sent logged in."""
    expected, got = _run_smtp(owner, {"ca": ca, "credentials": CREDENTIALS},
                              {"tls": True, "credentials": CREDENTIALS})  # fmt: skip
    assert len(expected) == TOTAL
    assert _mails(got) == _mails(expected)
    assert all(m.tls and m.login == CREDENTIALS[0] for m in got)


# -- extras that are containers ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_tuple_set_bytes_and_int_key_extras_keep_their_types_across_the_wire(method):
    """Fixed: tuples arrived as lists, int keys as strings, sets and bytes as their repr; now the
    SocketHandler behind the funnel pickles the same values the worker's own does."""
    with RecordServer() as remote, RecordServer() as local:
        handler = make_handler("socket", remote.address)
        with logfunnel.start_listener(handlers=[handler]) as listener:
            run_workers(method, log_container_extras, [(listener.queue, "socket", local.address)])
        count = len(CONTAINER_EXTRAS)
        expected, got = _by_record(local.wait_for(count)), _by_record(remote.wait_for(count))
        handler.close()
    assert len(expected) == count and not remote.errors
    assert got == expected
    for state in got:
        key = state["msg"].split()[-1]
        assert _same(state[key], CONTAINER_EXTRAS[key]), key


def _same(a, b) -> bool:
    """Equal, and of the same types all the way down (a set's members are scalars: equality will do;
    its repr would depend on the order of insertion)."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, (list, tuple)):
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return all(type(k) is type(next(j for j in b if j == k)) and _same(v, b[k]) for k, v in a.items())
    return True


@pytest.mark.parametrize(
    "text",
    [
        b'{"\\u0000s":[[1,2]]}',  # a set member that is a list
        b'{"\\u0000s":[{"\\u0000t":[1]}]}',  # a tuple in a set: its hash could be made to collide
        b'{"\\u0000d":[[[1],2]]}',  # a dict key that is a list
        b'{"\\u0000d":[[1,2,3]]}',  # not a pair
        b'{"\\u0000d":[[18446744073709551616,1]]}',  # an int key beyond 64 bits
        b'{"\\u0000b":"\\u0100"}',  # bytes beyond latin-1
        b'{"\\u0000x":[]}',  # an unknown tag
    ],
    ids=[
        "list-in-set",
        "tuple-in-set",
        "list-key",
        "not-a-pair",
        "huge-int-key",
        "wide-bytes",
        "unknown-tag",
    ],
)
def test_nested_values_that_nest_cannot_make_are_refused(text):
    """A peer's tagged JSON that no worker makes is a ValueError (the batch is refused), never a value."""
    from logfunnel import _wire

    with pytest.raises(ValueError, match=r"plain scalar|pair|unknown or malformed|latin-1|codec"):
        _wire.unnest(text)
