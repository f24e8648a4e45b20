"""What a pickle from a peer may hold and cost: the rules the opcode machine in ``_pickles`` enforces.

The machine reads the bytes; this says what it accepts and what it refuses: the opcodes refused (and
the names errors give them), the calls of protocols 0 to 2 rebuilt without importing or calling
anything (``_codecs.encode(text, "latin1")``, ``set([...])``, ``frozenset([...])``, ``bytes()``), the
keys a dict or a set may take, and the limits. Kept apart so that the rules read in one place, and
the machine's loop reads as the opcodes it runs.

Bounded cost (DESIGN rule 11): what is not linear in the bytes is caught by limits:

- integers: text ones (``INT``, ``LONG``) at most ``MAX_INT_DIGITS`` digits (int() of text is
  quadratic), binary ones (``LONG1``, ``LONG4``) at most ``MAX_LONG_BYTES`` bytes;
- dict keys and set members: only str, bytes, None, bool, float, int within the 61-bit range where
  distinct ints hash apart, and tuples of those of size at most ``MAX_KEY_SIZE``; at most
  ``MAX_PLAIN_KEYS`` keys per pickle whose hash an attacker could make collide (floats and tuples),
  so that no dict or set is filled in quadratic time; hashing a tuple is not cached by Python and
  would otherwise cost the size of its whole shared tree each time;
- memo references: a GET returns the same object again, which costs nothing in memory but costs a
  formatter or a ``repr`` its whole size each time it is met ("billion laughs": ten nested lists of
  ten references each are 10**10 items to print). So once decoded, the value is walked as the tree
  it appears to be, each shared object counted every time it is met, and refused if that tree is
  larger than ``max_size`` (by default four times the pickle plus 4 KiB) or deeper than
  ``max_depth``. The walk stops as soon as the budget is spent, so it costs at most ``max_size``
  steps. A value that contains itself (possible with the memo) is refused as too deep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_KEY_SIZE",
    "MAX_LONG_BYTES",
    "MAX_OBJECTS",
    "MAX_PLAIN_KEYS",
    "PickleRefused",
    "tree_size",
]

MAX_DEPTH = 32  # containers within containers (the value itself is at depth 0)
MAX_OBJECTS = 1_000_000  # values pushed on the stack, and memo entries
MAX_INT_DIGITS = 640  # digits of an INT or LONG text opcode (about the size LONG1 allows)
MAX_LONG_BYTES = 256  # bytes of a LONG1 or LONG4 integer (LONG1 allows 255)
MAX_KEY_SIZE = 64  # the tree size of a tuple used as a dict key
MAX_PLAIN_KEYS = 1000  # float and tuple keys per pickle (their hashes can be made to collide)
_SAFE_INT_KEY = 2**61 - 1  # ints below it in magnitude hash to themselves (CPython's modulus)


class PickleRefused(ValueError):
    """The pickle is not one of plain values, breaks a limit, or is not a pickle at all."""


# The opcodes refused because they import or call, by byte, with pickletools' names for the errors.
_REFUSED = {
    0x93: "STACK_GLOBAL",
    ord("b"): "BUILD",
    ord("i"): "INST",
    ord("o"): "OBJ",
    0x81: "NEWOBJ",
    0x92: "NEWOBJ_EX",
    0x82: "EXT1",
    0x83: "EXT2",
    0x84: "EXT4",
    ord("P"): "PERSID",
    ord("Q"): "BINPERSID",
}
# Refused because they build what a record has no use for.
_UNSUPPORTED = {
    0x96: "BYTEARRAY8",
    0x97: "NEXT_BUFFER",
    0x98: "READONLY_BUFFER",
}


class _Call:
    """A global the pickle named and may only call once, with checked arguments (REDUCE): one of
    ``_CALLS``. Never part of a decoded value (``tree_size`` refuses it)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


# The calls protocols 0-2 make of bytes, sets and frozensets, by (module, name) as GLOBAL names them.
_CALLS = {
    ("_codecs", "encode"): _Call("encode"),
    ("__builtin__", "bytes"): _Call("bytes"),
    ("builtins", "bytes"): _Call("bytes"),
    ("__builtin__", "set"): _Call("set"),
    ("builtins", "set"): _Call("set"),
    ("__builtin__", "frozenset"): _Call("frozenset"),
    ("builtins", "frozenset"): _Call("frozenset"),
}
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")
_MAX_GLOBAL_NAME = 64  # a module or attribute name of GLOBAL (the ones above are far shorter)


class _Checks:
    """The checks of one pickle's values that need more than a type: dict keys and set members (and
    the count of the float and tuple ones), and the calls rebuilt. *fail* makes the error, naming the
    opcode being decoded and its offset."""

    __slots__ = ("fail", "plain_keys")

    def __init__(self, fail: Callable[[str], PickleRefused]) -> None:
        self.fail = fail
        self.plain_keys = 0

    def key(self, key: Any) -> Any:
        kind = type(key)
        if kind is str or kind is bytes or key is None or kind is bool:
            return key
        if kind is int:
            if -_SAFE_INT_KEY < key < _SAFE_INT_KEY:
                return key
            raise self.fail(f"an int dict key beyond ±(2**61 - 1): {key.bit_length()} bits")
        if kind is float or kind is tuple:
            self.plain_keys += 1
            if self.plain_keys > MAX_PLAIN_KEYS:
                raise self.fail(f"more than {MAX_PLAIN_KEYS} float or tuple dict keys")
            if kind is tuple:
                try:
                    tree_size(key, MAX_KEY_SIZE, MAX_DEPTH)
                except PickleRefused:
                    raise self.fail(f"a tuple dict key larger than {MAX_KEY_SIZE}") from None
                for item in key:
                    self.key(item)
            return key
        raise self.fail(f"a dict key of type {kind.__name__} (expected str, bytes, int, float or tuple)")

    def members(self, items: list[Any]) -> list[Any]:
        """*items* as set members: each checked as a dict key would be (no quadratic hashing)."""
        return [self.key(item) for item in items]

    def call(self, call: Any, args: Any) -> Any:
        """The value that *call* (popped by REDUCE) with *args* stands for: one of ``_CALLS``, checked."""
        if type(call) is not _Call:
            raise self.fail(f"a call of a {type(call).__name__}: it would call code, which is never done")
        if type(args) is not tuple:
            raise self.fail(f"{call.name}() called with {type(args).__name__} arguments, not a tuple")
        if call.name == "encode":
            if not (
                1 <= len(args) <= 2 and type(args[0]) is str and args[1:] in ((), *((e,) for e in _LATIN1))
            ):
                raise self.fail("_codecs.encode() called with other arguments than (text, 'latin1')")
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                raise self.fail("_codecs.encode() of text that latin-1 cannot encode") from None
        elif call.name == "bytes":
            if args:
                raise self.fail("bytes() called with arguments")
            return b""
        else:  # set, frozenset
            if len(args) > 1 or (args and type(args[0]) is not list):
                raise self.fail(f"{call.name}() called with other arguments than one list")
            members = self.members(args[0]) if args else []
            return set(members) if call.name == "set" else frozenset(members)


def _name(op: int | None) -> str:
    if op is None:
        return "none (end of data)"
    name = _REFUSED.get(op) or _UNSUPPORTED.get(op) or _NAMES.get(op)
    return f"{name} ({op:#04x})" if name else f"{op:#04x}"


_NAMES = {
    0x2E: "STOP", 0x80: "PROTO", 0x95: "FRAME", 0x28: "MARK", 0x4E: "NONE", 0x88: "NEWTRUE",
    0x89: "NEWFALSE", 0x63: "GLOBAL", 0x52: "REDUCE", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS",
    0x91: "FROZENSET", 0x4B: "BININT1", 0x4D: "BININT2", 0x4A: "BININT", 0x8A: "LONG1", 0x8B: "LONG4",
    0x49: "INT", 0x4C: "LONG", 0x47: "BINFLOAT", 0x46: "FLOAT", 0x8C: "SHORT_BINUNICODE",
    0x58: "BINUNICODE", 0x8D: "BINUNICODE8", 0x56: "UNICODE", 0x43: "SHORT_BINBYTES", 0x42: "BINBYTES",
    0x8E: "BINBYTES8", 0x55: "SHORT_BINSTRING", 0x54: "BINSTRING", 0x53: "STRING", 0x29: "EMPTY_TUPLE",
    0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3", 0x74: "TUPLE", 0x5D: "EMPTY_LIST", 0x6C: "LIST",
    0x61: "APPEND", 0x65: "APPENDS", 0x7D: "EMPTY_DICT", 0x64: "DICT", 0x73: "SETITEM", 0x75: "SETITEMS",
    0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x67: "GET", 0x68: "BINGET", 0x6A: "LONG_BINGET",
    0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT", 0x94: "MEMOIZE",
}  # fmt: skip


def tree_size(value: Any, budget: int, max_depth: int = MAX_DEPTH) -> int:
    """The size of *value* as the tree a formatter or ``repr`` walks (a shared object counted each time
    it is met): 1 per value plus the length of each str and bytes and the bytes of each int. Raises
    ``PickleRefused`` once it exceeds *budget* (having done at most *budget* steps) or nests deeper
    than *max_depth* (so a value that contains itself is refused too)."""
    remaining = budget
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        kind = type(item)
        if kind is str or kind is bytes:
            remaining -= 1 + len(item)
        elif kind is int:
            remaining -= 1 + item.bit_length() // 8
        elif kind is list or kind is tuple or kind is dict or kind is set or kind is frozenset:
            if depth >= max_depth:
                raise PickleRefused(f"refused pickle: containers nested deeper than {max_depth}")
            remaining -= 1 + len(item)  # paid before its items are queued: the queue stays in budget
            if remaining < 0:
                break
            if kind is dict:
                todo.extend((key, depth + 1) for key in item)
                todo.extend((member, depth + 1) for member in item.values())
            else:
                todo.extend((member, depth + 1) for member in item)
        elif kind is _Call:
            raise PickleRefused(f"refused pickle: global {item.name} left uncalled in the value")
        else:
            remaining -= 1
        if remaining < 0:
            break
    if remaining < 0:
        raise PickleRefused(
            f"refused pickle: its value, with shared references expanded, is larger than {budget} "
            "(a structure of repeated references would cost every formatter that much)"
        )
    return budget - remaining
