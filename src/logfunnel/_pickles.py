"""A pickle decoder for plain values only: no global is ever looked up, nothing is ever called.

``loads(data)`` reads pickles of protocols 0 to 5 made of None, bool, int, float, str, bytes, tuple,
list, dict, set and frozenset (with the memo, MARK, FRAME and the other opcodes that only arrange
those), which is what the standard library's ``SocketHandler`` and ``DatagramHandler`` send: a
record's ``__dict__``, pickled with protocol 1. Under protocols 0 to 2, bytes, sets and frozensets are
pickled as calls (``_codecs.encode(text, "latin1")``, ``__builtin__.set([...])``): those exact calls
are recognised by name and rebuilt (``_pickle_rules``), without importing or calling anything, and
their arguments are checked (text that latin-1 can encode; set members as dict keys are). Every other
global, and every opcode that could import or call something (STACK_GLOBAL, BUILD, INST, OBJ,
NEWOBJ, NEWOBJ_EX, EXT1/2/4, PERSID, BINPERSID, a REDUCE of anything but those calls), the
out-of-band buffers of protocol 5, bytearrays, and any unknown opcode are refused with a
``PickleRefused`` naming the opcode and its offset.

Bounded cost (DESIGN rule 11): every opcode does constant work, or work linear in the bytes it read
or in the items it pops (each pushed once by an opcode of its own), so decoding is linear in the
bytes. What is not linear is caught by limits (``_pickle_rules``, with the opcodes refused and the
calls rebuilt): on integers, on dict keys and set members, and on the value as the tree a
formatter walks (``tree_size``).

Any other failure (a truncated pickle, a bad length, a wrong type on the stack, invalid UTF-8) is a
``PickleRefused`` as well: random bytes never raise anything else.
"""

from __future__ import annotations

import codecs
import struct
from typing import Any

from ._pickle_rules import (
    _CALLS,
    _MAX_GLOBAL_NAME,
    _REFUSED,
    _UNSUPPORTED,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_LONG_BYTES,
    MAX_OBJECTS,
    MAX_PLAIN_KEYS,
    PickleRefused,
    _Checks,
    _name,
    tree_size,
)

__all__ = ["MAX_PLAIN_KEYS", "PickleRefused", "loads", "tree_size"]

_MAX_LINE = 1 << 20  # a text opcode's argument (a STRING or UNICODE line may be long)

_I4 = struct.Struct("<i")
_U2 = struct.Struct("<H")
_U4 = struct.Struct("<I")
_U8 = struct.Struct("<Q")
_F8 = struct.Struct(">d")


class _Decoder:
    __slots__ = ("checks", "data", "marks", "memo", "objects", "pos", "stack", "start")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.start = 0  # the offset of the opcode being decoded, for errors
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.objects = 0
        self.checks = _Checks(self.fail)

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
        self.push(self.checks.call(call, args))

    def set_items(self, target: dict[Any, Any], items: list[Any]) -> None:
        if len(items) % 2:
            raise self.fail(f"an odd number of items ({len(items)}) for keys and values")
        for position in range(0, len(items), 2):
            target[self.checks.key(items[position])] = items[position + 1]

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
                self.top(set).update(self.checks.members(items))
            elif op == 0x91:  # FROZENSET
                push(frozenset(self.checks.members(self.pop_mark())))
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
