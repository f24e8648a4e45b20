"""_pickles.loads: plain values only, never a global, bounded cost."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logfunnel import _pickle_rules, _pickles
from logfunnel._pickles import MAX_PLAIN_KEYS, PickleRefused, loads, tree_size

# -- what the stdlib makes decodes to the same value ----------------------------------------------------

_keys = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.tuples(st.integers(-1000, 1000), st.text(max_size=4)),
)


def _values(with_bytes: bool) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**300), max_value=10**300),
        st.floats(allow_nan=False),
        st.text(),
        *([st.binary()] if with_bytes else []),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6),
            st.lists(inner, max_size=6).map(tuple),
            st.dictionaries(_keys, inner, max_size=6),
        ),
        max_leaves=40,
    )


@settings(max_examples=150, deadline=None)
@given(value=_values(with_bytes=False), protocol=st.integers(0, 5))
def test_stdlib_pickles_of_plain_values_decode_to_equal_values(value: Any, protocol: int) -> None:
    """Any pickle.dumps of plain values (bytes aside), any protocol, decodes to an equal value."""
    assert loads(pickle.dumps(value, protocol)) == value


@settings(max_examples=100, deadline=None)
@given(value=_values(with_bytes=True), protocol=st.integers(3, 5))
def test_stdlib_pickles_with_bytes_decode_from_protocol_3(value: Any, protocol: int) -> None:
    """From protocol 3 on, bytes too decode to equal values."""
    assert loads(pickle.dumps(value, protocol)) == value


@pytest.mark.parametrize("protocol", range(6))
def test_special_floats_and_strings_decode(protocol: int) -> None:
    """inf, -0.0, NaN, lone surrogates and control characters survive every protocol."""
    value = [math.inf, -0.0, "\ud800", "a\nb\\c\x00", "日本", 2**64, -(2**64)]
    decoded = loads(pickle.dumps([*value, math.nan], protocol))
    assert decoded[:-1] == value and math.isnan(decoded[-1])
    assert math.copysign(1, decoded[1]) == -1


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize(
    "value",
    [b"abc\xff\x00", b"", {1, "a", None}, frozenset({2.5, (1, "x")}), set(), {"k": [b"x", {b"y"}]}],
    ids=["bytes", "empty-bytes", "set", "frozenset", "empty-set", "nested"],
)
def test_bytes_and_sets_decode_under_every_protocol(protocol: int, value: Any) -> None:
    """Bytes, sets and frozensets decode under every protocol (under 0-2 they are pickled as calls)."""
    decoded = loads(pickle.dumps(value, protocol))
    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"cos\nsystem\n(S'true'\ntR.", r"global os\.system: it would import or call code"),
        (b"cbuiltins\neval\n.", r"global builtins\.eval"),
        (b"c_codecs\nencode\n(X\x01\x00\x00\x00aX\x05\x00\x00\x00utf_8tR.", r"\(text, 'latin1'\)"),
        (b"c_codecs\nencode\n(X\x02\x00\x00\x00\xe2\x82tR.", r"invalid UTF-8|cannot encode"),
        (b"c__builtin__\nbytes\n(K\x05tR.", r"bytes\(\) called with arguments"),
        (b"c__builtin__\nset\n(K\x05tR.", r"other arguments than one list"),
        (b"c__builtin__\nset\n(]]atR.", r"dict key of type list"),
        (b"c__builtin__\nset\n.", r"global set left uncalled"),
        (b"N)R.", r"a call of a NoneType"),
    ],
    ids=[
        "os.system",
        "eval",
        "utf8",
        "not-latin1",
        "bytes-args",
        "set-args",
        "unhashable",
        "uncalled",
        "none",
    ],
)
def test_only_the_calls_that_stand_for_bytes_and_sets_are_rebuilt(payload: bytes, why: str) -> None:
    """Any other global, or those calls with other arguments, is refused, never looked up."""
    with pytest.raises(PickleRefused, match=why):
        loads(payload)


def test_a_set_of_colliding_float_members_is_bounded() -> None:
    """Set members whose hashes an attacker can make collide count against MAX_PLAIN_KEYS."""
    with pytest.raises(PickleRefused, match=r"float or tuple dict keys"):
        loads(pickle.dumps({float(i) + 0.5 for i in range(MAX_PLAIN_KEYS + 1)}, 1))


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_pickle_refused(data: bytes) -> None:
    """Random bytes decode or raise PickleRefused, never anything else."""
    try:
        loads(data)
    except PickleRefused:
        pass


@settings(max_examples=150, deadline=None)
@given(value=_values(with_bytes=True), protocol=st.integers(3, 5), data=st.data())
def test_mutated_pickles_raise_only_pickle_refused(value: Any, protocol: int, data: st.DataObject) -> None:
    """A valid pickle with one byte changed or cut short decodes or raises PickleRefused, nothing else."""
    raw = bytearray(pickle.dumps(value, protocol))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            loads(candidate)
        except PickleRefused:
            pass


# -- nothing is ever imported or called ----------------------------------------------------------------


class MakesAFile:
    """Unpickled by the stdlib, this creates the file at *path*."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", range(6))
def test_a_reduce_that_would_create_a_file_is_refused_and_never_run(tmp_path: Path, protocol: int) -> None:
    """A pickle whose __reduce__ creates a file is refused, naming the opcode, and the file never exists."""
    target = tmp_path / "pwned"
    payload = pickle.dumps({"msg": "x", "evil": MakesAFile(str(target))}, protocol)
    with pytest.raises(
        PickleRefused, match=r"would import or call code.*\(opcode (STACK_)?GLOBAL \(0x..\) at offset \d+\)$"
    ):
        loads(payload)
    assert not target.exists()


@pytest.mark.parametrize(
    ("opcode", "name"),
    [(b"R", "REDUCE"), (b"b", "BUILD"), (b"o", "OBJ"), (b"\x81", "NEWOBJ"), (b"\x92", "NEWOBJ_EX"),
     (b"\x82", "EXT1"), (b"\x83", "EXT2"), (b"\x84", "EXT4"), (b"Q", "BINPERSID"), (b"P", "PERSID"),
     (b"i", "INST"), (b"c", "GLOBAL"), (b"\x93", "STACK_GLOBAL")],
)  # fmt: skip
def test_every_opcode_that_could_call_is_refused_by_name_and_offset(opcode: bytes, name: str) -> None:
    """Each opcode that imports or calls is refused with its name and offset, whatever its arguments."""
    payload = b"\x80\x02N" + opcode + b"\x00" * 8
    with pytest.raises(PickleRefused, match=rf"\(opcode {name} \(0x..\) at offset 3\)$"):
        loads(payload)


def test_bytearrays_are_refused() -> None:
    """Bytearrays (protocol 5) are not among the accepted values."""
    with pytest.raises(PickleRefused, match=r"only None, bool, int, float, str, bytes, tuple, list, dict"):
        loads(pickle.dumps(bytearray(b"x"), 5))


def test_an_unknown_opcode_is_refused() -> None:
    """A byte that is no opcode is refused as unknown, with its offset."""
    with pytest.raises(PickleRefused, match=r"an unknown opcode \(opcode 0xff at offset 2\)$"):
        loads(b"\x80\x04\xff.")


def test_trailing_bytes_after_stop_are_refused() -> None:
    """Bytes after STOP are refused (a frame holds exactly one pickle)."""
    with pytest.raises(PickleRefused, match=r"3 bytes after STOP"):
        loads(pickle.dumps(1) + b"abc")


def test_truncated_pickle_is_refused() -> None:
    """A pickle cut short is refused as truncated."""
    with pytest.raises(PickleRefused, match=r"truncated"):
        loads(pickle.dumps("x" * 100, 4)[:50])


# -- bounded cost ---------------------------------------------------------------------------------------


def billion_laughs(levels: int = 30, width: int = 10) -> bytes:
    """A small pickle of a structure of shared references that expands to width**levels items."""
    value: Any = ["lol" * 10]
    for _ in range(levels):
        value = [value] * width
    return pickle.dumps(value, 4)


def test_memo_sharing_blow_up_is_refused() -> None:
    """Ten-fold sharing thirty deep (10**30 items as a tree) is refused as too large."""
    payload = billion_laughs()
    assert len(payload) < 1000
    with pytest.raises(PickleRefused, match=r"with shared references expanded, is larger than"):
        loads(payload)


def test_memo_sharing_blow_up_costs_steps_bounded_by_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusing 10**30 items walks at most the budget (counted as values met), not the tree."""
    payload = billion_laughs()
    met = 0
    real_type = type

    def counting_type(value: Any) -> type:
        nonlocal met
        met += 1
        return real_type(value)

    monkeypatch.setattr(_pickle_rules, "type", counting_type, raising=False)
    with pytest.raises(PickleRefused):
        loads(payload, max_size=10_000)
    monkeypatch.undo()
    assert met <= 3 * 10_000 + 10 * len(payload)


def test_sharing_within_the_budget_is_fine() -> None:
    """Modest sharing (a string repeated ten times) decodes, the same object shared."""
    value = ["x" * 100] * 10
    decoded = loads(pickle.dumps(value, 2))
    assert decoded == value and decoded[0] is decoded[9]


def test_a_self_containing_list_is_refused() -> None:
    """A list that contains itself is refused as nested too deep."""
    value: list[Any] = []
    value.append(value)
    with pytest.raises(PickleRefused, match=r"containers nested deeper than 32"):
        loads(pickle.dumps(value, 2))


def test_deep_nesting_is_refused() -> None:
    """Lists nested 1000 deep are refused, without recursion."""
    payload = b"\x80\x02" + b"]" * 1000 + b"a" * 999 + b"."
    with pytest.raises(PickleRefused, match=r"containers nested deeper than 32"):
        loads(payload)


def test_nesting_at_the_limit_decodes() -> None:
    """Lists nested 32 deep decode."""
    value: Any = 1
    for _ in range(32):
        value = [value]
    assert loads(pickle.dumps(value, 4)) == value


def test_huge_text_integer_is_refused_before_conversion() -> None:
    """An INT of 100,000 digits is refused by its length (int() of text is quadratic)."""
    with pytest.raises(PickleRefused, match=r"an integer of more than 640 digits.* \(opcode INT"):
        loads(b"I" + b"9" * 100_000 + b"\n.")


def test_huge_text_long_is_refused_before_conversion() -> None:
    """A LONG of 100,000 digits is refused by its length."""
    with pytest.raises(PickleRefused, match=r"more than 640 digits.* \(opcode LONG \(0x4c\)"):
        loads(b"L" + b"9" * 100_000 + b"L\n.")


def test_huge_binary_integer_is_refused() -> None:
    """A LONG4 of a megabyte is refused by its size."""
    payload = b"\x80\x02\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20) + b"."
    with pytest.raises(PickleRefused, match=r"an integer of 1048576 bytes \(at most 256\)"):
        loads(payload)


def test_largest_stdlib_long1_integer_decodes() -> None:
    """An int of 255 bytes (the most LONG1 holds) decodes."""
    value = 2 ** (255 * 8 - 1) - 1
    assert loads(pickle.dumps(value, 2)) == value


def test_int_keys_that_could_collide_are_refused() -> None:
    """Dict keys beyond ±(2**61 - 1), whose hashes an attacker can make collide, are refused."""
    with pytest.raises(PickleRefused, match=r"an int dict key beyond"):
        loads(pickle.dumps({2**61 - 1: 0, 2 * (2**61 - 1): 1}, 4))


def test_many_float_keys_are_refused() -> None:
    """More than 1000 float or tuple keys in one pickle are refused."""
    with pytest.raises(PickleRefused, match=r"more than 1000 float or tuple dict keys"):
        loads(pickle.dumps({n + 0.5: n for n in range(1001)}, 4))


def test_a_tuple_key_over_a_shared_tree_is_refused_before_hashing() -> None:
    """A tuple key over 2**40 shared leaves is refused by size, never hashed."""
    payload = b"\x80\x04}\x8c\x01x\x85\x94"  # {} and ("x",), memo 0
    for level in range(40):  # (previous, previous), memo level + 1; hashing it would cost 2**40
        payload += b"0j" + struct.pack("<I", level) + b"j" + struct.pack("<I", level) + b"\x86\x94"
    with pytest.raises(PickleRefused, match=r"a tuple dict key larger than 64"):
        loads(payload + b"K\x01s.")


def test_unhashable_key_is_refused() -> None:
    """A list used as a dict key (crafted with SETITEM) is refused by type."""
    with pytest.raises(PickleRefused, match=r"a dict key of type list"):
        loads(b"\x80\x02}]Ns.")


def test_tree_size_counts_shared_objects_each_time() -> None:
    """tree_size counts a string shared twice twice."""
    text = "abcd"
    assert tree_size([text, text], 1000) == (1 + 2) + 2 * (1 + 4)


def test_decoding_work_is_linear_in_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values pushed while decoding never exceed the bytes read, even with the memo."""
    pushes = 0
    real_push = _pickles._Decoder.push

    def counting_push(self: Any, value: Any) -> None:
        nonlocal pushes
        pushes += 1
        real_push(self, value)

    monkeypatch.setattr(_pickles._Decoder, "push", counting_push)
    for payload in (billion_laughs(), pickle.dumps(list(range(10_000)), 4), b"\x80\x04N."):
        pushes = 0
        try:
            loads(payload)
        except PickleRefused:
            pass
        assert pushes <= len(payload)
