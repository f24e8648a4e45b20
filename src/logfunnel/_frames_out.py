"""Turning a batch of a worker's records into the frames that carry it to the listener.

``OutgoingBatch`` does it in two steps, each bounded whatever a record holds (issue 8: a 70 MB extra
recursed until the OOM killer came). Made from a batch, it cuts each message, exception or stack text
longer than ``MAX_TEXT`` once, with a marker; renders the lines the listener's plan asks for with the
renderers made from that plan (``renderer``); and, when the listener wants whole records, turns each
one into the attribute dict the listener's schema takes (containers as nested JSON, anything else
not plain as its repr). It says which records it cut (``cut``), for the sender to count. Its
``frames()`` then encodes it once, and only if that is too large for one frame each record once
more, to group them; a record too large alone is cut down further, once.

The counts a batch carries (accepted, dropped, lost, truncated) are the sender's: ``SocketSink``
passes them in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import _render, _wire
from ._handling import banner

__all__ = ["OutgoingBatch", "placeholder", "renderer"]


class OutgoingBatch:
    """One batch as the listener's schema takes it: levels, lines, attribute dicts, nested values."""

    def __init__(
        self,
        batch: list[logging.LogRecord],
        renderers: list[logging.Formatter | None],
        full: bool,
        handler: Callable[[], Any],
    ) -> None:
        """Cut, render and make plain the records of *batch* (in place: the sender's own); *full*:
        send the records' attribute dicts too; *handler* gives the handler whose ``handleError``
        hears of a record a renderer failed on (or None)."""
        cut: set[int] = set()
        for index, record in enumerate(batch):
            _cut_record(record, index, cut)
        lines = [_render_lines(renderer, batch, handler) for renderer in renderers]
        for chunk in lines:  # a format can name an extra: its line is as long as the extra
            for index, line in enumerate(chunk):
                if line is not None and len(line) > _LINE_LIMIT:
                    chunk[index] = _cut_text(line, _LINE_LIMIT)
                    cut.add(index)
        levels = [_level(record.levelno) for record in batch]
        records = None
        nested: list[tuple[int, str]] = []
        if full:
            records = [_state(record) for record in batch]
            for index, state in enumerate(records):
                state["levelno"] = levels[index]
                _plain_state(state, index, nested, cut)
        self.levels = levels
        self.lines = lines
        self.records = records
        self.nested = nested
        #: The indexes of the records cut down to fit a frame.
        self.cut = cut
        self._totals = (0, 0, 0, 0)

    def frames(self, first: int, stamped: int, dropped: int, lost: int, truncated: int) -> list[bytes]:
        """The batch as frames of at most ``MAX_FRAME`` bytes: *first* is the sequence number of its
        first record, the rest the process's totals so far."""
        self._totals = (stamped, dropped, lost, truncated)
        levels, lines, records, nested = self.levels, self.lines, self.records, self.nested
        payload = self._pack(first, levels, lines, records, nested)
        limit = _wire.MAX_FRAME - _wire.HEADER.size
        if len(payload) <= limit and _nested_size(records, nested) <= _wire.MAX_NESTED:
            return [_wire.frame(payload)]
        # Too large for one frame: measure each record alone, group them, encode each group.
        count = len(levels)
        sizes = []
        for index in range(count):
            part = self._part(index, index + 1, first)
            sizes.append((len(part[0]), part[1]))
        frames = []
        start = 0
        while start < count:
            end, size, nested_size = start, 0, 0
            while end < count and (
                end == start
                or (size + sizes[end][0] + 64 <= limit and nested_size + sizes[end][1] <= _wire.MAX_NESTED)
            ):
                size += sizes[end][0] + 64
                nested_size += sizes[end][1]
                end += 1
            payload, nested_size = self._part(start, end, first)
            if len(payload) > limit or nested_size > _wire.MAX_NESTED:  # one record, too large alone
                payload = self._shrunk(start, first)
            frames.append(_wire.frame(payload))
            start = end
        return frames

    def _pack(
        self,
        first: int,
        levels: list[int],
        lines: list[list[str | None]],
        records: list[dict[str, Any]] | None,
        nested: list[tuple[int, str]],
    ) -> bytes:
        stamped, dropped, lost, truncated = self._totals
        escaped = plain = False
        while True:
            message = (
                _wire.BATCH, first, stamped, dropped, lost, levels, lines, records,
                truncated, nested, escaped,
            )  # fmt: skip
            try:
                return _wire.pack(message)
            except UnicodeEncodeError:  # lone surrogates (surrogateescape'd bytes): carried exactly
                if escaped:
                    raise
                escaped = True
                lines = [[_escape_str(line) for line in chunk] for chunk in lines]
                for state in records or ():
                    for key, value in state.items():
                        if type(value) is str:
                            state[key] = _escape_str(value)
            except (OverflowError, TypeError):  # an int outside 64 bits, a subclass of str...: its repr
                if plain:
                    raise
                plain = True
                for state in records or ():
                    _plain_state(state, -1, None, None, strict=True)

    def _part(self, start: int, end: int, first: int) -> tuple[bytes, int]:
        """The frame payload for records start..end of the batch, and its bytes of nested values."""
        records = self.records
        part_records = None if records is None else records[start:end]
        part_nested = [(index - start, key) for index, key in self.nested if start <= index < end]
        payload = self._pack(
            first + start,
            self.levels[start:end],
            [chunk[start:end] for chunk in self.lines],
            part_records,
            part_nested,
        )
        return payload, _nested_size(part_records, part_nested)

    def _shrunk(self, index: int, first: int) -> bytes:
        """One record that is too large even alone, cut down to fit (strings to 1/16 of ``MAX_TEXT``,
        nested values to their cut text); a placeholder if even that does not fit."""
        levels, lines, records = self.levels, self.lines, self.records
        short = _wire.MAX_TEXT // 16
        part_lines = [
            [None if line is None else _cut_text(line, short) for line in chunk[index : index + 1]]
            for chunk in lines
        ]
        part_records = None
        if records is not None:
            state = dict(records[index])
            for key, value in state.items():
                if type(value) is str:
                    state[key] = _cut_text(value, short)
                elif type(value) is _wire.Ext:
                    state[key] = _cut_text(bytes(value.data).decode("utf-8", "replace"), short)
            part_records = [state]
        payload = self._pack(first + index, levels[index : index + 1], part_lines, part_records, [])
        if len(payload) + _wire.HEADER.size <= _wire.MAX_FRAME:
            return payload
        banner("a log record too large to send even cut down was replaced by a placeholder")
        text = "[logfunnel: a record too large to send was replaced by this placeholder]"
        state = {"name": "logfunnel", "levelno": levels[index], "msg": text, "message": text}
        return self._pack(
            first + index,
            levels[index : index + 1],
            [[text] for _ in lines],
            None if records is None else [state],
            [],
        )


def _render_lines(
    renderer: logging.Formatter | None, batch: list[logging.LogRecord], handler: Callable[[], Any]
) -> list[str | None]:
    if renderer is None:  # a formatter this process cannot rebuild (said once, at connection)
        return [None] * len(batch)
    try:
        return [renderer.format(record) for record in batch]
    except Exception:
        lines: list[str | None] = []
        for record in batch:
            try:
                lines.append(renderer.format(record))
            except Exception:
                lines.append(None)  # what the handler would have done in the worker: report, skip
                owner = handler()
                if owner is not None:
                    owner.handleError(record)
        return lines


def renderer(spec: Any) -> logging.Formatter | None:
    """The formatter that renders the lines of *spec* here, or None (with a banner) if this process
    cannot rebuild it: a class it cannot import, or one it does not take as safe to render here."""
    try:
        return _render.make_renderer(spec)
    except Exception as exc:
        banner(
            f"cannot render the log listener's format {spec[1] if type(spec) is tuple else spec!r} in "
            f"this process ({exc!r}): its lines are not sent; make the formatter's class importable "
            "here under the same name, as the listener's process has it"
        )
        return None


def placeholder(record: logging.LogRecord, exc: Exception) -> logging.LogRecord:
    """A plain stand-in for a record that could not be encoded, so that it is still accounted for."""
    level = _level(record.levelno)
    text = f"[logfunnel: a {logging.getLevelName(level)} record could not be encoded: {exc!r}]"
    stand_in = logging.makeLogRecord({"name": str(record.name), "levelno": level, "msg": text})
    stand_in.levelname = logging.getLevelName(level)
    stand_in.message = text
    return stand_in


def _level(level: object) -> int:
    """A level as a plain int within what the listener accepts (0 to 2**31 - 1)."""
    try:
        value = int(level)  # type: ignore[call-overload]
    except Exception:
        return logging.NOTSET
    return value if 0 <= value < 2**31 else logging.NOTSET


def _cut_text(text: str, limit: int = _wire.MAX_TEXT) -> str:
    """*text* cut to *limit* characters, with a marker saying how long it was."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" [logfunnel: truncated from {len(text)} characters]"


_CUT_ATTRIBUTES = ("message", "exc_text", "stack_info")
#: Room for a line made of a few texts each already cut to ``MAX_TEXT``: only a line that names
#: other long attributes is cut again.
_LINE_LIMIT = 4 * _wire.MAX_TEXT


def _cut_record(record: logging.LogRecord, index: int, cut: set[int]) -> None:
    """Cut, in place and before any line is rendered, a record's long message, exception and stack
    texts. (Long extras are cut where they show: in a rendered line, and in ``_plain_state``; looking
    for them in every record here would cost the hot path a set difference each.)"""
    state = record.__dict__
    for key in _CUT_ATTRIBUTES:
        value = state.get(key)
        if type(value) is str and len(value) > _wire.MAX_TEXT:
            state[key] = _cut_text(value)
            cut.add(index)


_PLAIN = (str, int, float, bool, type(None))
_CONTAINER_TYPES = (dict, list, tuple, set, frozenset, bytes)  # as nested JSON that keeps their types


def _plain_state(
    state: dict[str, Any],
    index: int,
    nested: list[tuple[int, str]] | None,
    cut: set[int] | None,
    strict: bool = False,
) -> None:
    """Make, in place, every value of a record's attribute dict one the listener's schema accepts:
    a container becomes nested JSON (``Ext(NESTED)``, listed in *nested*), anything else not plain
    its repr; with *strict*, ints outside 64 bits and nested values too."""
    for key, value in state.items():
        kind = type(value)
        if kind is str:
            if len(value) > _wire.MAX_TEXT:
                state[key] = _cut_text(value)
                if cut is not None:
                    cut.add(index)
            continue
        if kind in _PLAIN:
            if strict and kind is int and not -(2**63) <= value < 2**64:
                state[key] = _wire.safe_repr(value)
            continue
        if kind is _wire.Ext:  # a nested value made on the first pass
            continue
        if kind in _CONTAINER_TYPES and nested is not None and not strict and _wire.wire_safe(value):
            text = _wire.nest(value)  # plain and at most _MAX_DEPTH deep: the same on every Python
            if text is not None and len(text) <= _wire.MAX_NESTED_VALUE:
                state[key] = _wire.Ext(_wire.NESTED, text.encode("ascii"))
                nested.append((index, key))
                continue
            if text is not None and cut is not None:
                cut.add(index)
        state[key] = _cut_text(_wire.safe_repr(value))


def _nested_size(records: list[dict[str, Any]] | None, nested: list[tuple[int, str]]) -> int:
    return sum(len(bytes(records[index][key].data)) for index, key in nested) if records else 0


def _escape_str(value: Any) -> Any:
    return _wire.escape(value) if type(value) is str else value


def _state(record: logging.LogRecord) -> dict[str, Any]:
    """The attribute dict that travels for *record*: its message merged, its exception rendered."""
    state = record.__dict__.copy()
    state["msg"] = record.message
    state["args"] = None
    state["exc_info"] = None
    return state
