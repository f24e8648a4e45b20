"""``RFC5424Handler``: RFC 5424 syslog messages over UDP, TCP, TLS or RELP, sent by a thread of its own.

``emit`` formats the record (the handler's formatter makes the MSG, tracebacks included), serialises it
and appends the bytes to a bounded buffer; it never waits for the network. A sender thread connects,
sends in batches, and when the server is away keeps the messages and reconnects with exponential
back-off. The handler is a lane (``lane_stats()``, ``drain(timeout)``), so a logfunnel listener keeps
it inline and lists its figures in ``stats()["lanes"]``.

What each transport promises:

- ``"udp"`` (RFC 5426): one datagram per message, cut to ``max_size`` bytes (counted as truncated);
  nothing tells whether it arrived.
- ``"tcp"`` (RFC 6587 octet counting) and ``"tls"`` (RFC 5425, certificates verified by default): a
  message is *handled* once the peer's TCP has acknowledged its bytes (Linux: ``SIOCOUTQ``). When a
  connection breaks, the messages written but not yet acknowledged are counted as ``possibly_lost``
  (they may have arrived; they are not sent again, so never twice), and what was never written is sent
  on the next connection. A server that dies with received bytes it had not read yet loses them too,
  which no TCP sender can see.
- ``"relp"`` (rsyslog's acknowledged protocol): *handled* means acknowledged by the server; after a
  broken connection every unacknowledged message is sent again (counted as ``retransmitted``: those
  may arrive twice), so a server crash loses nothing.

Accounting holds exactly: every record given to ``emit`` is handled, dropped (buffer full), failed
(could not be formatted), possibly lost, or still waiting (``backlog``, plus ``unconfirmed``: written,
not yet known delivered).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from .._checks import check_count, check_seconds, describe
from .._handling import banner
from ._connections import Connection, RelpLink, StreamLink, UdpLink
from ._rfc5424 import Serialiser, truncate

if TYPE_CHECKING:
    import ssl

__all__ = ["RFC5424Handler"]

TRANSPORTS = ("udp", "tcp", "tls", "relp")
WHEN_FULL = ("drop_newest", "drop_oldest")
#: How long a sender waits between checks that written messages were acknowledged.
CONFIRM_POLL = 0.02

_handlers: weakref.WeakSet[RFC5424Handler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_handlers):
        handler._forget_parent()  # noqa: SLF001


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RFC5424Handler(logging.Handler):
    """Send records as RFC 5424 messages to a syslog server at *address* (``(host, port)``).

    *transport* is ``"udp"``, ``"tcp"`` (default), ``"tls"`` or ``"relp"``. The header: *facility*
    (name or number, default ``user``) and the record's level through *severities* (level -> 0..7,
    default ``SysLogHandler``'s mapping; levels between go to the nearest mapped level below), the
    record's ``created`` with microseconds and the local UTC offset (``utc=True``: in UTC, ``Z``),
    *hostname* (default ``socket.gethostname()``), *app_name* (default the program's name), PROCID the
    record's ``process`` (the worker's pid behind a listener), MSGID *msgid* (a string, a callable of
    the record, or None: the logger's name, cut to 32 characters). STRUCTURED-DATA is one element
    *sd_id* (default ``extra@32473``; 32473 is the example enterprise number of RFC 5612: put your
    own) holding the record's extras: all of them (``extras=None``), only the names given, or none
    (``extras=()``). MSG is the formatter's text after a UTF-8 BOM (``bom=False`` leaves it out).

    TLS verifies the server's certificate by default (``ssl.create_default_context(cafile=cafile)``,
    checking *server_hostname*, default the host of *address*); pass *ssl_context* to choose anything
    else, *certfile*/*keyfile* to present a client certificate. RELP takes the same TLS options when
    *ssl_context* or *cafile* is given.

    *capacity* messages and *max_bytes* bytes bound the buffer; past either, *when_full*
    (``"drop_newest"`` or ``"drop_oldest"``) says which record is dropped, and counted. *max_size*
    cuts longer messages (default 2048 bytes over UDP, unlimited otherwise). Reconnection waits
    *retry_initial* seconds, doubling up to *retry_max*. *timeout* bounds a connect and a blocked
    send; ``flush()`` waits at most *drain_timeout* and ``close()`` drains for at most as long.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        transport: str = "tcp",
        level: int | str = logging.NOTSET,
        facility: str | int = "user",
        severities: Mapping[int, int] | None = None,
        hostname: str | None = None,
        app_name: str | None = None,
        msgid: str | Callable[[logging.LogRecord], str] | None = None,
        extras: Collection[str] | None = None,
        sd_id: str = "extra@32473",
        utc: bool = False,
        bom: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        cafile: str | os.PathLike[str] | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        server_hostname: str | None = None,
        max_size: int | None = None,
        capacity: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        when_full: str = "drop_newest",
        batch_size: int = 512,
        timeout: float = 5.0,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        drain_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        super().__init__(level)
        if (
            not isinstance(address, tuple)
            or len(address) != 2
            or not isinstance(address[0], str)
            or not isinstance(address[1], int)
            or isinstance(address[1], bool)
            or not 0 < address[1] < 65536
        ):
            raise TypeError(
                f"RFC5424Handler expected an address (host, port) such as ('127.0.0.1', 514), got "
                f"{describe(address)}"
            )
        if transport not in TRANSPORTS:
            raise ValueError(
                f"RFC5424Handler expected a transport of {', '.join(map(repr, TRANSPORTS))}, got "
                f"{describe(transport)}"
            )
        if when_full not in WHEN_FULL:
            raise ValueError(
                f"RFC5424Handler expected when_full 'drop_newest' or 'drop_oldest', got {describe(when_full)}"
            )
        for option, value, low in (
            ("capacity", capacity, 1),
            ("max_bytes", max_bytes, 1),
            ("batch_size", batch_size, 1),
            ("max_size", 2048 if max_size is None else max_size, 64),
        ):
            check_count(value, "RFC5424Handler", option, low)
        for option, number in (
            ("timeout", timeout),
            ("retry_initial", retry_initial),
            ("retry_max", retry_max),
            ("drain_timeout", drain_timeout),
        ):
            check_seconds(number, "RFC5424Handler", option)
        self.serialise = Serialiser(
            facility=facility,
            severities=severities,
            hostname=hostname,
            app_name=app_name,
            msgid=msgid,
            extras=extras,
            sd_id=sd_id,
            utc=utc,
            bom=bom,
        )
        self.address = (address[0], address[1])
        self.transport = transport
        self.ssl_context = self._make_context(transport, ssl_context, cafile, certfile, keyfile)
        self.server_hostname = server_hostname
        self.max_size = max_size if max_size is not None else (2048 if transport == "udp" else None)
        self.capacity, self.max_bytes, self.when_full = capacity, max_bytes, when_full
        self.batch_size, self.timeout = batch_size, float(timeout)
        self.retry_initial, self.retry_max = float(retry_initial), float(retry_max)
        self.drain_timeout = float(drain_timeout)
        self.name = name or f"rfc5424-{transport}-{address[0]}:{address[1]}"
        self._setup()
        _handlers.add(self)

    @staticmethod
    def _make_context(
        transport: str,
        context: ssl.SSLContext | None,
        cafile: str | os.PathLike[str] | None,
        certfile: str | os.PathLike[str] | None,
        keyfile: str | os.PathLike[str] | None,
    ) -> ssl.SSLContext | None:
        if context is not None or (transport != "tls" and cafile is None and certfile is None):
            return context
        import ssl  # only TLS users pay for the import

        context = ssl.create_default_context(cafile=None if cafile is None else os.fspath(cafile))
        if certfile is not None:
            context.load_cert_chain(os.fspath(certfile), None if keyfile is None else os.fspath(keyfile))
        return context

    def _setup(self) -> None:
        """The per-process state: buffer, counters, no thread and no connection yet."""
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._buffer: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._thread: threading.Thread | None = None
        self._link: Connection | None = None
        self._closing = False
        self._abandoned = False
        self._stop = threading.Event()  # ends a back-off wait (a new record does not)
        self._sending = 0  # messages taken from the buffer by the sender, not yet accounted for
        self._unconfirmed = 0
        self.counts = {
            "emitted": 0,
            "handled": 0,
            "dropped": 0,
            "failed": 0,
            "retried": 0,
            "retransmitted": 0,
            "possibly_lost": 0,
            "refused": 0,  # refused by the server (RELP 500): given up, never sent again
            "truncated": 0,
            "undelivered": 0,
            "connects": 0,
            "connect_failures": 0,
        }
        self.last_error: str | None = None

    def _forget_parent(self) -> None:
        # A forked child must not write into the parent's socket or wait for the parent's thread;
        # the parent's buffered messages are the parent's to send.
        self.createLock()
        self._setup()

    # --- the logging side --------------------------------------------------------------------------
    def prepare(self, record: logging.LogRecord) -> bytes:
        """The RFC 5424 bytes for *record* (its MSG from ``self.format``), cut to ``max_size``."""
        message = self.serialise(record, self.format(record))
        if self.max_size is not None and len(message) > self.max_size:
            message = truncate(message, self.max_size)
            self.counts["truncated"] += 1
        return message

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and append it to the buffer; never waits for the network."""
        if self._pid != os.getpid():
            self._forget_parent()
        try:
            message = self.prepare(record)
        except Exception:
            with self._cond:
                self.counts["emitted"] += 1
                self.counts["failed"] += 1
            self.handleError(record)
            return
        self.enqueue(message)

    def enqueue(self, message: bytes) -> None:
        """Append *message* to the buffer (or drop by ``when_full``), and wake the sender."""
        with self._cond:
            self.counts["emitted"] += 1
            if self._closing:  # closed: nothing would send it
                self.counts["dropped"] += 1
                return
            # the batch the sender holds counts against the bound too: it goes back on a failure
            held = self._sending
            if (
                len(self._buffer) + held >= self.capacity
                or self._buffered_bytes + len(message) > self.max_bytes
            ):
                if self.when_full == "drop_newest" or not self._buffer:
                    self.counts["dropped"] += 1
                    return
                while self._buffer and (
                    len(self._buffer) + held >= self.capacity
                    or self._buffered_bytes + len(message) > self.max_bytes
                ):
                    self._buffered_bytes -= len(self._buffer.popleft())
                    self.counts["dropped"] += 1
            self._buffer.append(message)
            self._buffered_bytes += len(message)
            if self._thread is None and not self._abandoned:
                self._start_sender()
            self._cond.notify()

    def _start_sender(self) -> None:
        thread = threading.Thread(target=self._run, name=f"logfunnel-{self.name}", daemon=True)
        self._thread = thread
        thread.start()

    # --- the sender thread -------------------------------------------------------------------------
    def _connect(self) -> Connection:
        if self.transport == "udp":
            return UdpLink(self.address, self.timeout)
        if self.transport == "relp":
            return RelpLink(self.address, self.timeout, self.ssl_context, self.server_hostname)
        return StreamLink(self.address, self.timeout, self.ssl_context, self.server_hostname)

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    if self._link is not None and self._unconfirmed:
                        break
                    self._cond.wait()
                if self._closing and not self._buffer and not self._unconfirmed:
                    break
                if self._abandoned:
                    break
                batch = self._take()
            link = self._link
            if link is None:
                try:
                    link = self._connect()
                except Exception as exc:
                    self._failed_connect(batch, exc, delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                delay = self.retry_initial
                with self._cond:
                    self._link = link
                    self.counts["connects"] += 1
            written = False
            try:
                if link.broken():
                    raise ConnectionResetError("the server closed the connection")
                if batch:
                    written = True
                    link.send(batch)
                with self._cond:
                    self._sending = 0
                    self._unconfirmed = link.unconfirmed
                if not batch:
                    link.settle(CONFIRM_POLL)
                self._account(link.confirm())
                self._take_refused(link)
                if not batch and link.unconfirmed:
                    with self._cond:  # written, not yet acknowledged: look again soon (or on a new record)
                        if not self._buffer and not self._closing:
                            self._cond.wait(CONFIRM_POLL)
            except Exception as exc:
                self._broken(link, exc, [] if written else batch)
        link = self._link
        if link is not None:
            link.close()
            self._link = None

    def _take(self) -> list[bytes]:
        """Up to ``batch_size`` messages from the front of the buffer (the lock is held)."""
        batch: list[bytes] = []
        size = 0
        while self._buffer and len(batch) < self.batch_size and size < 1024 * 1024:
            message = self._buffer.popleft()
            batch.append(message)
            size += len(message)
        self._buffered_bytes -= size
        self._sending = len(batch)
        return batch

    def _put_back(self, messages: list[bytes]) -> None:
        """Return *messages* to the front of the buffer, oldest first (the lock is held)."""
        self._buffer.extendleft(reversed(messages))
        self._buffered_bytes += sum(map(len, messages))
        self._sending = 0

    def _account(self, confirmed: int) -> None:
        with self._cond:
            link = self._link
            self._unconfirmed = link.unconfirmed if link is not None else 0
            if confirmed:
                self.counts["handled"] += confirmed
                self._cond.notify_all()

    def _take_refused(self, link: Connection) -> None:
        refused, why = link.take_refused()
        if not refused:
            return
        with self._cond:
            self.counts["refused"] += refused
            self._cond.notify_all()
        banner(
            f"logfunnel: {self.name}: {why}; {refused} refused message(s) given up, counted as refused, "
            "never sent again",
            kind=f"rfc5424-refused-{id(self)}",
        )

    def _failed_connect(self, batch: list[bytes], exc: Exception, delay: float) -> None:
        with self._cond:
            self._put_back(batch)
            self.counts["connect_failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            waiting = len(self._buffer)
        banner(
            f"logfunnel: {self.name} cannot connect to {self.address[0]}:{self.address[1]} over "
            f"{self.transport} ({self.last_error}); {waiting} messages wait, next try in {delay:.1f} s",
            kind=f"rfc5424-connect-{id(self)}",
        )
        self._stop.wait(delay)

    def _broken(self, link: Connection, exc: Exception, unwritten: list[bytes]) -> None:
        try:
            link.close()
        except Exception:
            pass
        try:
            confirmed = link.confirm()  # RELP: acknowledged before the failure; TCP: raises, none
        except Exception:
            confirmed = 0
        self._take_refused(link)
        again, lost, retransmitted = link.salvage()
        again += unwritten
        with self._cond:
            self._link = None
            self._unconfirmed = 0
            self._sending = 0
            self._put_back(again)
            self.counts["handled"] += confirmed
            self.counts["possibly_lost"] += lost
            self.counts["retransmitted"] += retransmitted
            self.counts["retried"] += len(again)
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._cond.notify_all()
        banner(
            f"logfunnel: {self.name} lost its connection to {self.address[0]}:{self.address[1]} "
            f"({self.last_error}); {lost} messages written may not have arrived, {len(again)} will be "
            f"sent again",
            kind=f"rfc5424-broken-{id(self)}",
        )

    # --- the lane protocol -------------------------------------------------------------------------
    def lane_stats(self) -> dict[str, Any]:
        """The lane's figures: the lane protocol's keys plus this handler's own."""
        with self._cond:
            if self._abandoned:
                state = "abandoned"
            elif self._closing and self._thread is None:
                state = "stopped"
            else:
                state = "running"
            return {
                "name": self.name,
                "handler": repr(self),
                "backlog": len(self._buffer) + self._sending,
                "unconfirmed": self._unconfirmed,
                "state": state,
                "transport": self.transport,
                "address": f"{self.address[0]}:{self.address[1]}",
                "connected": self._link is not None,
                "last_error": self.last_error,
                **self.counts,
            }

    def _waiting(self) -> int:
        return len(self._buffer) + self._sending + self._unconfirmed

    def drain(self, timeout: float) -> int:
        """Wait at most *timeout* s until everything buffered is delivered; return how many were not."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            if self._pid != os.getpid():
                return 0
            while self._waiting() and self._thread is not None and not self._abandoned:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, CONFIRM_POLL))
            left_behind = self._waiting()
            self.counts["undelivered"] = left_behind
            return left_behind

    def flush(self) -> None:
        """Wait at most ``drain_timeout`` for the buffer to be delivered."""
        if self._thread is not None:
            self.drain(self.drain_timeout)

    def close(self) -> None:
        """Drain for at most ``drain_timeout``, then stop the sender and close the connection."""
        try:
            if self._pid == os.getpid() and self._thread is not None and not self._closing:
                self.drain(self.drain_timeout)
                with self._cond:
                    self._closing = True
                    left = self._waiting()
                    if left:  # what could not be delivered in time stays counted, never sent late
                        self._abandoned = True
                        self.counts["undelivered"] = left
                    self._cond.notify_all()
                self._stop.set()
                thread = self._thread
                thread.join(self.timeout + 1.0)
                with self._cond:
                    if thread.is_alive():  # stuck in a send: it gives up at its socket timeout
                        self._abandoned = True
                    else:
                        self._thread = None
                if left:
                    banner(
                        f"logfunnel: {self.name} closed with {left} messages undelivered to "
                        f"{self.address[0]}:{self.address[1]} ({self.last_error or 'not delivered in time'})"
                    )
            else:
                with self._cond:
                    self._closing = True
        finally:
            super().close()

    def __repr__(self) -> str:
        return f"<RFC5424Handler {self.transport}://{self.address[0]}:{self.address[1]} ({self.name})>"
