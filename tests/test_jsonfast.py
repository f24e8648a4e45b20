"""The worker's shortcut for python-json-logger's JsonFormatter renders what the formatter renders.

Each test builds a ``JsonFormatter`` as a user would, rebuilds it from its state as a worker does,
and compares ``JsonLines.format`` with the formatter's own ``format`` on the same records.
"""

from __future__ import annotations

import copy
import datetime
import enum
import json
import logging
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _need import need_module
from logfunnel import _jsonfast, _render

pjson = need_module("pythonjsonlogger.json")


class Colour(enum.Enum):
    RED = 1


def rebuilt(formatter: logging.Formatter) -> logging.Formatter:
    """The renderer a worker makes for *formatter*, from the spec the listener sends."""
    spec = _render.class_spec(formatter)
    assert spec is not None, "the formatter should travel as a class spec"
    return _render.make_renderer(spec)


def record(msg: object = "hello %s", args: tuple = ("world",), **extra: object) -> logging.LogRecord:
    made = logging.getLogger("app.json").makeRecord("app.json", logging.INFO, __file__, 7, msg, args, None)
    made.__dict__.update(extra)
    return made


def same(formatter: logging.Formatter, rec: logging.LogRecord) -> str:
    """Render *rec* with the worker's renderer and with *formatter* itself; the two must agree."""
    renderer = rebuilt(formatter)
    assert isinstance(renderer, _jsonfast.JsonLines)
    mine, theirs = copy.copy(rec), copy.copy(rec)
    line = renderer.format(mine)
    assert line == formatter.format(theirs)
    return line


def test_plain_json_formatter_takes_the_shortcut():
    """The configuration users write most, python-json-logger's JsonFormatter, gets JsonLines."""
    formatter = pjson.JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    assert isinstance(rebuilt(formatter), _jsonfast.JsonLines)
    line = same(formatter, record())
    assert json.loads(line)["message"] == "hello world"


OPTIONS = [
    {},
    {"rename_fields": {"levelname": "level", "message": "msg"}, "rename_fields_keep_missing": True},
    {"static_fields": {"service": "api", "n": [1, 2]}, "defaults": {"region": "eu", "levelname": "x"}},
    {"timestamp": True},
    {"timestamp": "ts", "rename_fields": {"ts": "@timestamp"}},
    {"prefix": "JSON: ", "json_ensure_ascii": False},
    {"json_indent": 2},
    {"json_default": str},
    {"json_encoder": json.JSONEncoder, "json_default": repr},
    {"reserved_attrs": ["args", "msg", "levelno"]},
    {"datefmt": "%Y-%m-%dT%H:%M:%S"},
]
FORMATS = [
    ("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s", "%"),
    ("{asctime} {message} {missing}", "{"),
    ("$message ${levelname} $funcName", "$"),
    ("asctime, message ,name", ","),
    (["message", "lineno", "asctime"], "%"),
    (None, "%"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f[1] + str(f[0])[:12])
def test_options_and_styles_render_the_same(options, fmt):
    """Every option of JsonFormatter and every style of fmt: the same line, with and without extras."""
    formatter = pjson.JsonFormatter(fmt[0], style=fmt[1], **options)
    same(formatter, record())
    same(
        formatter,
        record(custom="c", _private=1, when=datetime.datetime(2026, 1, 2, 3, 4, 5), colour=Colour.RED),
    )


def test_converter_and_time_formats_set_on_the_instance():
    """gmtime, a changed default_time_format and no milliseconds, over many seconds and before 1970."""
    formatter = pjson.JsonFormatter("%(asctime)s %(message)s")
    formatter.converter = time.gmtime
    formatter.default_time_format = "%d/%m/%Y %H:%M:%S"
    formatter.default_msec_format = None
    renderer = rebuilt(formatter)
    assert isinstance(renderer, _jsonfast.JsonLines)
    for created in (0.5, 1.0, 1.999, 86_400.25, 86_400.75, -1.5, -0.25, 1_764_600_000.123):
        rec = record()
        rec.created, rec.msecs = created, (created - int(created)) * 1000
        mine, theirs = copy.copy(rec), copy.copy(rec)
        assert renderer.format(mine) == formatter.format(theirs)


def test_dict_messages_exceptions_and_stacks_use_the_library_itself():
    """The records the shortcut leaves to the formatter still come out the same."""
    formatter = pjson.JsonFormatter("%(message)s", exc_info_as_array=True, stack_info_as_array=True)
    same(formatter, record({"event": "login", "user": 7}, ()))
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = record(exc_info=sys.exc_info())
    same(formatter, rec)
    same(formatter, record(stack_info="Stack (most recent call last):\n  frame"))
    same(formatter, record(exc_text="Traceback (most recent call last):\nValueError"))


def test_encoding_errors_are_the_formatters_and_leave_the_encoder_clean():
    """A circular extra or an unencodable value raises as json.dumps would; the next record is fine."""
    formatter = pjson.JsonFormatter("%(message)s", json_encoder=json.JSONEncoder)
    renderer = rebuilt(formatter)
    loop: list[object] = []
    loop.append(loop)
    holder: list[object] = [object()]  # fails inside the list: the encoder had marked the list
    for bad, error in ((loop, ValueError), (holder, TypeError)):
        rec = record(bad=bad)
        with pytest.raises(error) as mine:
            renderer.format(copy.copy(rec))
        with pytest.raises(error) as theirs:
            formatter.format(copy.copy(rec))
        assert str(mine.value) == str(theirs.value)
    holder[0] = 1  # the same list, now encodable: no stale "circular reference" from the failure
    rec = record(bad=holder, nan=math.nan, shared=[loop[:0], loop[:0]])
    assert renderer.format(copy.copy(rec)) == formatter.format(copy.copy(rec))


def test_subclasses_other_versions_and_unknown_state_keep_the_formatter():
    """The shortcut is for the exact class of the releases it was read from, with its own state."""

    class Mine(pjson.JsonFormatter):
        pass

    assert type(_jsonfast.fast_json(Mine())) is Mine
    odd = pjson.JsonFormatter()
    odd.extra_setting = 1  # something the library's methods might read
    assert _jsonfast.fast_json(odd) is odd
    odd_clock = pjson.JsonFormatter()
    odd_clock.converter = lambda seconds: time.gmtime(seconds + 3600)
    assert _jsonfast.fast_json(odd_clock) is odd_clock
    plain = pjson.JsonFormatter()
    saved = _jsonfast._release
    try:
        _jsonfast._release = (5, 0)
        assert _jsonfast.fast_json(plain) is plain
        _jsonfast._release = (3, 2)
        assert _jsonfast.fast_json(plain) is plain
    finally:
        _jsonfast._release = saved
    assert isinstance(_jsonfast.fast_json(plain), _jsonfast.JsonLines)


def test_a_serializer_of_the_users_own_is_called_as_the_library_calls_it():
    """json_serializer other than json.dumps: called with the library's keyword arguments."""
    calls = []

    def serializer(data, **kwargs):
        calls.append(sorted(kwargs))
        return json.dumps(data, **kwargs)

    formatter = pjson.JsonFormatter("%(message)s", json_serializer=serializer)
    lines = _jsonfast.JsonLines(formatter)
    rec = record()
    assert lines.format(copy.copy(rec)) == formatter.format(copy.copy(rec))
    assert calls[0] == calls[1] == ["cls", "default", "ensure_ascii", "indent"]


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
names = st.text(min_size=1, max_size=8).filter(lambda name: not hasattr(logging.LogRecord, name))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.text(),
    extras=st.dictionaries(names, values, max_size=4),
    rename=st.dictionaries(
        st.sampled_from(["message", "levelname", "asctime", "extra_a"]), st.text(max_size=6), max_size=2
    ),
    option=st.sampled_from(OPTIONS),
    ascii_only=st.booleans(),
    created=st.floats(min_value=-1e9, max_value=4e9),
)
def test_random_records_render_the_same(message, extras, rename, option, ascii_only, created):
    """Random messages, extras, renames and times: JsonLines and JsonFormatter agree."""
    options = dict(option)
    options["rename_fields"] = {**options.get("rename_fields", {}), **rename}
    options["json_ensure_ascii"] = ascii_only
    formatter = pjson.JsonFormatter("%(asctime)s %(levelname)s %(message)s", **options)
    rec = record(message, (), **extras)
    rec.created, rec.msecs = created, (created - int(created)) * 1000
    same(formatter, rec)
