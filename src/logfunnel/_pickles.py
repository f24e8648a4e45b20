"""A pickle decoder for plain values only: no global is ever looked up, nothing is ever called.

``loads(data)`` reads pickles of protocols 0 to 5 made of None, bool, int, float, str, bytes, tuple,
list, dict, set and frozenset (with the memo, MARK, FRAME and the other opcodes that only arrange
those), which is what the standard library's ``SocketHandler`` and ``DatagramHandler`` send: a
record's ``__dict__``, pickled with protocol 1. Under protocols 0 to 2, bytes, sets and frozensets are
pickled as calls (``_codecs.encode(text, "latin1")``, ``__builtin__.set([...])``): those exact calls
are recognised by name and rebuilt here, without importing or calling anything, and their
arguments are checked (text that latin-1 can encode; set members as dict keys below). Every other
global, and every opcode that could import or call something (STACK_GLOBAL, BUILD, INST, OBJ,
NEWOBJ, NEWOBJ_EX, EXT1/2/4, PERSID, BINPERSID, a REDUCE of anything but those calls), the
out-of-band buffers of protocol 5, bytearrays, and any unknown opcode are refused with a
``PickleRefused`` naming the opcode and its offset.

Bounded cost (DESIGN rule 11): every opcode does constant work, or work linear in the bytes it read
or in the items it pops (each pushed once by an opcode of its own), so decoding is linear in the
bytes. What is not linear is caught by limits:

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

Any other failure (a truncated pickle, a bad length, a wrong type on the stack, invalid UTF-8) is a
``PickleRefused`` as well: random bytes never raise anything else.
"""

from __future__ import annotations

import codecs
import struct
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_KEY_SIZE",
    "MAX_LONG_BYTES",
    "MAX_OBJECTS",
    "MAX_PLAIN_KEYS",
    "PickleRefused",
    "loads",
    "tree_size",
]

MAX_DEPTH = 32  # containers within containers (the value itself is at depth 0)
MAX_OBJECTS = 1_000_000  # values pushed on the stack, and memo entries
MAX_INT_DIGITS = 640  # digits of an INT or LONG text opcode (about the size LONG1 allows)
MAX_LONG_BYTES = 256  # bytes of a LONG1 or LONG4 integer (LONG1 allows 255)
MAX_KEY_SIZE = 64  # the tree size of a tuple used as a dict key
MAX_PLAIN_KEYS = 1000  # float and tuple keys per pickle (their hashes can be made to collide)
_MAX_LINE = 1 << 20  # a text opcode's argument (a STRING or UNICODE line may be long)
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

_I4 = struct.Struct("<i")
_U2 = struct.Struct("<H")
_U4 = struct.Struct("<I")
_U8 = struct.Struct("<Q")
_F8 = struct.Struct(">d")


class _Decoder:
    __slots__ = ("data", "marks", "memo", "objects", "plain_keys", "pos", "stack", "start")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.start = 0  # the offset of the opcode being decoded, for errors
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.objects = 0
        self.plain_keys = 0

    def fail(self, what: str) -> PickleRefused:
        op = self.data[self.start] if self.start < len(self.data) else None
        name = _name(op)
        return PickleRefused(f"refused pickle: {what} (opcode {name} at offset {self.start})")

    # -- reading arguments --------------------------------------------------------------------------

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise self.fail(f"truncated: {size} bytes expected, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def line(self, limit: int = _MAX_LINE) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + limit + 1)
        if end < 0:
            raise self.fail(f"a text argument without its newline within {limit} bytes")
        chunk = self.data[self.pos : end]
        self.pos = end + 1
        return chunk

    def text_int(self) -> int:
        if self.data.find(b"\n", self.pos, self.pos + MAX_INT_DIGITS + 4) < 0:
            raise self.fail(f"an integer of more than {MAX_INT_DIGITS} digits, or without its newline")
        digits = self.line(MAX_INT_DIGITS + 3)
        if digits.endswith(b"L"):
            digits = digits[:-1]
        if len(digits.lstrip(b"+-")) > MAX_INT_DIGITS:
            raise self.fail(f"an integer of more than {MAX_INT_DIGITS} digits")
        try:
            return int(digits, 0)
        except ValueError:
            raise self.fail(f"{digits[:40]!r} is not an integer") from None

    def long(self, size: int) -> int:
        if size > MAX_LONG_BYTES:
            raise self.fail(f"an integer of {size} bytes (at most {MAX_LONG_BYTES})")
        return int.from_bytes(self.take(size), "little", signed=True)

    def utf8(self, size: int) -> str:
        try:
            return self.take(size).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise self.fail(f"invalid UTF-8 ({exc.reason})") from None

    def ascii(self, raw: bytes) -> str:
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("a protocol 0-2 string that is not ASCII") from None

    # -- the stack ----------------------------------------------------------------------------------

    def push(self, value: Any) -> None:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self.fail(f"more than {MAX_OBJECTS} values")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("the stack is empty")
        return self.stack.pop()

    def top(self, kind: type) -> Any:
        if not self.stack or type(self.stack[-1]) is not kind:
            found = type(self.stack[-1]).__name__ if self.stack else "nothing"
            raise self.fail(f"expected a {kind.__name__} on the stack, found {found}")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail("no MARK to pop to")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def put(self, index: int) -> None:
        if not self.stack:
            raise self.fail("nothing to memoize")
        if index < 0:
            raise self.fail(f"a negative memo index {index}")
        if len(self.memo) >= MAX_OBJECTS and index not in self.memo:
            raise self.fail(f"more than {MAX_OBJECTS} memo entries")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        try:
            self.push(self.memo[index])
        except KeyError:
            raise self.fail(f"memo index {index} was never set") from None

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

    def global_call(self) -> None:
        module = self.ascii(self.line(_MAX_GLOBAL_NAME))
        name = self.ascii(self.line(_MAX_GLOBAL_NAME))
        call = _CALLS.get((module, name))
        if call is None:
            raise self.fail(f"global {module}.{name}: it would import or call code, which is never done")
        self.push(call)

    def reduce(self) -> None:
        args = self.pop()
        call = self.pop()
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
                self.push(args[0].encode("latin-1"))
            except UnicodeEncodeError:
                raise self.fail("_codecs.encode() of text that latin-1 cannot encode") from None
        elif call.name == "bytes":
            if args:
                raise self.fail("bytes() called with arguments")
            self.push(b"")
        else:  # set, frozenset
            if len(args) > 1 or (args and type(args[0]) is not list):
                raise self.fail(f"{call.name}() called with other arguments than one list")
            members = self.members(args[0]) if args else []
            self.push(set(members) if call.name == "set" else frozenset(members))

    def set_items(self, target: dict[Any, Any], items: list[Any]) -> None:
        if len(items) % 2:
            raise self.fail(f"an odd number of items ({len(items)}) for keys and values")
        for position in range(0, len(items), 2):
            target[self.key(items[position])] = items[position + 1]

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> Any:
        data = self.data
        size = len(data)
        push = self.push
        while True:
            if self.pos >= size:
                self.start = self.pos
                raise self.fail("truncated: no STOP")
            self.start = self.pos
            op = data[self.pos]
            self.pos += 1
            # The opcodes of a record's pickle, most of them, first (protocol 1: BINPUT after each
            # BINUNICODE; protocol 4: MEMOIZE after each SHORT_BINUNICODE).
            # BINPUT and BINUNICODE inline when whole and valid (else through the checked helpers).
            pos = self.pos
            if op == 0x71 and pos < size and self.stack and len(self.memo) < MAX_OBJECTS:  # BINPUT
                self.memo[data[pos]] = self.stack[-1]
                self.pos = pos + 1
            elif op == 0x71:
                self.put(self.take(1)[0])
            elif op == 0x58 or op == 0x8C:  # BINUNICODE, SHORT_BINUNICODE
                if op == 0x58:
                    length, start = (_U4.unpack_from(data, pos)[0] if pos + 4 <= size else -1), pos + 4
                else:
                    length, start = (data[pos] if pos < size else -1), pos + 1
                if length >= 0 and start + length <= size:
                    try:
                        text = data[start : start + length].decode("utf-8", "surrogatepass")
                    except UnicodeDecodeError as exc:
                        raise self.fail(f"invalid UTF-8 ({exc.reason})") from None
                    self.pos = start + length
                    push(text)
                else:
                    raise self.fail(
                        f"truncated: {max(length, 0)} bytes of text expected, {size - start} left"
                    )
            elif op == 0x94:  # MEMOIZE
                self.put(len(self.memo))
            elif op == 0x68:  # BINGET
                self.get(self.take(1)[0])
            elif op == 0x4E:  # NONE
                push(None)
            elif op == 0x4B:  # BININT1
                push(self.take(1)[0])
            elif op == 0x47:  # BINFLOAT
                push(_F8.unpack(self.take(8))[0])
            elif op == 0x2E:  # STOP
                value = self.pop()
                if self.pos != size:
                    raise self.fail(f"{size - self.pos} bytes after STOP")
                if self.stack or self.marks:
                    raise self.fail("values left on the stack at STOP")
                return value
            elif op == 0x80:  # PROTO
                (proto,) = self.take(1)
                if proto > 5:
                    raise self.fail(f"protocol {proto} (at most 5)")
            elif op == 0x95:  # FRAME: a hint for buffered readers, nothing to check but its length
                (length,) = _U8.unpack(self.take(8))
                if length > size - self.pos:
                    raise self.fail(f"truncated: a frame of {length} bytes with {size - self.pos} left")
            elif op == 0x28:  # MARK
                self.marks.append(self.stack)
                self.stack = []
            elif op == 0x88:  # NEWTRUE
                push(True)
            elif op == 0x89:  # NEWFALSE
                push(False)
            elif op == 0x4D:  # BININT2
                push(_U2.unpack(self.take(2))[0])
            elif op == 0x4A:  # BININT
                push(_I4.unpack(self.take(4))[0])
            elif op == 0x8A:  # LONG1
                push(self.long(self.take(1)[0]))
            elif op == 0x8B:  # LONG4
                push(self.long(_I4.unpack(self.take(4))[0]))
            elif op == 0x49:  # INT (text; "00" and "01" are protocol 0's False and True)
                self.pos_line_bool()
            elif op == 0x4C:  # LONG (text)
                push(self.text_int())
            elif op == 0x46:  # FLOAT (text)
                number = self.line(100)
                try:
                    push(float(number))
                except ValueError:
                    raise self.fail(f"{number[:40]!r} is not a float") from None
            elif op == 0x8D:  # BINUNICODE8
                push(self.utf8(_U8.unpack(self.take(8))[0]))
            elif op == 0x56:  # UNICODE (text, raw-unicode-escape)
                try:
                    push(self.line().decode("raw-unicode-escape"))
                except UnicodeDecodeError as exc:
                    raise self.fail(f"an invalid UNICODE argument ({exc.reason})") from None
            elif op == 0x43:  # SHORT_BINBYTES
                push(self.take(self.take(1)[0]))
            elif op == 0x42:  # BINBYTES
                push(self.take(_U4.unpack(self.take(4))[0]))
            elif op == 0x8E:  # BINBYTES8
                push(self.take(_U8.unpack(self.take(8))[0]))
            elif op == 0x55:  # SHORT_BINSTRING (Python 2 str, read as ASCII like pickle.loads)
                push(self.ascii(self.take(self.take(1)[0])))
            elif op == 0x54:  # BINSTRING
                push(self.ascii(self.take(_I4.unpack(self.take(4))[0])))
            elif op == 0x53:  # STRING (text, a quoted Python 2 repr)
                quoted = self.line().rstrip()
                if len(quoted) < 2 or quoted[0] != quoted[-1] or quoted[:1] not in (b"'", b'"'):
                    raise self.fail("a STRING argument that is not quoted")
                try:
                    raw = codecs.escape_decode(quoted[1:-1])[0]
                except ValueError as exc:
                    raise self.fail(f"an invalid STRING escape ({exc})") from None
                push(self.ascii(raw))
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x85:  # TUPLE1
                push((self.pop(),))
            elif op == 0x86:  # TUPLE2
                second = self.pop()
                push((self.pop(), second))
            elif op == 0x87:  # TUPLE3
                third, second = self.pop(), self.pop()
                push((self.pop(), second, third))
            elif op == 0x74:  # TUPLE
                push(tuple(self.pop_mark()))
            elif op == 0x5D:  # EMPTY_LIST
                push([])
            elif op == 0x6C:  # LIST
                push(self.pop_mark())
            elif op == 0x61:  # APPEND
                value = self.pop()
                self.top(list).append(value)
            elif op == 0x65:  # APPENDS
                items = self.pop_mark()
                self.top(list).extend(items)
            elif op == 0x7D:  # EMPTY_DICT
                push({})
            elif op == 0x64:  # DICT
                items = self.pop_mark()
                target: dict[Any, Any] = {}
                self.set_items(target, items)
                push(target)
            elif op == 0x73:  # SETITEM
                value = self.pop()
                key = self.pop()
                self.set_items(self.top(dict), [key, value])
            elif op == 0x75:  # SETITEMS
                items = self.pop_mark()
                self.set_items(self.top(dict), items)
            elif op == 0x30:  # POP
                if self.stack:
                    self.stack.pop()
                else:
                    self.pop_mark()
            elif op == 0x31:  # POP_MARK
                self.pop_mark()
            elif op == 0x32:  # DUP
                if not self.stack:
                    raise self.fail("the stack is empty")
                push(self.stack[-1])
            elif op == 0x67:  # GET
                self.get(self.text_index())
            elif op == 0x6A:  # LONG_BINGET
                self.get(_U4.unpack(self.take(4))[0])
            elif op == 0x70:  # PUT
                self.put(self.text_index())
            elif op == 0x72:  # LONG_BINPUT
                self.put(_U4.unpack(self.take(4))[0])
            elif op == 0x63:  # GLOBAL: only the calls that stand for bytes, sets and frozensets
                self.global_call()
            elif op == 0x52:  # REDUCE: one of those calls
                self.reduce()
            elif op == 0x8F:  # EMPTY_SET
                push(set())
            elif op == 0x90:  # ADDITEMS
                items = self.pop_mark()
                self.top(set).update(self.members(items))
            elif op == 0x91:  # FROZENSET
                push(frozenset(self.members(self.pop_mark())))
            elif op in _REFUSED:
                raise self.fail("it would import or call code, which is never done")
            elif op in _UNSUPPORTED:
                raise self.fail(
                    "only None, bool, int, float, str, bytes, tuple, list, dict, set and frozenset are "
                    "accepted"
                )
            else:
                raise self.fail("an unknown opcode")

    def pos_line_bool(self) -> None:
        start = self.pos
        flag = self.data[start : start + 3]
        if flag in (b"00\n", b"01\n"):
            self.pos += 3
            self.push(flag == b"01\n")
        else:
            self.push(self.text_int())

    def text_index(self) -> int:
        digits = self.line(24)
        if not digits.isdigit():
            raise self.fail(f"a memo index {digits[:30]!r} that is not a number")
        return int(digits)


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


def loads(data: bytes, *, max_size: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """Decode *data*, a pickle of plain values, without looking up any global; see the module's doc.

    *max_size* bounds the value as the tree it expands to (``tree_size``); by default four times the
    length of *data* plus 4096. Raises ``PickleRefused`` for anything else, never another exception.
    """
    data = bytes(data)
    budget = 4 * len(data) + 4096 if max_size is None else max_size
    decoder = _Decoder(data)
    try:
        value = decoder.run()
    except PickleRefused:
        raise
    except (RecursionError, MemoryError):
        raise decoder.fail("out of memory or recursion") from None
    except Exception as exc:  # a wrong type met an operation: still the peer's fault, still ours to name
        raise decoder.fail(f"{type(exc).__name__}: {exc}") from None
    tree_size(value, budget, max_depth)
    return value
