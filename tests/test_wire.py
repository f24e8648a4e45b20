"""Unit tests for ``logfunnel._wire`` and ``logfunnel._render``: plain values as MessagePack, the
decoder that refuses pickles and anything but plain values, formatter specs and the worker-side
``Renderer`` that must reproduce ``logging.Formatter`` byte for byte."""

from __future__ import annotations

import builtins
import contextlib
import datetime
import enum
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logfunnel import _wire
from logfunnel._render import Renderer, formatter_spec
from logfunnel._wire import FrameError, decode, encode

# -- strategies -------------------------------------------------------------------------------------

# Text that exercises what a UTF-8 codec would choke on: lone surrogates (as left by
# surrogateescape), non-BMP characters, NUL, newlines.
_awkward_text = st.text(
    alphabet=st.characters(exclude_categories=())
    | st.sampled_from(["\udcff", "\ud800", "\U0001f600", "\U0010ffff", "\x00", "\n", "\r", "%", "{", "$"]),
    max_size=20,
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what MessagePack holds
    | st.floats(allow_nan=False)
    | _awkward_text
    | st.binary(max_size=20)
)
_hashable = st.recursive(
    _scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3).map(tuple), max_leaves=6
)
plain_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8), inner, max_size=4
        )
    ),
    max_leaves=20,
)


class Custom:
    def __repr__(self) -> str:
        return "<Custom thing>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (a list is not a tuple, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return repr(a) == repr(b)
    return bool(a == b)


def _arrived(value: Any, top: bool = True) -> Any:
    """What *value* decodes as: arrays as lists, the top-level one as a tuple (a message)."""
    if isinstance(value, (list, tuple)):
        items = [_arrived(item, False) for item in value]
        return tuple(items) if top else items
    if isinstance(value, dict):
        return {k: _arrived(v, False) for k, v in value.items()}
    return value


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# -- encode / decode ----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(plain_values)
def test_plain_values_round_trip_unchanged(value: Any) -> None:
    """encode then decode gives back an equal value of the same shape (arrays as lists, a top-level
    array as a tuple)."""
    assert _same(decode(encode(value)), _arrived(value))


@settings(max_examples=100, deadline=None)
@given(plain_values)
def test_wire_safe_accepts_every_plain_value(value: Any) -> None:
    """wire_safe agrees with encode: every plain value is declared safe."""
    assert _wire.wire_safe(value)


@pytest.mark.parametrize(
    "value",
    [
        "\udcff",
        "caf\u00e9 \U0001f600 \U0010ffff",
        b"\x00\xff" * 1000,
        2**64 - 1,
        -(2**63),
        float("inf"),
        -0.0,
        {"levels": [10, 20], "lines": [["a\nb", None]], "nested": ({"x": (1, 2.5)},)},
    ],
    ids=[
        "lone-surrogate",
        "non-bmp",
        "binary",
        "largest-int",
        "smallest-int",
        "inf",
        "negative-zero",
        "batch-like",
    ],
)
def test_awkward_plain_values_round_trip(value: Any) -> None:
    """Values that break naive codecs (lone surrogates, 64-bit ints, -0.0) survive the wire exactly."""
    assert _same(decode(encode(value)), _arrived(value))


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, 10**5000, [1, 2**200]], ids=["2**64", "below-int64", "10**5000", "nested"]
)
def test_encode_refuses_an_int_outside_64_bits(value: Any) -> None:
    """An int MessagePack cannot hold is refused by encode (workers send its repr instead)."""
    with pytest.raises(ValueError, match=r"^not a plain value: an int outside the 64-bit range$"):
        encode(value)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (Custom(), "Custom"),
        ([1, {"k": Custom()}], "Custom"),
        ({Custom(): 1}.keys(), "dict_keys"),
        (Name("x"), "Name"),
        (len, "builtin_function_or_method"),
        (Custom, "type"),
    ],
    ids=[
        "custom-object",
        "nested-custom-object",
        "dict-keys",
        "str-subclass",
        "builtin-function",
        "class",
    ],
)
def test_encode_refuses_values_that_are_not_plain(value: Any, name: str) -> None:
    """encode raises ValueError naming the type of anything that is not a plain value."""
    with pytest.raises(ValueError, match=rf"^not a plain value: {name}$"):
        encode(value)


class _Reduces:
    """Pickles as a call of *func* with *args* (what an attacker would send)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _crafted_pickles(marker: str) -> dict[str, bytes]:
    touch = f"touch {marker}"
    create = f"open({marker!r}, 'w').close()"
    return {
        "os.system-protocol-5": pickle.dumps(_Reduces(os.system, touch), protocol=5),
        "os.system-protocol-0": pickle.dumps(_Reduces(os.system, touch), protocol=0),
        "builtins.exec": pickle.dumps(_Reduces(builtins.exec, create), protocol=2),
        "builtins.eval-in-a-list": pickle.dumps(["harmless", _Reduces(builtins.eval, create)], protocol=4),
        # Hand-written opcodes: GLOBAL + REDUCE, INST, and OBJ, each naming os.system.
        "GLOBAL-opcode": b"cos\nsystem\n(V" + touch.encode() + b"\ntR.",
        "INST-opcode": b"(V" + touch.encode() + b"\nios\nsystem\n.",
        "OBJ-opcode": b"(cos\nsystem\nV" + touch.encode() + b"\no.",
    }


@pytest.mark.parametrize("kind", list(_crafted_pickles("x")))
def test_decode_refuses_a_pickle_that_names_a_global_without_running_it(tmp_path: Any, kind: str) -> None:
    """A pickle naming os.system/exec/eval raises FrameError and the call never happens."""
    marker = tmp_path / "pwned"
    payload = _crafted_pickles(str(marker))[kind]
    with pytest.raises(FrameError, match=r"^undecodable frame \(DecodeError: "):
        decode(payload)
    with pytest.raises(FrameError, match=r"^not a message: expected an array that starts with its kind$"):
        _wire.decode_message(payload)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x80\x05",  # a protocol header and nothing else
        encode(["a", "b", "c"])[:-3],  # truncated
        b"\x80\x05\x95\xff\xff\xff\xff\xff\xff\xff\x7f",  # a frame opcode claiming 2**63 bytes
        b"\x80\x05\x82\x01.",  # EXT1: the extension registry is a way to name a global too
        b"\x80\x05K\x01Q.",  # BINPERSID: persistent ids are not supported
        b"\x80\x05]K\x01b.",  # BUILD on a list
        b"\x80\x05K\x01K\x02R.",  # REDUCE with an int as the callable
        bytes(range(256)),
    ],
    ids=[
        "empty",
        "http",
        "header-only",
        "truncated",
        "huge-frame-opcode",
        "ext1",
        "persid",
        "build",
        "reduce-int",
        "noise",
    ],
)
def test_decode_turns_garbage_into_frame_error(payload: bytes) -> None:
    """Whatever exception a malformed pickle provokes, decode reports it as FrameError."""
    with pytest.raises(FrameError, match=r"^undecodable frame \(\w+: "):
        decode(payload)


def test_decode_accepts_a_memoryview() -> None:
    """decode takes a memoryview of a receive buffer as well as bytes."""
    buffer = bytearray(b"junk" + encode((1, "two", b"3")))
    assert decode(memoryview(buffer)[4:]) == (1, "two", b"3")


def test_frame_prefixes_the_big_endian_length() -> None:
    """frame() puts a 4-byte big-endian length before the payload."""
    assert _wire.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert _wire.frame(b"") == b"\x00\x00\x00\x00"


# -- wire_safe, safe_repr, record_state -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        datetime.date(2024, 1, 1),
        Custom(),
        [1, 2, Custom()],
        {"k": Custom()},
        {Custom(): "v"},
        (1, (2, (3, Custom()))),
        Color.RED,
        Name("x"),
        bytearray(b"x"),
        _nested(40),
    ],
    ids=[
        "date",
        "object",
        "list-of-object",
        "dict-value",
        "dict-key",
        "deep-tuple",
        "int-enum",
        "str-subclass",
        "bytearray",
        "too-deep",
    ],
)
def test_wire_safe_rejects_anything_but_plain_values(value: Any) -> None:
    """wire_safe is False for subclasses, foreign types anywhere inside, and very deep nesting."""
    assert not _wire.wire_safe(value)


def test_wire_safe_accepts_moderate_nesting() -> None:
    """Nesting up to the depth limit is still plain."""
    assert _wire.wire_safe(_nested(30))


def test_safe_repr_survives_a_repr_that_raises() -> None:
    """safe_repr never raises, and names the type and the error instead."""
    assert _wire.safe_repr(BadRepr()) == "<unrepresentable BadRepr object: RuntimeError>"
    assert _wire.safe_repr([1, "a"]) == "[1, 'a']"


def test_record_state_replaces_only_what_cannot_cross_the_wire() -> None:
    """record_state swaps non-plain values for their repr, in place, and keeps plain ones as they are."""
    when = datetime.datetime(2024, 5, 6, 7, 8, 9)
    plain = {"msg": "hello", "args": None, "levelno": 20, "payload": [1, (2.5, b"x")], "text": "\udcff"}
    state: dict[str, Any] = {**plain, "when": when, "obj": [1, Custom()], "bad": BadRepr()}
    result = _wire.record_state(state)
    assert result is state
    assert result == {
        **plain,
        "when": repr(when),
        "obj": "[1, <Custom thing>]",
        "bad": "<unrepresentable BadRepr object: RuntimeError>",
    }
    assert state["payload"] is plain["payload"]
    assert decode(encode(state)) == _arrived(state)


# -- formatter_spec ---------------------------------------------------------------------------------


class SubFormatter(logging.Formatter):
    pass


def _instance_override(name: str) -> logging.Formatter:
    formatter = logging.Formatter("%(asctime)s %(message)s")
    setattr(formatter, name, lambda *args, **kwargs: "overridden")
    return formatter


@pytest.mark.parametrize(
    "make",
    [
        lambda: SubFormatter("%(message)s"),
        lambda: _instance_override("converter"),
        lambda: _instance_override("formatTime"),
        lambda: _instance_override("formatException"),
        lambda: _instance_override("format"),
        lambda: logging.Formatter("%(message)s %(extra)s", defaults={"extra": Custom()}),
    ],
    ids=[
        "subclass",
        "custom-converter",
        "instance-formatTime",
        "instance-formatException",
        "instance-format",
        "non-plain-defaults",
    ],
)
def test_formatter_spec_refuses_what_a_worker_cannot_reproduce(make: Any) -> None:
    """A formatter whose output depends on code, not strings, gets no spec (its records travel whole)."""
    assert formatter_spec(make()) is None


def test_formatter_spec_refuses_a_custom_style_object() -> None:
    """A formatter whose _style is a PercentStyle subclass gets no spec."""

    class LoudStyle(logging.PercentStyle):
        def _format(self, record: logging.LogRecord) -> str:
            return super()._format(record).upper()

    formatter = logging.Formatter("%(message)s")
    formatter._style = LoudStyle("%(message)s")
    assert formatter_spec(formatter) is None


@pytest.mark.parametrize(
    ("formatter", "expected"),
    [
        (None, ("%(message)s", None, "%", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local")),
        (
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M"),
            (
                "%(asctime)s %(levelname)s %(message)s",
                "%H:%M",
                "%",
                None,
                "%Y-%m-%d %H:%M:%S",
                "%s,%03d",
                "local",
            ),
        ),
        (
            logging.Formatter("{asctime} {message}", style="{"),
            ("{asctime} {message}", None, "{", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local"),
        ),
        (
            logging.Formatter(style="{"),
            ("{message}", None, "{", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local"),
        ),
        (
            logging.Formatter("$asctime ${message}", style="$"),
            ("$asctime ${message}", None, "$", None, "%Y-%m-%d %H:%M:%S", "%s,%03d", "local"),
        ),
        (
            logging.Formatter("%(tenant)s %(message)s", defaults={"tenant": "acme"}),
            (
                "%(tenant)s %(message)s",
                None,
                "%",
                {"tenant": "acme"},
                "%Y-%m-%d %H:%M:%S",
                "%s,%03d",
                "local",
            ),
        ),
    ],
    ids=["default-formatter", "percent-datefmt", "brace", "brace-default-fmt", "dollar", "defaults"],
)
def test_formatter_spec_describes_a_plain_formatter(
    formatter: logging.Formatter | None, expected: Any
) -> None:
    """A plain Formatter (or None, the handler default) is described by its strings."""
    assert formatter_spec(formatter) == expected


def test_formatter_spec_carries_gmtime_and_instance_time_formats() -> None:
    """converter=time.gmtime and instance-level default_time/msec_format are part of the spec."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    formatter.converter = time.gmtime  # type: ignore[assignment]
    formatter.default_time_format = "%H:%M:%S"
    formatter.default_msec_format = None  # type: ignore[assignment]
    assert formatter_spec(formatter) == ("%(asctime)s %(message)s", None, "%", None, "%H:%M:%S", None, "gm")


def test_formatter_spec_survives_the_wire() -> None:
    """A spec is itself a plain value: the listener can send it in the plan."""
    spec = formatter_spec(logging.Formatter("%(tenant)s %(message)s", "%H", defaults={"tenant": "x"}))
    assert spec is not None and _wire.wire_safe(spec)
    assert decode(encode(spec)) == spec


# -- Renderer == logging.Formatter, byte for byte ---------------------------------------------------------


@contextlib.contextmanager
def _timezone(tz: str) -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _record(
    created: float,
    msg: str = "hello %s",
    args: Any = ("world",),
    *,
    level: int = logging.INFO,
    name: str = "app.db",
    exc_text: str | None = None,
    stack_info: str | None = None,
    extra: dict[str, Any] | None = None,
) -> logging.LogRecord:
    """A record as FunnelHandler.prepare leaves it: message merged, exception rendered, exc_info None."""
    record = logging.LogRecord(name, level, "/srv/app/db.py", 42, msg, args, None, "query", stack_info)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord.__init__ computes it
    record.exc_text = exc_text
    record.__dict__.update(extra or {})
    record.message = record.getMessage()
    return record


def _real_exc_text() -> str:
    try:
        raise ValueError("bad \udcff value \U0001f600")
    except ValueError:
        return logging.Formatter().formatException(sys.exc_info())


_EXC_TEXT = _real_exc_text()


_PIECES = {
    "%": [
        "%(asctime)s",
        "%(msecs)03d",
        "%(msecs)d",
        "%(levelname)-8s",
        "%(levelno)d",
        "%(name)s",
        "%(message)s",
        "%(message)r",
        "%(lineno)d",
        "%(funcName)s",
        "%(created)f",
        "%(process)d",
        "%(module)s",
        "%%",
        "->",
    ],
    "{": [
        "{asctime}",
        "{msecs:03.0f}",
        "{levelname:<8}",
        "{levelno}",
        "{name}",
        "{message}",
        "{message!r}",
        "{lineno:>5}",
        "{funcName}",
        "{created:.3f}",
        "{module}",
        "{{literal}}",
        "->",
    ],
    "$": [
        "$asctime",
        "${asctime}",
        "$msecs",
        "$levelname",
        "${name}",
        "$message",
        "${message}",
        "$lineno",
        "$$",
        "->",
    ],
}
_TENANT = {"%": "%(tenant)s", "{": "{tenant}", "$": "${tenant}"}
_TRANSITIONS = [
    -31_536_000,  # 1969
    -1,
    0,
    1_700_000_000,
    1_710_053_999,  # 2024-03-10, a second before US clocks go forward
    1_710_054_000,
    1_730_613_599,  # 2024-11-03, a second before US clocks go back
    1_730_613_600,
    2**31 - 1,
    2**31,  # past 2038
]
_OFFSETS = st.sampled_from(
    [
        0.0,
        0.0004,
        0.001,
        0.25,
        0.5,
        0.999,
        0.9995,
        0.99999999,
        1.0,
        1.0000001,
        59.999,
        60.0,
        3600.0,
        -0.001,
        -1.0,
    ]
) | st.floats(0, 200_000, allow_nan=False)


@st.composite
def formatters(draw: st.DrawFn) -> logging.Formatter:
    style = draw(st.sampled_from("%{$"))
    defaults = draw(st.none() | st.just({"tenant": "acme"}))
    pieces = _PIECES[style] + ([_TENANT[style]] if defaults else [])
    fmt = draw(
        st.none()
        | st.lists(st.sampled_from(pieces), min_size=1, max_size=7).flatmap(
            lambda chosen: st.lists(
                st.sampled_from([" ", " | ", "", "\t", ": "]), min_size=len(chosen), max_size=len(chosen)
            ).map(lambda seps: "".join(p + s for p, s in zip(chosen, seps)))
        )
    )
    datefmt = draw(
        st.none()
        | st.sampled_from(
            ["", "%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%d/%b/%Y %I:%M:%S %p", "%j %U %a %Z", "%s"]
        )
    )
    kwargs = {"defaults": defaults} if defaults else {}
    formatter = logging.Formatter(fmt, datefmt, style, validate=False, **kwargs)  # type: ignore[arg-type]
    if draw(st.booleans()):
        formatter.converter = time.gmtime  # type: ignore[assignment]
    formatter.default_time_format = draw(st.sampled_from(["%Y-%m-%d %H:%M:%S", "%H:%M:%S", "%c"]))
    formatter.default_msec_format = draw(st.sampled_from(["%s,%03d", "%s.%03d", None]))
    return formatter


@st.composite
def records(draw: st.DrawFn) -> list[logging.LogRecord]:
    base = draw(st.sampled_from(_TRANSITIONS) | st.integers(0, 2**32))
    offsets = draw(st.lists(_OFFSETS, min_size=1, max_size=6))
    made = []
    for offset in offsets:
        created = base + offset  # may fall before the epoch: int() and the converters round differently there
        msg, args = draw(
            st.tuples(_awkward_text, st.just(()))
            | st.tuples(st.just("%s did %r in %d ms"), st.tuples(_awkward_text, _scalars, st.integers()))
            | st.tuples(
                st.just("%(user)s logged in"), st.tuples(st.fixed_dictionaries({"user": _awkward_text}))
            )
        )
        trailer = st.none() | st.sampled_from([_EXC_TEXT, "Traceback\n  line\n", "x"]) | _awkward_text
        made.append(
            _record(
                created,
                msg,
                args,
                level=draw(
                    st.sampled_from([5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 60])
                ),
                name=draw(st.sampled_from(["root", "app.db", "\U0001f600.\udcff"])),
                exc_text=draw(trailer),
                stack_info=draw(trailer),
                extra=draw(st.none() | st.fixed_dictionaries({"tenant": _awkward_text})),
            )
        )
    return made


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    formatter=formatters(),
    batch=records(),
    tz=st.sampled_from(["UTC0", "EST5EDT,M3.2.0,M11.1.0", "IST-5:30", "NZST-12NZDT,M9.5.0,M4.1.0/3"]),
)
def test_renderer_writes_the_same_bytes_as_the_formatter_it_replaces(
    formatter: logging.Formatter, batch: list[logging.LogRecord], tz: str
) -> None:
    """Lines rendered in the worker from a spec equal what the listener's own Formatter would write."""
    spec = formatter_spec(formatter)
    assert spec is not None
    renderer = Renderer(decode(encode(spec)))  # as the worker gets it: through the plan
    with _timezone(tz):
        for record in batch:  # one renderer for the whole batch, as in a worker: its per-second cache is live
            rendered = renderer.format(record)
            expected = formatter.format(record)
            assert rendered == expected


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from(_TRANSITIONS),
    offsets=st.lists(
        st.sampled_from([-1.0, -0.999, -0.5, -0.001, 0.0, 0.001, 0.5, 0.999, 1.0, 1.5])
        | st.floats(-2.5, 2.5),
        min_size=2,
        max_size=12,
    ),
    gmt=st.booleans(),
    datefmt=st.sampled_from([None, "%H:%M:%S", "%Y-%m-%d %H:%M:%S %Z"]),
)
def test_renderer_time_cache_matches_around_second_boundaries(
    base: int, offsets: list[float], gmt: bool, datefmt: str | None
) -> None:
    """Records fractions of a second apart, in any order, either side of the epoch, get the right time."""
    formatter = logging.Formatter("%(asctime)s %(msecs)03d %(message)s", datefmt)
    if gmt:
        formatter.converter = time.gmtime  # type: ignore[assignment]
    renderer = Renderer(formatter_spec(formatter))  # type: ignore[arg-type]
    with _timezone("EST5EDT,M3.2.0,M11.1.0"):
        for offset in offsets:
            record = _record(base + offset)
            assert renderer.format(record) == formatter.format(record)


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0, 1_700_000_000.5])
def test_renderer_cache_does_not_leak_a_second_into_the_next(created: float) -> None:
    """After rendering one second, a record in the next (or the same) second gets its own time text."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    formatter.converter = time.gmtime  # type: ignore[assignment]
    renderer = Renderer(formatter_spec(formatter))  # type: ignore[arg-type]
    renderer.format(_record(1_700_000_000.999))
    record = _record(created)
    assert renderer.format(record) == formatter.format(record)


def test_renderer_cache_is_not_poisoned_by_a_negative_timestamp() -> None:
    """A record in (-1, 0) followed by one in [0, 1) gets the latter's own time text."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    formatter.converter = time.gmtime  # type: ignore[assignment]
    renderer = Renderer(formatter_spec(formatter))  # type: ignore[arg-type]
    renderer.format(_record(-0.5))
    record = _record(0.25)
    assert renderer.format(record) == formatter.format(record) == "1970-01-01 00:00:00,250 hello world"


def test_renderer_reports_a_missing_field_like_the_formatter() -> None:
    """A '%' format naming an absent attribute raises the same ValueError as logging.Formatter."""
    formatter = logging.Formatter("%(nope)s %(message)s")
    record = _record(1_700_000_000.0)
    with pytest.raises(ValueError, match=r"^Formatting field not found in record: 'nope'$"):
        formatter.format(record)
    with pytest.raises(ValueError, match=r"^Formatting field not found in record: 'nope'$"):
        Renderer(formatter_spec(formatter)).format(record)  # type: ignore[arg-type]


def test_renderer_uses_the_merged_message_not_the_arguments() -> None:
    """The renderer writes record.message (merged by the worker) and does not format args again."""
    record = _record(1_700_000_000.0, "value %s", ("before",))
    record.args = ("after",)  # mutated after prepare(): what travels is what was merged
    assert Renderer(formatter_spec(None)).format(record) == "value before"  # type: ignore[arg-type]
