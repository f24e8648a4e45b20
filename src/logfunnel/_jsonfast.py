"""python-json-logger's ``JsonFormatter``, rendered in a worker in half the time, byte for byte.

A worker rebuilds a user's ``pythonjsonlogger.json.JsonFormatter`` from its state (``_render.class_spec``)
and could run its ``format`` as it is: 10-13 us a record, three times a plain line, and on this
machine the JSON configuration then ran at 58 % of the plain file's rate (issue 12 asks for 75 %).
Most of that time is bookkeeping the result does not depend on: ``json.dumps`` builds a new encoder
for every record, every attribute of the record is looked up in the reserved set one by one to find
the extras (usually none), and the time text is made anew for each record of the same second.

``fast_json`` wraps such a formatter in ``JsonLines``, whose ``format`` builds the same dict in the
same key order as ``BaseJsonFormatter.add_fields`` does and encodes it with one reused encoder, of
the class ``json.dumps`` would make. It applies only where that equivalence has been read in the
library's source and is tested (tests/test_jsonfast.py compares the two on random records):
- the exact class ``pythonjsonlogger.json.JsonFormatter`` of a release from 3.3 to 4.2, whose
  ``format``/``add_fields``/``merge_record_extra`` are the same in all of them for these records;
- ``json_serializer`` is ``json.dumps`` (else it is called as the library calls it);
- a record without a dict ``msg``, exception or stack: those go to the library's own ``format``.
Anything else keeps the formatter as it is; its output is the same, only slower.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
    encode_basestring_ascii,
)
from typing import Any, cast

__all__ = ["JsonLines", "fast_json"]

_CLASS_PATH = "pythonjsonlogger.json:JsonFormatter"
_RELEASES = ((3, 3), (4, 2))  # first and last (major, minor) whose source this module follows
#: The instance attributes of a JsonFormatter of those releases; any other (one set by its user)
#: might change what its methods do, so it keeps the library's own code.
_STATE = frozenset(
    {
        "_style", "_fmt", "_required_fields", "datefmt", "prefix", "rename_fields", "static_fields",
        "rename_fields_keep_missing", "reserved_attrs", "timestamp", "_skip_fields", "defaults",
        "exc_info_as_array", "stack_info_as_array", "json_default", "json_encoder", "json_serializer",
        "json_indent", "json_ensure_ascii",
    }
)  # fmt: skip
#: Set on an instance, these change only the time text, which ``JsonLines`` makes as logging does.
_TIME_STATE = frozenset({"converter", "default_time_format", "default_msec_format"})
_CONVERTERS = (time.localtime, time.gmtime)
_release: tuple[int, int] | None = None


def _library_release() -> tuple[int, int]:
    global _release
    if _release is None:
        from importlib import metadata

        try:
            parts = metadata.version("python-json-logger").split(".")
            _release = (int(parts[0]), int(parts[1]))
        except Exception:  # not installed as a distribution, or a version we cannot read
            _release = (0, 0)
    return _release


def fast_json(formatter: logging.Formatter) -> logging.Formatter:
    """*formatter* wrapped in ``JsonLines`` where the wrapper renders the same bytes, else itself."""
    cls = type(formatter)
    if f"{cls.__module__}:{cls.__qualname__}" != _CLASS_PATH:
        return formatter
    if not _RELEASES[0] <= _library_release() <= _RELEASES[1]:
        return formatter
    names = set(vars(formatter))
    if not _STATE <= names <= _STATE | _TIME_STATE:
        return formatter
    if formatter.converter not in _CONVERTERS:
        return formatter
    return JsonLines(formatter)


class JsonLines(logging.Formatter):
    """Renders a ``JsonFormatter``'s lines; records it does not shortcut go to the formatter itself."""

    def __init__(self, formatter: Any) -> None:
        super().__init__()
        self.formatter = formatter
        rename = formatter.rename_fields
        self._rename = rename
        self._defaults = [(rename.get(key, key), value) for key, value in (formatter.defaults or {}).items()]
        fields = list(formatter._required_fields)  # noqa: SLF001
        self._keys = [rename.get(field, field) for field in fields]
        self._fields = fields
        self._static = [(rename.get(key, key), value) for key, value in formatter.static_fields.items()]
        self._skip = formatter._skip_fields  # noqa: SLF001
        stamp = formatter.timestamp
        key = stamp if isinstance(stamp, str) else "timestamp"
        self._stamp = rename.get(key, key) if stamp else None
        self._missing = list(rename.values()) if formatter.rename_fields_keep_missing else None
        self._asctime = "asctime" in formatter._required_fields  # noqa: SLF001
        self._prefix: str = formatter.prefix
        self._encode: Callable[[dict[Any, Any]], str] | None = None
        if formatter.json_serializer is json.dumps:
            cls = formatter.json_encoder or json.JSONEncoder
            # What json.dumps(..., default=, cls=, indent=, ensure_ascii=) makes for every call.
            encoder = cls(
                skipkeys=False, ensure_ascii=formatter.json_ensure_ascii, check_circular=True,
                allow_nan=True, indent=formatter.json_indent, separators=None,
                default=formatter.json_default, sort_keys=False,
            )  # fmt: skip
            self._encode = _OneShot(encoder) if _OneShot.fits(encoder) else encoder.encode
        # The clock: the formatter's own, read once (the worker's copy is not changed after this).
        datefmt = formatter.datefmt
        self._time_format: str = datefmt or formatter.default_time_format
        self._msec_format: str | None = None if datefmt else (formatter.default_msec_format or None)
        self._converter = formatter.converter
        self._second = -1
        self._second_text = ""

    def _format_time(self, record: logging.LogRecord) -> str:
        """``Formatter.formatTime``, with the text of a whole second kept (strftime's resolution)."""
        created = record.created
        if created < 0 or int(created) != self._second:
            text = time.strftime(self._time_format, self._converter(created))
            if created >= 0:
                self._second, self._second_text = int(created), text
        else:
            text = self._second_text
        if self._msec_format is None:
            return text
        return self._msec_format % (text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict) or record.exc_info or record.exc_text or record.stack_info:
            return cast(str, self.formatter.format(record))
        state = record.__dict__
        # The worker merged the message as the call returned (FunnelHandler's _merge): that text is
        # the one getMessage() gives, unless the arguments were changed since; then it is the truer.
        if "message" not in state:
            record.message = record.getMessage()
        if self._asctime:
            record.asctime = self._format_time(record)
        # add_fields: defaults, then the format's fields, then static fields, then extras.
        data: dict[Any, Any] = dict(self._defaults) if self._defaults else {}
        data.update(zip(self._keys, map(state.get, self._fields)))
        if self._static:
            data.update(self._static)
        skip = self._skip
        if not skip.issuperset(state):  # extras (or private names): merge_record_extra's loop
            rename = self._rename
            for key, value in state.items():
                if key not in skip and not (hasattr(key, "startswith") and key.startswith("_")):
                    data[rename.get(key, key)] = value
        if self._stamp is not None:
            data[self._stamp] = datetime.fromtimestamp(record.created, tz=timezone.utc)
        if self._missing is not None:
            for field in self._missing:
                if field not in data:
                    data[field] = None
        if self._encode is not None:
            return self._prefix + self._encode(data)
        formatter = self.formatter
        return self._prefix + cast(
            str,
            formatter.json_serializer(
                data,
                default=formatter.json_default,
                cls=formatter.json_encoder,
                indent=formatter.json_indent,
                ensure_ascii=formatter.json_ensure_ascii,
            ),
        )


class _OneShot:
    """``encoder.encode(data)`` for a dict, without building the C encoder anew for each call.

    ``JSONEncoder.iterencode`` makes one with ``c_make_encoder`` (for an encoder without indent, whose
    ``encode``/``iterencode`` are the base class's) and joins what it returns; this keeps one. Its
    ``markers`` dict (the circular-reference check) is empty again after every call that succeeds; a
    call that raises may leave ids in it, so the encoder is then made anew.
    """

    @staticmethod
    def fits(encoder: json.JSONEncoder) -> bool:
        cls = type(encoder)
        return (
            c_make_encoder is not None
            and encoder.indent is None
            and encoder.check_circular
            and cls.encode is json.JSONEncoder.encode
            and cls.iterencode is json.JSONEncoder.iterencode
        )

    def __init__(self, encoder: json.JSONEncoder) -> None:
        self._encoder = encoder
        self._call = self._make()

    def _make(self) -> Any:
        e = self._encoder
        strings = encode_basestring_ascii if e.ensure_ascii else encode_basestring
        return c_make_encoder(
            {}, e.default, strings, e.indent, e.key_separator, e.item_separator,
            e.sort_keys, e.skipkeys, e.allow_nan,
        )  # fmt: skip

    def __call__(self, data: dict[Any, Any]) -> str:
        try:
            return "".join(self._call(data, 0))
        except BaseException:
            self._call = self._make()
            raise
