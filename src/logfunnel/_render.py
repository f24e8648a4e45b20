"""Formatters that cross to the workers: the listener describes each of its handlers' formatters as
plain values, and a worker rebuilds it from that description and renders each record's line itself,
so the listener only writes bytes.

A plain ``logging.Formatter`` travels as a few strings (``formatter_spec``) and is rebuilt as a
``Renderer``; a formatter of a class known or declared safe (``KNOWN_SAFE``, ``render_in_workers``)
travels as its class's import path and its state (``class_spec``). ``render_spec`` picks between them
in the listener, ``make_renderer`` rebuilds either in the worker. The descriptions are plain values
made with ``_wire``'s ``wire_safe`` and ``nest``; what the worker renders with them travels in a batch.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any, Union

from ._jsonfast import fast_json
from ._wire import nest, unnest, wire_safe

__all__ = [
    "Renderer",
    "formatter_spec",
    "make_renderer",
    "render_in_workers",
    "render_spec",
]

# -- lines rendered where the spare cores are ------------------------------------------------------
#
# A plain ``logging.Formatter`` is fully described by a few strings, so the listener can send that
# description to every worker, and the worker renders each record's line itself: the listener then
# only writes bytes. Formatter subclasses may do anything: only those known or declared safe travel
# as a class spec (below, ``render_spec``); the records of any other travel whole instead.

_CONVERTERS: dict[str, Any] = {"local": time.localtime, "gm": time.gmtime}
_STYLE_CHARS: dict[Any, str] = {style: char for char, (style, _) in logging._STYLES.items()}  # noqa: SLF001
#: What a handler without a formatter uses (the same as logging's private default).
DEFAULT_FORMATTER = logging.Formatter()

_OVERRIDABLE = frozenset(
    {"format", "formatTime", "formatException", "formatMessage", "formatStack", "usesTime"}
)

Spec = tuple[str | None, str | None, str, dict[str, Any] | None, str, str | None, str]


def formatter_spec(formatter: logging.Formatter | None) -> Spec | None:
    """Describe *formatter* as plain values, or return None if a worker cannot reproduce it exactly."""
    if formatter is None:
        formatter = DEFAULT_FORMATTER
    if type(formatter) is not logging.Formatter:
        return None
    style = _STYLE_CHARS.get(type(formatter._style))  # noqa: SLF001
    converter = {fn: name for name, fn in _CONVERTERS.items()}.get(formatter.converter)
    defaults = getattr(formatter._style, "_defaults", None)  # noqa: SLF001
    if style is None or converter is None or not wire_safe(defaults):
        return None
    if _OVERRIDABLE.intersection(vars(formatter)):  # a method replaced on the instance
        return None
    return (
        formatter._fmt,  # noqa: SLF001
        formatter.datefmt,
        style,
        defaults,
        formatter.default_time_format,
        formatter.default_msec_format,
        converter,
    )


class Renderer(logging.Formatter):
    """A ``logging.Formatter`` rebuilt from a spec, rendering exactly what the original would.

    Two shortcuts that change no byte: ``time.strftime`` has a resolution of one second, so the text
    for a whole second is cached; and the message is the one ``FunnelHandler.prepare`` already merged
    (``record.message``), so arguments are not formatted twice.
    """

    def __init__(self, spec: Spec) -> None:
        fmt, datefmt, style, defaults, time_format, msec_format, converter = spec
        kwargs: dict[str, Any] = {"defaults": defaults} if defaults else {}
        super().__init__(fmt, datefmt, style, validate=False, **kwargs)  # type: ignore[arg-type]
        self.default_time_format = time_format
        self.default_msec_format = msec_format
        self.converter = _CONVERTERS[converter]
        self._uses_time = self.usesTime()
        # The common case, "%" style without defaults, is one string operation.
        self._percent = self._fmt if style == "%" and not defaults else None
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        created = record.created
        if created < 0:  # int() truncates toward zero: before the epoch, skip the cache
            text = time.strftime(datefmt or self.default_time_format, self.converter(created))
        else:
            second = int(created)
            if second != self._second:
                self._second_text = time.strftime(
                    datefmt or self.default_time_format, self.converter(created)
                )
                self._second = second
            text = self._second_text
        if datefmt or not self.default_msec_format:
            return text
        return self.default_msec_format % (text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format, less the call to record.getMessage().
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        if self._percent is not None:
            try:
                s = self._percent % record.__dict__
            except KeyError as exc:
                raise ValueError(f"Formatting field not found in record: {exc}") from None
        else:
            s = self.formatMessage(record)
        if record.exc_text:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + record.exc_text
        if record.stack_info:
            if s[-1:] != "\n":
                s = s + "\n"
            s = s + self.formatStack(record.stack_info)
        return s


# -- formatters of other classes, rebuilt in the worker from their state ---------------------------
#
# A formatter whose output is a function of the record alone (python-json-logger's JsonFormatter, or
# a class its author declares so with ``render_in_workers``) is described by its class's import path
# and its instance attributes as plain values: the worker imports the class, makes an instance
# without calling ``__init__`` and gives it the same attributes, so every method runs as written,
# on the same state. A formatter whose class is not known or declared safe (its own class, not a
# base), whose class cannot be imported by name, or whose state holds anything but plain values,
# style objects and importable functions or classes, is rendered on the listener as before.

#: Classes rendered in workers without a declaration, by ``module:qualname``: their behaviour is a
#: function of the record and of their instance attributes.
KNOWN_SAFE = frozenset(
    {
        "pythonjsonlogger.json:JsonFormatter",
        "pythonjsonlogger.jsonlogger:JsonFormatter",  # python-json-logger before 3.1
    }
)
_SAFE_MARK = "__logfunnel_render_in_workers__"
_STYLE_KEY = "_style"

ClassSpec = tuple[str, str, str, dict[str, str], Any]  # ("class", path, state JSON, refs, style)
AnySpec = Union[Spec, ClassSpec]  # noqa: UP007


def render_in_workers(cls: type[logging.Formatter]) -> type[logging.Formatter]:
    """Declare *cls* (a ``logging.Formatter`` subclass) safe to render in the workers: its output
    depends only on the record and on its instance attributes, and it can be imported by name in a
    worker. Use as a class decorator. The declaration is the class's own: a subclass must declare
    itself again (it may override a method so that the promise no longer holds)."""
    if not (isinstance(cls, type) and issubclass(cls, logging.Formatter)):
        raise TypeError(f"render_in_workers() expected a logging.Formatter subclass, got {cls!r}")
    setattr(cls, _SAFE_MARK, cls)
    return cls


def _path_of(obj: Any) -> str | None:
    """``module:qualname`` of a function or class that importing that name gives back, else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if type(module) is not str or type(qualname) is not str or "<" in qualname or module == "__main__":
        return None
    try:
        found = _resolve(f"{module}:{qualname}", import_missing=False)
    except Exception:
        return None
    return f"{module}:{qualname}" if found is obj else None


def _resolve(path: str, import_missing: bool = True) -> Any:
    module_name, _, qualname = path.partition(":")
    module = importlib.import_module(module_name) if import_missing else sys.modules[module_name]
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _declared_safe(cls: type) -> bool:
    return cls.__dict__.get(_SAFE_MARK) is cls


def class_spec(formatter: logging.Formatter) -> ClassSpec | None:
    """Describe *formatter*, of a class known or declared safe to render in workers, by its class's
    import path and its state; None if the worker could not rebuild it exactly."""
    cls = type(formatter)
    path = _path_of(cls)
    if path is None or not (path in KNOWN_SAFE or _declared_safe(cls)):
        return None
    state = dict(vars(formatter))
    if _OVERRIDABLE.intersection(state):  # a method replaced on the instance
        return None
    style: Any = None
    if _STYLE_KEY in state:
        value = state.pop(_STYLE_KEY)
        if type(value) is str:  # python-json-logger's own styles ("," and "__sequence__")
            style = value
        else:
            char = _STYLE_CHARS.get(type(value))
            defaults = getattr(value, "_defaults", None)
            if char is None or not wire_safe(defaults) or set(vars(value)) - {"_fmt", "_defaults", "_tpl"}:
                return None
            style = [char, value._fmt, defaults]  # noqa: SLF001
    refs: dict[str, str] = {}
    for key, value in list(state.items()):
        if callable(value):
            ref = _path_of(value)
            if ref is None:
                return None
            refs[key] = ref
            del state[key]
    text = nest(state)
    if text is None:
        return None
    return ("class", path, text, refs, style)


def render_spec(formatter: logging.Formatter | None) -> AnySpec | None:
    """What a worker needs to render *formatter*'s lines: a plain spec (``formatter_spec``), a class
    spec (``class_spec``), or None: the listener renders them."""
    spec = formatter_spec(formatter)
    if spec is not None or formatter is None:
        return spec
    return class_spec(formatter)


class _Rebuilt:
    """Builds the formatter a class spec describes, in the worker."""

    @staticmethod
    def build(spec: ClassSpec) -> logging.Formatter:
        _, path, text, refs, style = spec
        cls = _resolve(path)
        if not (isinstance(cls, type) and issubclass(cls, logging.Formatter)):
            raise TypeError(f"{path} is not a logging.Formatter subclass")
        if not (path in KNOWN_SAFE or _declared_safe(cls)):
            raise TypeError(f"{path} is neither known nor declared safe to render in workers")
        formatter = cls.__new__(cls)
        state = unnest(text.encode("ascii"))
        if type(state) is not dict:
            raise TypeError("the formatter's state is not a dict")
        for key, ref in refs.items():
            state[key] = _resolve(ref)
        if type(style) is list:
            char, fmt, defaults = style
            kind: Any = logging._STYLES[char][0]  # noqa: SLF001
            state[_STYLE_KEY] = kind(fmt, defaults=defaults) if defaults else kind(fmt)
        elif style is not None:
            state[_STYLE_KEY] = style
        formatter.__dict__.update(state)
        return formatter


def make_renderer(spec: Any) -> logging.Formatter:
    """The formatter a worker renders with for *spec*, as the listener's plan gives it."""
    if type(spec) is tuple and len(spec) == 5 and spec[0] == "class":
        return fast_json(_Rebuilt.build(spec))
    return Renderer(spec)
