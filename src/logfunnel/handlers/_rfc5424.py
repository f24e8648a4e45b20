"""RFC 5424 messages from ``LogRecord`` objects: the header, the structured data and the MSG.

``Serialiser(...)(record, msg)`` returns the message bytes without any transport framing::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA BOM MSG

Header fields are cut to RFC 5424's limits (HOSTNAME 255, APP-NAME 48, PROCID 128, MSGID 32 octets)
and every character outside printable US-ASCII (33..126) in them is replaced by ``_``; an empty field
is the NILVALUE ``-``. Structured data comes from the record's extras (the attributes a ``LogRecord``
does not have by itself): one SD-ELEMENT whose SD-ID is chosen by the handler, one SD-PARAM per extra,
its value the string itself or, for other types, JSON. PARAM-NAMEs that break the SD-NAME rules
(1 to 32 printable US-ASCII characters except ``=``, space, ``]`` and ``"``) have each offending
character replaced by ``_`` and are cut to 32 characters, so the same name always becomes the same
PARAM-NAME; PARAM-VALUEs escape ``"``, ``\\`` and ``]`` with a backslash. The cost of a record is linear
in its size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Collection, Mapping

__all__ = [
    "FACILITIES",
    "LEVEL_SEVERITIES",
    "MAX_APP_NAME",
    "MAX_HOSTNAME",
    "MAX_MSGID",
    "MAX_PROCID",
    "STANDARD_ATTRIBUTES",
    "Serialiser",
    "header_field",
    "sd_name",
    "sd_value",
    "severity_for",
]

#: RFC 5424 section 6.2.1, with the names the standard library's ``SysLogHandler`` accepts.
FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}

#: Each standard level's severity, as ``SysLogHandler.priority_map`` maps them.
LEVEL_SEVERITIES: dict[int, int] = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID, MAX_SD_NAME = 255, 48, 128, 32, 32

#: The attributes every ``LogRecord`` has (and those formatters add); all others are extras.
STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_NOT_SD_NAME = re.compile(r'[^\x21-\x7e]|[= \]"]')
_SD_ESCAPE = re.compile(r'(["\\\]])')
BOM = b"\xef\xbb\xbf"


def header_field(value: object, limit: int) -> str:
    """*value* as a header field: printable US-ASCII only (others become ``_``), at most *limit* long."""
    text = _NOT_PRINTABLE.sub("_", str(value)[:limit])
    return text or "-"


def sd_name(name: str) -> str:
    """*name* as a valid SD-NAME: offending characters replaced by ``_``, cut to 32 characters."""
    return _NOT_SD_NAME.sub("_", name[:MAX_SD_NAME]) or "_"


def sd_value(value: object) -> str:
    """*value* as an escaped PARAM-VALUE (strings as they are; anything else as JSON)."""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False, default=repr)
        except (ValueError, TypeError, RecursionError):  # circular containers, odd keys
            value = repr(value)
    return _SD_ESCAPE.sub(r"\\\1", value)


def severity_for(levelno: int, mapping: Mapping[int, int] = LEVEL_SEVERITIES) -> int:
    """The severity of *levelno*: its own entry, else that of the nearest mapped level below it."""
    severity = mapping.get(levelno)
    if severity is not None:
        return severity
    below = [level for level in mapping if level <= levelno]
    return mapping[max(below)] if below else 7


def default_app_name() -> str:
    """The program's name: the base name of ``sys.argv[0]`` (``python`` for ``-c`` and the REPL)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("-c", "-m", "-") else "python"


class Serialiser:
    """Turns a record and its formatted MSG into RFC 5424 bytes; the options are checked once, here."""

    def __init__(
        self,
        *,
        facility: str | int = "user",
        severities: Mapping[int, int] | None = None,
        hostname: str | None = None,
        app_name: str | None = None,
        msgid: str | Callable[[logging.LogRecord], str] | None = None,
        extras: Collection[str] | None = None,
        sd_id: str = "extra@32473",
        utc: bool = False,
        bom: bool = True,
    ) -> None:
        if isinstance(facility, str):
            if facility not in FACILITIES:
                raise ValueError(
                    f"RFC5424Handler expected a facility name such as 'user' or 'local0' (one of "
                    f"{', '.join(FACILITIES)}) or a number 0-23, got {facility!r}"
                )
            facility = FACILITIES[facility]
        if not isinstance(facility, int) or isinstance(facility, bool) or not 0 <= facility <= 23:
            raise ValueError(f"RFC5424Handler expected a facility number 0-23 or a name, got {facility!r}")
        self.facility = facility
        self.severities = dict(LEVEL_SEVERITIES if severities is None else severities)
        for level, severity in self.severities.items():
            if not isinstance(severity, int) or not 0 <= severity <= 7:
                raise ValueError(
                    f"RFC5424Handler expected severities 0-7 for each level, got {severity!r} for {level!r}"
                )
        self.hostname = header_field(socket.gethostname() if hostname is None else hostname, MAX_HOSTNAME)
        self.app_name = header_field(default_app_name() if app_name is None else app_name, MAX_APP_NAME)
        if msgid is None or callable(msgid):
            self.msgid: Callable[[logging.LogRecord], str] | None = msgid
            self.fixed_msgid = ""
        else:
            self.msgid, self.fixed_msgid = None, header_field(msgid, MAX_MSGID)
        if isinstance(extras, str):
            raise TypeError(
                f"RFC5424Handler expected extras as a collection of attribute names or None (all), "
                f"got the string {extras!r}; write extras=[{extras!r}]"
            )
        self.extras = None if extras is None else tuple(extras)
        if sd_name(sd_id) != sd_id:
            raise ValueError(
                f"RFC5424Handler expected an SD-ID of 1-32 printable US-ASCII characters without '=', "
                f"space, ']' or '\"' (such as 'extra@32473', with your enterprise number), got {sd_id!r}"
            )
        self.sd_id = sd_id
        self.utc = utc
        self.bom = BOM if bom else b""
        self._second: tuple[int, str, str] = (-1, "", "")
        self._msgids: dict[str, str] = {}
        self._pris = {severity: f"<{facility * 8 + severity}>1 " for severity in range(8)}

    def timestamp(self, created: float) -> str:
        """RFC 3339 with microseconds and the UTC offset (``Z`` when ``utc=True``), rounded as
        ``datetime.fromtimestamp`` rounds; the date, time and offset are computed once per second."""
        second = math.floor(created)
        micro = round((created - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        cached = self._second
        if cached[0] != second:
            tm = time.gmtime(second) if self.utc else time.localtime(second)
            if self.utc:
                offset = "Z"
            else:
                minutes = (tm.tm_gmtoff or 0) // 60
                offset = "%s%02d:%02d" % ("-" if minutes < 0 else "+", abs(minutes) // 60, abs(minutes) % 60)
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", tm), offset)
        return "%s.%06d%s" % (cached[1], micro, cached[2])

    def structured_data(self, record: logging.LogRecord) -> str:
        """One SD-ELEMENT of the record's extras, or ``-`` when it has none."""
        state = record.__dict__
        if self.extras is None:
            names: Collection[str] = [name for name in state if name not in STANDARD_ATTRIBUTES]
        else:
            names = [name for name in self.extras if name in state]
        if not names:
            return "-"
        params = " ".join(f'{sd_name(str(name))}="{sd_value(state[name])}"' for name in names)
        return f"[{self.sd_id} {params}]"

    def __call__(self, record: logging.LogRecord, msg: str) -> bytes:
        """The message bytes for *record* with *msg* (the formatted text) as its MSG."""
        severity = self.severities.get(record.levelno)
        if severity is None:
            severity = severity_for(record.levelno, self.severities)
        if self.msgid is None:
            msgid = self.fixed_msgid or self._msgids.get(record.name, "")
            if not msgid:
                if len(self._msgids) > 10_000:  # logger names are few; never let them grow unbounded
                    self._msgids.clear()
                msgid = self._msgids[record.name] = header_field(record.name, MAX_MSGID)
        else:
            msgid = header_field(self.msgid(record), MAX_MSGID)
        process = record.process
        procid = str(process) if type(process) is int else header_field(process, MAX_PROCID)
        head = (
            f"{self._pris[severity]}{self.timestamp(record.created)} {self.hostname} {self.app_name} "
            f"{procid} {msgid} {self.structured_data(record)}"
        )
        # surrogates (from undecodable bytes) must not make a log call fail
        body = msg.encode("utf-8", "backslashreplace")
        return b"%s %s%s" % (head.encode("utf-8", "backslashreplace"), self.bom, body)


def truncate(message: bytes, limit: int) -> bytes:
    """*message* cut to at most *limit* bytes, never inside a UTF-8 sequence."""
    if len(message) <= limit:
        return message
    cut = limit
    while cut > 0 and (message[cut] & 0xC0) == 0x80:  # a continuation byte: step back to its lead
        cut -= 1
    return message[:cut]
