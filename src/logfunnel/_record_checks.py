"""``check_record``: an attribute dict decoded from a peer, checked before it becomes a ``LogRecord``.

The receiver (``_receiver``) decodes a stdlib ``SocketHandler``'s pickle into plain values
(``_pickles.loads``); what arrives is whatever the peer chose to send. ``check_record`` refuses what
``logging.makeLogRecord`` must not be given (``RecordRefused``) and fixes what is harmless, and
``_merge`` merges ``msg`` with ``args`` only where the result is proven to cost at most linear time
and memory. Nothing here touches a socket.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["MAX_MERGE_WIDTH", "RECORD_TYPES", "RecordRefused", "check_record"]


class RecordRefused(ValueError):
    """A decoded attribute dict is not one a record can be made of (see ``check_record``)."""


_NONE = type(None)
#: The attributes that the standard library's handlers and formatters use, with the types they must
#: have when present. ``name`` and ``levelno`` must be present.
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "msg": (str,),
    "levelname": (str,),
    "levelno": (int,),
    "pathname": (str,),
    "filename": (str,),
    "module": (str,),
    "funcName": (str, _NONE),
    "lineno": (int,),
    "created": (float,),
    "msecs": (float,),
    "relativeCreated": (float,),
    "thread": (int, _NONE),
    "threadName": (str, _NONE),
    "process": (int, _NONE),
    "processName": (str, _NONE),
    "taskName": (str, _NONE),
    "exc_text": (str, _NONE),
    "stack_info": (str, _NONE),
    "message": (str,),
    "asctime": (str,),
}
_FLOATS = ("created", "msecs", "relativeCreated")
_LAST_SECOND = 253_402_300_799.0  # 9999-12-31 23:59:59 UTC, the last time strftime's %Y can show
_FLOAT_RANGES: dict[str, tuple[float, float, str]] = {
    "created": (0.0, _LAST_SECOND, "seconds since the epoch from 0 to the end of the year 9999"),
    "msecs": (0.0, 999.999999, "milliseconds from 0 to below 1000"),
    "relativeCreated": (-_LAST_SECOND * 1000, _LAST_SECOND * 1000, "a finite number of milliseconds"),
}
_MERGE_ARG_TYPES = (str, int, float, bool, _NONE)
MAX_MERGE_WIDTH = 100  # the largest width or precision of a conversion merged here
_CONVERSION = re.compile(
    rb"%(?P<key>\([^)]*\))?[-#0 +]*(?P<width>\*|\d*)(?:\.(?P<precision>\*|\d*))?[hlL]?(.|$)"
)


def _merge(msg: str, args: object) -> str:
    """``msg % args`` when it is proven cheap: a tuple of plain scalars, no mapping keys, no ``*``,
    widths and precisions of at most ``MAX_MERGE_WIDTH``: the result is then at most linear in the
    sizes of *msg* and *args*. Anything else is refused: ``"%0999999999d" % (1,)`` is a gigabyte."""
    if type(args) is list:
        args = tuple(args)
    if type(args) is not tuple:
        raise RecordRefused(f"args is a {type(args).__name__}; only a tuple is merged here")
    for arg in args:
        if type(arg) not in _MERGE_ARG_TYPES:
            raise RecordRefused(f"args holds a {type(arg).__name__}; only str, int, float, bool and None")
    for match in _CONVERSION.finditer(msg.encode("utf-8", "surrogatepass")):
        if match.group("key") is not None:
            raise RecordRefused("msg uses a mapping key (%(name)s); only positional args are merged here")
        for part in (match.group("width"), match.group("precision")):
            if part == b"*" or (part and (len(part) > 3 or int(part) > MAX_MERGE_WIDTH)):
                raise RecordRefused(
                    f"msg has a conversion {match.group(0)[:40]!r} wider than {MAX_MERGE_WIDTH}: "
                    "the stdlib SocketHandler sends the message already merged"
                )
    try:
        return msg % args
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordRefused(f"msg % args failed: {exc}") from None


def check_record(state: object) -> dict[str, Any]:
    """The attribute dict *state*, checked (and where harmless, fixed) before ``makeLogRecord``.

    Refused (``RecordRefused``): anything but a dict with str keys; a key that starts with ``__`` or
    names a method of ``LogRecord`` (it would shadow ``getMessage``); no ``name`` or ``levelno``; a
    well-known attribute (``RECORD_TYPES``) of another type; ``args`` that cannot be merged cheaply
    (see ``_merge``); ``created``, ``msecs`` or ``relativeCreated`` that no formatter could show
    (NaN, infinite, beyond the year 9999, ``msecs`` outside 0 to 1000). Fixed: ``created``, ``msecs``
    and ``relativeCreated`` given as int become float; a missing ``levelname`` is the level's name;
    ``exc_info`` becomes None (what arrives can only be plain values, which formatters cannot use:
    the traceback travels as ``exc_text``); ``args`` that can be merged cheaply are merged into
    ``msg`` and become None.
    """
    if type(state) is not dict:
        raise RecordRefused(f"expected a dict of record attributes, got a {type(state).__name__}")
    for key in state:
        if type(key) is not str:
            raise RecordRefused(f"expected str attribute names, got a {type(key).__name__}")
        if key.startswith("__") or callable(getattr(logging.LogRecord, key, None)):
            raise RecordRefused(f"the attribute name {key[:60]!r} would shadow a LogRecord method")
    level = state.get("levelno")
    if type(level) is not int or not 0 <= level < 2**31:
        raise RecordRefused(f"expected levelno as an int from 0 to 2**31 - 1, got {_pickles_repr(level)}")
    if type(state.get("name")) is not str:
        raise RecordRefused(f"expected name as a str, got {_pickles_repr(state.get('name'))}")
    for key in _FLOATS:
        if type(state.get(key)) is int:
            state[key] = float(state[key])
    for key, kinds in RECORD_TYPES.items():
        if key in state and type(state[key]) not in kinds:
            names = " or ".join("None" if kind is _NONE else kind.__name__ for kind in kinds)
            raise RecordRefused(f"expected {key} as {names}, got a {type(state[key]).__name__}")
    for key, (low, high, what) in _FLOAT_RANGES.items():
        value = state.get(key)
        # NaN fails both comparisons; a time a formatter cannot turn into a date (1e300, inf) would
        # fail in every handler's formatTime, on every attempt of every lane.
        if value is not None and not low <= value <= high:
            raise RecordRefused(f"expected {key} as {what}, got {value!r}")
    if "levelname" not in state:
        state["levelname"] = logging.getLevelName(level)
    state["exc_info"] = None
    args = state.get("args")
    if args is not None and (type(args) not in (tuple, list, dict) or args):
        state["msg"] = _merge(state.get("msg", ""), args)
    state["args"] = None
    return state


def _pickles_repr(value: object) -> str:
    return type(value).__name__ if not isinstance(value, (int, str)) else repr(value)[:60]
