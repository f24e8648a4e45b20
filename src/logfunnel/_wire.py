"""What travels between a worker and the listener, and how it is checked.

A frame is a 4-byte big-endian length followed by that many bytes. After the handshake every frame
holds a pickle made only of plain values (None, bool, int, float, str, bytes and containers of them):
workers replace anything else by its ``repr`` before sending, and the listener's unpickler refuses
every global, so bytes from a socket can never name a class or a function to run.

Messages from a worker after the handshake::

    (BATCH, first_seq, stamped, dropped, lost, levels, lines, records)
    (BYE, stamped, dropped, lost)

``first_seq`` is the per-process sequence number of the batch's first record (the rest follow without
gaps), ``stamped`` how many records the process has accepted into its buffer so far, ``dropped`` how
many it refused (buffer full) and ``lost`` how many it knows never reached a listener (sent on a
connection that died before the listener acknowledged them). ``levels`` holds each record's level,
``lines`` one list of pre-rendered lines per formatter in the listener's plan, and ``records`` the
records' attribute dicts when the listener asked for whole records, else None.

The listener answers ``(ACK, seq)`` once it has handled every record up to ``seq``.
"""

from __future__ import annotations

import io
import logging
import pickle
import struct
import time
from typing import Any

__all__ = [
    "ACK",
    "BATCH",
    "BYE",
    "HEADER",
    "MAX_FRAME",
    "FrameError",
    "Renderer",
    "decode",
    "encode",
    "formatter_spec",
    "frame",
    "record_state",
    "safe_repr",
    "wire_safe",
]

BATCH = 1
BYE = 2
ACK = 3

HEADER = struct.Struct("!I")
#: The largest frame a listener accepts; a worker splits batches (and in the end truncates a single
#: record's message) to stay below it.
MAX_FRAME = 64 * 1024 * 1024

_PROTOCOL = 5
_SCALARS = (str, int, float, bool, type(None), bytes)
_CONTAINERS = (tuple, list, set, frozenset)
_MAX_DEPTH = 32


class FrameError(Exception):
    """A peer sent bytes that are not a well-formed logfunnel frame."""


class _NotWireSafe(Exception):
    pass


class _WirePickler(pickle.Pickler):
    # The C pickler calls reducer_override only for objects that are not of a plain built-in type,
    # so a batch of plain records pickles at full C speed and anything else is caught here.
    def reducer_override(self, obj: Any) -> Any:
        raise _NotWireSafe(type(obj).__name__)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refused global {module}.{name}: logfunnel frames carry plain values only"
        )


def encode(obj: Any) -> bytes:
    """Pickle *obj*; raise ``ValueError`` if it holds anything but plain values."""
    buf = io.BytesIO()
    try:
        _WirePickler(buf, protocol=_PROTOCOL).dump(obj)
    except _NotWireSafe as exc:
        raise ValueError(f"not a plain value: {exc}") from None
    return buf.getvalue()


def frame(payload: bytes) -> bytes:
    """Prefix *payload* with its length."""
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes | memoryview) -> Any:
    """Unpickle a frame's payload, refusing every global; raise ``FrameError`` on anything odd."""
    try:
        return _RestrictedUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # a crafted pickle can raise nearly anything
        raise FrameError(f"undecodable frame ({type(exc).__name__}: {exc})") from None


def safe_repr(value: object) -> str:
    """``repr(value)`` that never raises."""
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__} object: {type(exc).__name__}>"


def wire_safe(value: object, depth: int = 0) -> bool:
    """Whether *value* is made only of plain values that the listener's unpickler accepts."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth > _MAX_DEPTH:
        return False
    if kind in _CONTAINERS:
        return all(wire_safe(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if kind is dict:
        return all(
            wire_safe(k, depth + 1) and wire_safe(v, depth + 1)
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    return False


def record_state(state: dict[str, Any]) -> dict[str, Any]:
    """Replace, in place, the values of a record's attribute dict that cannot cross the wire."""
    for key, value in state.items():
        if not wire_safe(value):
            state[key] = safe_repr(value)
    return state


# -- lines rendered where the spare cores are ------------------------------------------------------
#
# A plain ``logging.Formatter`` is fully described by a few strings, so the listener can send that
# description to every worker, and the worker renders each record's line itself: the listener then
# only writes bytes. Formatter subclasses may do anything, so their records travel whole instead.

_CONVERTERS: dict[str, Any] = {"local": time.localtime, "gm": time.gmtime}
_STYLE_CHARS: dict[Any, str] = {style: char for char, (style, _) in logging._STYLES.items()}  # noqa: SLF001
#: What a handler without a formatter uses (the same as logging's private default).
DEFAULT_FORMATTER = logging.Formatter()

_OVERRIDABLE = frozenset(
    {"format", "formatTime", "formatException", "formatMessage", "formatStack", "usesTime"}
)

Spec = tuple[str | None, str | None, str, dict[str, Any] | None, str, str | None, str]


def formatter_spec(formatter: logging.Formatter | None) -> Spec | None:
    """Describe *formatter* as plain values, or return None if a worker cannot reproduce it exactly."""
    if formatter is None:
        formatter = DEFAULT_FORMATTER
    if type(formatter) is not logging.Formatter:
        return None
    style = _STYLE_CHARS.get(type(formatter._style))  # noqa: SLF001
    converter = {fn: name for name, fn in _CONVERTERS.items()}.get(formatter.converter)
    defaults = getattr(formatter._style, "_defaults", None)  # noqa: SLF001
    if style is None or converter is None or not wire_safe(defaults):
        return None
    if _OVERRIDABLE.intersection(vars(formatter)):  # a method replaced on the instance
        return None
    return (
        formatter._fmt,  # noqa: SLF001
        formatter.datefmt,
        style,
        defaults,
        formatter.default_time_format,
        formatter.default_msec_format,
        converter,
    )


class Renderer(logging.Formatter):
    """A ``logging.Formatter`` rebuilt from a spec, rendering exactly what the original would.

    Two shortcuts that change no byte: ``time.strftime`` has a resolution of one second, so the text
    for a whole second is cached; and the message is the one ``FunnelHandler.prepare`` already merged
    (``record.message``), so arguments are not formatted twice.
    """

    def __init__(self, spec: Spec) -> None:
        fmt, datefmt, style, defaults, time_format, msec_format, converter = spec
        kwargs: dict[str, Any] = {"defaults": defaults} if defaults else {}
        super().__init__(fmt, datefmt, style, validate=False, **kwargs)  # type: ignore[arg-type]
        self.default_time_format = time_format
        self.default_msec_format = msec_format
        self.converter = _CONVERTERS[converter]
        self._uses_time = self.usesTime()
        # The common case, "%" style without defaults, is one string operation.
        self._percent = self._fmt if style == "%" and not defaults else None
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        created = record.created
        if created < 0:  # int() truncates toward zero: before the epoch, skip the cache
            text = time.strftime(datefmt or self.default_time_format, self.converter(created))
        else:
            second = int(created)
            if second != self._second:
                self._second_text = time.strftime(
                    datefmt or self.default_time_format, self.converter(created)
                )
                self._second = second
            text = self._second_text
        if datefmt or not self.default_msec_format:
            return text
        return self.default_msec_format % (text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format, less the call to record.getMessage().
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        if self._percent is not None:
            try:
                s = self._percent % record.__dict__
            except KeyError as exc:
                raise ValueError(f"Formatting field not found in record: {exc}") from None
        else:
            s = self.formatMessage(record)
        if record.exc_text:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + record.exc_text
        if record.stack_info:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + self.formatStack(record.stack_info)
        return s
