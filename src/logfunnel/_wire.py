"""What travels between a worker and the listener, and how it is checked.

A frame is a 4-byte big-endian length followed by that many bytes of MessagePack (msgspec's C codec).
MessagePack has no object references, no sets, no classes and no globals, so a frame can neither run
code nor make its decoder do more than one pass over its bytes; and a batch, the only large message,
is decoded against a schema (``Batch``) that refuses a container wherever a scalar belongs, every
integer outside 0 <= n < 2**63 and every map key that is not a string, *while* decoding: a hostile
frame is refused at its first wrong byte, before it has cost more than its own size. (Issue 8: pickle
frames of 468 KiB froze the listener for 13.7 s, 8 MB grew it by 1.95 GB; see ``benchmarks/``.)

Messages from a worker after the handshake (arrays; the generic ``decode`` gives the top level as a
tuple, inner arrays as lists)::

    (BATCH, first_seq, stamped, dropped, lost, levels, lines, records[, truncated, nested, escaped])
    (BYE, stamped, dropped, lost[, truncated])

``first_seq`` is the per-process sequence number of the batch's first record (the rest follow without
gaps), ``stamped`` how many records the process has accepted into its buffer so far, ``dropped`` how
many it refused (buffer full) and ``lost`` how many it knows never reached a listener (sent on a
connection that died before the listener acknowledged them). ``levels`` holds each record's level,
``lines`` one list of pre-rendered lines per formatter in the listener's plan, and ``records`` the
records' attribute dicts when the listener asked for whole records, else None. The optional tail:
``truncated`` counts the records this process has cut down to fit a frame; a record value that is a
container travels as ``Ext(NESTED, json)`` and ``nested`` lists each one as ``[index, key]``;
``escaped`` says that some strings with lone surrogates travel as ``Ext(ESCAPED, utf-8)``.

The listener answers ``(ACK, seq)`` once it has handled every record up to ``seq``.
"""

from __future__ import annotations

import json
import struct
from typing import Annotated, Any, Union

import msgspec
from msgspec.msgpack import Ext

__all__ = [
    "ACK",
    "BATCH",
    "BYE",
    "CHECKPOINT",
    "ESCAPED",
    "HEADER",
    "MAX_FRAME",
    "MAX_NESTED",
    "MAX_RECORDS",
    "MAX_TEXT",
    "NESTED",
    "Batch",
    "Bye",
    "Checkpoint",
    "Ext",
    "FrameError",
    "decode",
    "decode_message",
    "encode",
    "escape",
    "frame",
    "nest",
    "pack",
    "record_state",
    "safe_repr",
    "unnest",
    "wire_safe",
]

BATCH = 1
BYE = 2
ACK = 3
CHECKPOINT = 4  # (CHECKPOINT, stamped, dropped, lost): a flush_worker_logging() that completed
LEVELS = 5  # (LEVELS, levels, disabled): the listener's levels changed since this worker was told

#: Extension codes: a string with lone surrogates (UTF-8, surrogatepass), and a container held by a
#: record attribute (JSON text: string keys only, decoded by the stdlib's C scanner in linear time).
ESCAPED = 1
NESTED = 2

HEADER = struct.Struct("!I")
#: The largest frame a listener accepts; a worker splits batches, and cuts down a record that does
#: not fit alone, to stay below it. Decoding costs at most about 25 bytes of memory per frame byte
#: (short strings are the worst case; containers cannot be where the schema wants scalars).
MAX_FRAME = 16 * 1024 * 1024
#: The most records in one batch (a worker's batch holds at most about 21,000).
MAX_RECORDS = 65536
#: The longest string a worker sends as it is; longer ones are cut, with a marker, and counted.
MAX_TEXT = 1024 * 1024
#: Bytes of nested JSON (containers in records) one batch may carry, and one record value.
MAX_NESTED = 4 * 1024 * 1024
MAX_NESTED_VALUE = 1024 * 1024

_SCALARS = (str, int, float, bool, type(None), bytes)
_CONTAINERS = (tuple, list, set, frozenset)
_MAX_DEPTH = 32
_INT64 = 2**63 - 1

_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64)]
_Level = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
_Value = Union[None, bool, int, float, str, Ext]  # noqa: UP007 (evaluated at import, on 3.10 too)


class Batch(msgspec.Struct, array_like=True, tag=BATCH, frozen=True):
    """A batch as the listener decodes it: every field checked while the bytes are read."""

    first: Annotated[int, msgspec.Meta(ge=1, le=_INT64)]
    stamped: _Count
    dropped: _Count
    lost: _Count
    levels: Annotated[list[_Level], msgspec.Meta(max_length=MAX_RECORDS)]
    lines: Annotated[
        list[Annotated[list[str | Ext | None], msgspec.Meta(max_length=MAX_RECORDS)]],
        msgspec.Meta(max_length=1024),
    ]
    records: Annotated[list[dict[str, _Value]], msgspec.Meta(max_length=MAX_RECORDS)] | None
    truncated: _Count = 0
    nested: Annotated[list[tuple[int, str]], msgspec.Meta(max_length=MAX_RECORDS)] = []
    escaped: bool = False


class Bye(msgspec.Struct, array_like=True, tag=BYE, frozen=True):
    """A worker's goodbye, with its totals."""

    stamped: _Count
    dropped: _Count
    lost: _Count
    truncated: _Count = 0


class Checkpoint(msgspec.Struct, array_like=True, tag=CHECKPOINT, frozen=True):
    """Sent by ``flush_worker_logging()`` once everything accepted so far is on the wire."""

    stamped: _Count
    dropped: _Count
    lost: _Count


class FrameError(Exception):
    """A peer sent bytes that are not a well-formed logfunnel frame."""


class _NotWireSafe(Exception):
    pass


def _refuse(obj: Any) -> Any:
    # msgspec calls this for any type it does not know (subclasses of str and int included).
    raise _NotWireSafe(type(obj).__name__)


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == ESCAPED:
        return bytes(data).decode("utf-8", "surrogatepass")
    raise ValueError(f"unknown extension type {code}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_refuse)
_DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)
_MESSAGE_DECODER = msgspec.msgpack.Decoder(Union[Batch, Bye, Checkpoint], ext_hook=_ext_hook)  # noqa: UP007


def encode(obj: Any) -> bytes:
    """Encode plain values (None, bool, int, float, str, bytes, list, tuple, dict with str keys) as
    MessagePack; raise ``ValueError`` for anything else, and for an int outside 64 bits. Tuples and
    sets arrive as lists."""
    try:
        return _ENCODER.encode(obj)
    except UnicodeEncodeError:  # a lone surrogate (surrogateescape'd bytes): carried exactly
        try:
            return _ENCODER.encode(escape(obj))
        except UnicodeEncodeError:
            raise ValueError("not a plain value: a dict key with a lone surrogate") from None
    except _NotWireSafe as exc:
        raise ValueError(f"not a plain value: {exc}") from None
    except OverflowError:
        raise ValueError("not a plain value: an int outside the 64-bit range") from None


def escape(value: Any, depth: int = 0) -> Any:
    """*value* with each string that UTF-8 cannot hold (lone surrogates) as an ``ESCAPED`` Ext."""
    kind = type(value)
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return Ext(ESCAPED, value.encode("utf-8", "surrogatepass"))
        return value
    if depth > _MAX_DEPTH:
        return value
    if kind in (list, tuple):
        return kind(escape(item, depth + 1) for item in value)
    if kind is dict:
        return {k: escape(v, depth + 1) for k, v in value.items()}  # keys stay str
    return value


def pack(obj: Any) -> bytes:
    """Encode *obj* as ``encode`` does, but leave its errors to the caller: ``UnicodeEncodeError`` (a
    lone surrogate), ``OverflowError`` (an int outside 64 bits), ``TypeError`` (not a plain value)."""
    try:
        return _ENCODER.encode(obj)
    except _NotWireSafe as exc:
        raise TypeError(f"not a plain value: {exc}") from None


def frame(payload: bytes) -> bytes:
    """Prefix *payload* with its length."""
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes | memoryview) -> Any:
    """Decode a frame's payload into plain values (the top-level array as a tuple); raise
    ``FrameError`` on anything odd. For small control messages: a batch goes through
    ``decode_message``, whose schema bounds what it may cost."""
    try:
        value = _DECODER.decode(payload)
    except Exception as exc:
        raise FrameError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    return tuple(value) if type(value) is list else value


def decode_message(payload: bytes | memoryview) -> Any:
    """Decode a message from a worker: a ``Batch`` or ``Bye``, checked against its schema while it is
    read. Raise ``FrameError`` on anything odd, and for any other kind before reading it.

    Time is linear in the payload; memory within a small factor of it (a container can only be where
    the schema allows one, each one bounded in length; containers in records are JSON text of at most
    ``MAX_NESTED`` bytes a batch, decoded only after that is checked).
    """
    kind = _kind(payload)
    if kind is None:
        raise FrameError("not a message: expected an array that starts with its kind")
    if kind not in (
        BATCH,
        BYE,
        CHECKPOINT,
    ):  # refused unread: a new kind gets a schema (a tagged Struct) here
        raise FrameError(f"unknown message kind {kind}")
    try:
        message = _MESSAGE_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        name = {BATCH: "batch", BYE: "goodbye", CHECKPOINT: "checkpoint"}[kind]
        raise FrameError(f"malformed {name}: {exc}") from None
    except Exception as exc:
        raise FrameError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    if type(message) is Batch and (message.nested or message.escaped):
        _unpack(message)
    return message


def _kind(payload: bytes | memoryview) -> int | None:
    """The first element of a top-level array when it is a small int (a message kind), else None."""
    if len(payload) >= 2 and 0x91 <= payload[0] <= 0x9F and payload[1] < 0x80:
        return payload[1]
    if len(payload) >= 4 and payload[0] == 0xDC and payload[3] < 0x80:
        return payload[3]
    return None


def _unpack(batch: Batch) -> None:
    """Turn a batch's extensions back into values, in place: nested JSON (within ``MAX_NESTED``
    bytes in all) and escaped strings."""
    records = batch.records
    if batch.nested:
        if records is None:
            raise FrameError("malformed batch: nested values without records")
        found = []
        total = 0
        for index, key in batch.nested:
            if not 0 <= index < len(records):
                raise FrameError(f"malformed batch: nested value of record {index} out of range")
            ext = records[index].get(key)
            if type(ext) is not Ext or ext.code != NESTED:
                raise FrameError(f"malformed batch: no nested value at [{index}, {key!r}]")
            total += len(bytes(ext.data))
            found.append((index, key, ext))
        if total > MAX_NESTED:
            raise FrameError(f"malformed batch: {total} bytes of nested values exceed {MAX_NESTED}")
        for index, key, ext in found:
            try:
                records[index][key] = unnest(bytes(ext.data))
            except Exception as exc:  # bad JSON or tag, too deep, an int of too many digits
                raise FrameError(f"malformed batch: nested value ({type(exc).__name__}: {exc})") from None
    if batch.escaped:
        for chunk in batch.lines:
            for i, line in enumerate(chunk):
                if type(line) is Ext:
                    chunk[i] = _unescape(line)
        for state in records or ():
            for key, value in state.items():
                if type(value) is Ext and value.code == ESCAPED:
                    state[key] = _unescape(value)


def _unescape(ext: Ext) -> str:
    if ext.code != ESCAPED:
        raise FrameError(f"malformed batch: unexpected extension type {ext.code}")
    try:
        return bytes(ext.data).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise FrameError(f"malformed batch: escaped string ({exc})") from None


# -- containers in records, as JSON that keeps their types ------------------------------------------
#
# JSON has arrays and string-keyed objects only; a record's extras may hold tuples, sets, bytes and
# dicts with int keys, which a handler that reads them (SocketHandler's pickle, HTTPHandler's str())
# must see as they were. Each of those travels as a one-key object whose key starts with NUL, which
# no JSON encoder writes for a plain dict here: a dict whose keys are not all strings, or that has a
# key starting with NUL, travels as a list of pairs. Decoding adds one check per object (linear);
# set members and dict keys must be scalars whose hashes a peer cannot make collide (strings, ints
# within 64 bits, floats, bools, None), so building them costs linear time too.

_TUPLE, _SET, _FROZENSET, _DICT, _BYTES = "\x00t", "\x00s", "\x00f", "\x00d", "\x00b"


def _hashable(value: object) -> bool:
    kind = type(value)
    if kind is int:
        return -(2**63) <= value < 2**63  # type: ignore[operator]
    return kind is str or kind is float or kind is bool or value is None


def _tag(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if depth > _MAX_DEPTH:
        raise _NotWireSafe("too deep")
    if kind is list:
        return [_tag(item, depth + 1) for item in value]
    if kind is tuple:
        return {_TUPLE: [_tag(item, depth + 1) for item in value]}
    if kind is dict:
        if all(type(k) is str and k[:1] != "\x00" for k in value):
            return {k: _tag(v, depth + 1) for k, v in value.items()}
        if not all(_hashable(k) for k in value):
            raise _NotWireSafe("a dict key that is not a plain scalar")
        return {_DICT: [[k, _tag(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        if not all(_hashable(member) for member in value):
            raise _NotWireSafe("a set member that is not a plain scalar")
        return {_SET if kind is set else _FROZENSET: list(value)}
    if kind is bytes:
        return {_BYTES: value.decode("latin-1")}
    raise _NotWireSafe(kind.__name__)


def nest(value: Any) -> str | None:
    """*value* (a container or bytes of plain values) as ASCII JSON text that ``unnest`` turns back
    into an equal value of the same types all the way down; None if it holds anything else, is more
    than 32 deep, or is a set or dict key that is not a plain scalar."""
    try:
        return json.dumps(_tag(value, 0), ensure_ascii=True, separators=(",", ":"))
    except (_NotWireSafe, ValueError, TypeError, RecursionError):  # ValueError: an int of too many digits
        return None


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) != 1:
        return obj
    ((tag, value),) = obj.items()
    if tag[:1] != "\x00":
        return obj
    if type(value) is list:
        if tag == _TUPLE:
            return tuple(value)
        if tag in (_SET, _FROZENSET):
            for member in value:
                if not _hashable(member):
                    raise ValueError(f"a set member that is not a plain scalar: {type(member).__name__}")
            return set(value) if tag == _SET else frozenset(value)
        if tag == _DICT:
            result = {}
            for pair in value:
                if type(pair) is not list or len(pair) != 2 or not _hashable(pair[0]):
                    raise ValueError("a dict item that is not a [plain scalar, value] pair")
                result[pair[0]] = pair[1]
            return result
    if tag == _BYTES and type(value) is str:
        return value.encode("latin-1")
    raise ValueError(f"unknown or malformed tagged value {tag!r}")


def unnest(data: bytes) -> Any:
    """Decode what ``nest`` made; raise ``ValueError`` (or ``RecursionError``) for anything else."""
    return json.loads(data, object_hook=_untag)


def safe_repr(value: object) -> str:
    """``repr(value)`` that never raises."""
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__} object: {type(exc).__name__}>"


def wire_safe(value: object, depth: int = 0) -> bool:
    """Whether *value* is made only of plain values, at most 32 deep (what a worker sends as it is, as
    nested JSON or through a multiprocessing queue's pickle)."""
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
