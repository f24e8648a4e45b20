"""Configuration files for ``logfunnel serve``: TOML, YAML (with PyYAML) or JSON; load, check, apply.

A file holds a ``logging.config.dictConfig`` dictionary (``version = 1``, ``formatters``, ``filters``,
``handlers``, ``loggers``, ``root``) plus a ``logfunnel`` table with the funnel's own keys::

    [logfunnel]
    address = "unix:/run/user/1000/logfunnel/serve.sock"   # or "tcp://127.0.0.1:PORT"
    state_file = "serve.json"       # where joiners find the address and key
    level = "INFO"                  # the listener's own floor
    receiver = { tcp = "127.0.0.1:9020", udp = "127.0.0.1:9021" }   # stdlib SocketHandler clients
    inline = ["console"]            # handlers to call on the listener's thread
    [logfunnel.lanes.mail]          # a handler on a lane of its own, with these options
    capacity = 1000
    when_full = "drop_oldest"

Relative paths (``state_file``, a handler's ``filename``) are relative to the file's folder, so the
file means the same whoever starts it and from wherever. Every error names the file and the key:
``app.toml: handlers.file.class: cannot resolve 'logging.FileHandlr' ...``.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import logging.config
import logging.handlers
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._binding import parse_host_port
from ._checks import check_address, check_level
from ._lanes import WHEN_FULL, Lane, Retry, inline

__all__ = ["ConfigError", "FileConfig", "apply", "check", "load"]

_FUNNEL_KEYS = ("address", "allow_remote", "inline", "lanes", "level", "receiver", "state_file")
_LANE_KEYS = ("block_timeout", "capacity", "drain_timeout", "retry", "when_full")
_RETRY_KEYS = ("first_delay", "give_up_after", "max_delay")
_RECEIVER_KEYS = ("max_frame", "tcp", "udp")
_SECTIONS = {"handler": "handlers", "formatter": "formatters", "filter": "filters", "logger": "loggers"}


class ConfigError(ValueError):
    """A configuration file that cannot be used: the message starts with the file and the key."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key, self.problem = source, key, message

    def __reduce__(self) -> Any:
        return (ConfigError, (self.source, self.key, self.problem))


class _FieldError(ValueError):
    """Raised inside the configurator for one field of the section being configured."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class FileConfig:
    """A loaded file: its ``dictConfig`` part and the funnel's own options, checked for type."""

    path: Path
    dict_config: dict[str, Any]
    address: str | None = None
    allow_remote: bool = False
    state_file: Path | None = None
    level: int = logging.NOTSET
    receiver: dict[str, Any] | None = None
    lanes: dict[str, dict[str, Any]] = field(default_factory=dict)
    inline: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.fspath(self.path)


# -- loading ------------------------------------------------------------------------------------------


def _parse(path: Path) -> Any:
    source = os.fspath(path)
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read it ({exc.strerror or exc})") from None
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise ConfigError(
                source, "", "a YAML file needs PyYAML, which is not installed: pip install 'logfunnel[yaml]'"
            ) from None
        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise ConfigError(source, "", f"not valid YAML: {exc}") from None
    if suffix == ".json":
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, "", f"not valid JSON: {exc}") from None
    raise ConfigError(
        source, "", f"expected a .toml, .yaml, .yml or .json file, got {suffix or 'no suffix'!r}"
    )


def _seconds(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(source, key, f"expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _table(value: Any, source: str, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(source, key, f"expected a table, got {type(value).__name__!r}")
    for name in value:
        if name not in allowed:
            raise ConfigError(source, f"{key}.{name}", f"unknown key; expected one of {', '.join(allowed)}")
    return dict(value)


def _lane_options(value: Any, source: str, key: str) -> dict[str, Any]:
    options = _table(value, source, key, _LANE_KEYS)
    if "capacity" in options:
        capacity = options["capacity"]
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(source, f"{key}.capacity", f"expected a whole number >= 1, got {capacity!r}")
    if "when_full" in options and options["when_full"] not in WHEN_FULL:
        raise ConfigError(
            source,
            f"{key}.when_full",
            f"expected one of {', '.join(WHEN_FULL)}, got {options['when_full']!r}",
        )
    for name in ("drain_timeout", "block_timeout"):
        if name in options:
            options[name] = _seconds(options[name], source, f"{key}.{name}")
    if "retry" in options:
        retry = options["retry"]
        if retry is False or retry is None:
            options["retry"] = None
        elif isinstance(retry, Mapping):
            given = _table(retry, source, f"{key}.retry", _RETRY_KEYS)
            options["retry"] = Retry(**{n: _seconds(v, source, f"{key}.retry.{n}") for n, v in given.items()})
        else:
            options["retry"] = Retry(give_up_after=_seconds(retry, source, f"{key}.retry"))
    return options


def _resolve_path(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def load(path: str | os.PathLike[str]) -> FileConfig:
    """Read and check the shape of the file at *path*; ``ConfigError`` naming the file and key."""
    path = Path(path)
    source = os.fspath(path)
    data = _parse(path)
    if not isinstance(data, Mapping):
        raise ConfigError(source, "", f"expected a table of keys at the top, got {type(data).__name__!r}")
    config = copy.deepcopy(dict(data))
    base = path.resolve().parent
    funnel = _table(config.pop("logfunnel", {}), source, "logfunnel", _FUNNEL_KEYS)
    loaded = FileConfig(path=path, dict_config=config)
    if "version" not in config:
        raise ConfigError(source, "version", "missing: a logging configuration starts with version = 1")
    if "address" in funnel:
        address = funnel["address"]
        if not isinstance(address, str):
            raise ConfigError(
                source,
                "logfunnel.address",
                f"expected 'unix:/path' or 'tcp://127.0.0.1:PORT', got {address!r}",
            )
        if address.startswith("unix:") and not os.path.isabs(address[5:]):
            address = "unix:" + os.fspath(_resolve_path(base, address[5:]))
        loaded.address = address
    if "allow_remote" in funnel:
        if not isinstance(funnel["allow_remote"], bool):
            raise ConfigError(
                source, "logfunnel.allow_remote", f"expected true or false, got {funnel['allow_remote']!r}"
            )
        loaded.allow_remote = funnel["allow_remote"]
    if "state_file" in funnel:
        if not isinstance(funnel["state_file"], str) or not funnel["state_file"]:
            raise ConfigError(
                source, "logfunnel.state_file", f"expected a file path, got {funnel['state_file']!r}"
            )
        loaded.state_file = _resolve_path(base, funnel["state_file"])
    if "level" in funnel:
        try:
            loaded.level = check_level(funnel["level"], "the listener")
        except (TypeError, ValueError) as exc:
            raise ConfigError(source, "logfunnel.level", str(exc)) from None
    if "receiver" in funnel:
        loaded.receiver = _table(funnel["receiver"], source, "logfunnel.receiver", _RECEIVER_KEYS)
        if not ({"tcp", "udp"} & set(loaded.receiver)):
            raise ConfigError(
                source, "logfunnel.receiver", "expected tcp = 'HOST:PORT', udp = 'HOST:PORT' or both"
            )
    lanes = funnel.get("lanes", {})
    if not isinstance(lanes, Mapping):
        raise ConfigError(
            source, "logfunnel.lanes", f"expected a table of handler names, got {type(lanes).__name__!r}"
        )
    loaded.lanes = {
        str(name): _lane_options(v, source, f"logfunnel.lanes.{name}") for name, v in lanes.items()
    }
    names = funnel.get("inline", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(source, "logfunnel.inline", f"expected a list of handler names, got {names!r}")
    loaded.inline = names
    handlers = config.get("handlers", {})
    if not isinstance(handlers, Mapping):
        raise ConfigError(
            source, "handlers", f"expected a table of handlers, got {type(handlers).__name__!r}"
        )
    for key, names_of in (("lanes", list(loaded.lanes)), ("inline", loaded.inline)):
        for name in names_of:
            if name not in handlers:
                raise ConfigError(source, f"logfunnel.{key}.{name}", f"no handler {name!r} in [handlers]")
    for name in set(loaded.lanes) & set(loaded.inline):
        raise ConfigError(
            source, f"logfunnel.inline.{name}", "a handler is either inline or on a lane, not both"
        )
    for handler in handlers.values():
        if isinstance(handler, dict) and isinstance(handler.get("filename"), str):
            filename = _referenced(config, handler["filename"])
            if filename is not None:
                handler["filename"] = os.fspath(_resolve_path(base, filename))
    return loaded


def _referenced(config: dict[str, Any], value: str) -> str | None:
    """A filename as dictConfig will see it: a ``cfg://`` reference looked up in the file (a path
    there is relative to the file's folder too), ``ext://`` left to dictConfig (None), a path as is."""
    if value.startswith("ext://"):
        return None
    if not value.startswith("cfg://"):
        return value
    try:
        found = logging.config.BaseConfigurator(config).cfg_convert(value[len("cfg://") :])
    except (KeyError, ValueError, TypeError, IndexError):
        return None  # dictConfig says what is wrong with the reference, in its own words
    return found if isinstance(found, str) else None


# -- checking the funnel's own keys -------------------------------------------------------------------


def _check_funnel(loaded: FileConfig) -> None:
    source = loaded.name
    try:
        check_address(loaded.address, "the listener", loaded.allow_remote)
    except (OSError, TypeError, ValueError) as exc:
        raise ConfigError(source, "logfunnel.address", str(exc)) from None
    if loaded.receiver:
        for name in ("tcp", "udp"):
            if name in loaded.receiver:
                try:
                    parse_host_port(loaded.receiver[name], name, "the receiver", loaded.allow_remote)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(source, f"logfunnel.receiver.{name}", str(exc)) from None
        frame = loaded.receiver.get("max_frame", 1)
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
            raise ConfigError(
                source, "logfunnel.receiver.max_frame", f"expected bytes as a whole number, got {frame!r}"
            )


# -- the logging part -----------------------------------------------------------------------------------


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_SPECIAL = ("class", "()", "formatter", "level", "filters", ".")


class _Configurator(logging.config.DictConfigurator):
    """``DictConfigurator`` that checks each handler's class and arguments before making it; with
    *check_only*, it makes a ``NullHandler`` in its place (nothing opened, connected or created)."""

    def __init__(self, config: dict[str, Any], check_only: bool) -> None:
        super().__init__(config)
        self.check_only = check_only

    def _factory(self, config: Any) -> Any:
        key = "()" if "()" in config else "class"
        name = config.get(key)
        if name is None:
            raise _FieldError(
                "class", "missing: a handler needs class = 'module.Class' (or '()' = a factory)"
            )
        if callable(name):
            return name
        if not isinstance(name, str):
            raise _FieldError(key, f"expected a dotted name like 'logging.FileHandler', got {name!r}")
        try:
            return self.resolve(name)
        except ValueError as exc:
            raise _FieldError(
                key,
                f"cannot import {name!r} ({exc.__cause__ or exc}); "
                "expected a dotted name like 'logging.FileHandler'",
            ) from None

    def configure_handler(self, config: Any) -> Any:
        factory = self._factory(config)
        queued = isinstance(factory, type) and issubclass(factory, logging.handlers.QueueHandler)
        if not queued:
            self._check_arguments(factory, config)
        formatter = config.get("formatter")
        if isinstance(formatter, str) and formatter not in self.config.get("formatters", {}):
            raise _FieldError("formatter", f"no formatter {formatter!r} in [formatters]")
        names = config.get("handlers", []) if queued else []
        target = config.get("target")
        for key, name in [("handlers", n) for n in names or []] + [("target", target)]:
            if isinstance(name, str) and name not in self.config.get("handlers", {}):
                raise _FieldError(key, f"no handler {name!r} in [handlers]")
        if not self.check_only:
            return super().configure_handler(config)
        stand_in = logging.NullHandler()
        level = config.get("level")
        if level is not None:
            try:
                stand_in.setLevel(logging._checkLevel(level))  # type: ignore[attr-defined]  # noqa: SLF001
            except (TypeError, ValueError) as exc:
                raise _FieldError("level", str(exc)) from None
        filters = config.get("filters")
        if filters:
            self.add_filters(stand_in, filters)
        return stand_in

    def _check_arguments(self, factory: Any, config: Any) -> None:
        kwargs = {k: config[k] for k in config if k not in _SPECIAL and logging.config.valid_ident(k)}
        if isinstance(factory, type) and issubclass(factory, logging.handlers.MemoryHandler):
            kwargs.pop("target", None)  # a handler's name, looked up by the configurator
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            signature = None  # a builtin without one: its own call will say
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                match = _UNEXPECTED.search(str(exc))
                raise _FieldError(
                    match.group(1) if match else "",
                    f"{getattr(factory, '__qualname__', factory)}() does not take these arguments: {exc}",
                ) from None
        if self.check_only and isinstance(factory, type) and issubclass(factory, logging.FileHandler):
            _check_writable(kwargs.get("filename"))


def _check_writable(filename: object) -> None:
    if not isinstance(filename, (str, os.PathLike)):
        raise _FieldError("filename", f"expected a file path, got {filename!r}")
    path = Path(filename)
    if path.exists():
        if path.is_dir() or not os.access(path, os.W_OK):
            raise _FieldError("filename", f"{os.fspath(path)} is not a file this user can write")
    elif not path.parent.is_dir():
        raise _FieldError("filename", f"its folder {os.fspath(path.parent)} does not exist")
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise _FieldError("filename", f"this user cannot create files in {os.fspath(path.parent)}")


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 10:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _translate(loaded: FileConfig, exc: Exception) -> ConfigError:
    """dictConfig's error (``Unable to configure handler 'file'`` from the cause) as a ``ConfigError``
    naming the file and the key."""
    chain = _chain(exc)
    key = ""
    match = re.match(
        r"Unable to configure (handler|formatter|filter|logger|root logger)\s*'?([^']*)'?", str(chain[0])
    )
    if match:
        kind, name = match.groups()
        key = "root" if kind == "root logger" else f"{_SECTIONS[kind]}.{name}"
        chain = chain[1:]
    elif str(chain[0]).startswith(("dictionary doesn't specify a version", "Unsupported version")):
        key = "version"
    problems: list[str] = []
    for cause in chain:
        if isinstance(cause, _FieldError):
            if cause.field:
                key = f"{key}.{cause.field}" if key else cause.field
            problems = [str(cause)]  # it says all there is
            break
        text = f"no such name {cause.args[0]!r}" if isinstance(cause, KeyError) and cause.args else str(cause)
        for prefix, part in (("Unable to add handler", "handlers"), ("Unable to add filter", "filters")):
            if text.startswith(prefix) and key and not problems:
                key = f"{key}.{part}"
        if text and not any(text in earlier for earlier in problems):
            problems.append(text)
    return ConfigError(loaded.name, key, ": ".join(problems) or type(exc).__name__)


def _configure(loaded: FileConfig, check_only: bool) -> None:
    try:
        _Configurator(copy.deepcopy(loaded.dict_config), check_only).configure()
    except Exception as exc:  # dictConfig raises ValueError, TypeError, AttributeError, ImportError
        raise _translate(loaded, exc) from exc


def check(loaded: FileConfig) -> None:
    """Validate *loaded* without starting anything and without creating a file or a connection.

    It resolves every class, factory, formatter, filter, level and name reference, checks each
    handler's arguments against its constructor's signature and that each log file's folder exists
    and can be written, and checks the funnel's own keys. It cannot catch what only a handler's own
    constructor or first emit finds out (a refused connection, a bad value of the right name), or an
    address already in use. It configures this process's logging with stand-in handlers: call it in a
    process of its own (``logfunnel serve --check``)."""
    _check_funnel(loaded)
    _configure(loaded, check_only=True)
    for name, options in loaded.lanes.items():
        try:
            Lane(logging.NullHandler(), **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(loaded.name, f"logfunnel.lanes.{name}", str(exc)) from None


def _named_handler(name: str) -> logging.Handler | None:
    return logging._handlers.get(name)  # type: ignore[attr-defined, no-any-return]  # noqa: SLF001


def apply(loaded: FileConfig) -> list[Lane]:
    """Configure this process's logging from *loaded*; put the handlers named in ``lanes`` on lanes
    (replacing each on every logger that has it) and mark those in ``inline``. Returns the lanes."""
    _check_funnel(loaded)
    existing = [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    _configure(loaded, check_only=False)
    # In one process the configuration runs before the libraries' loggers exist; here some already
    # do (filelock's, asyncio's), and disable_existing_loggers would silence the workers' records
    # for those names. Only the loggers the file names are the file's to decide.
    named = set(loaded.dict_config.get("loggers", {}) or {})
    for logger in existing:
        if logger.name not in named:
            logger.disabled = False
    for name in loaded.inline:
        handler = _named_handler(name)
        if handler is not None:
            inline(handler)
    made = []
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for name, options in loaded.lanes.items():
        handler = _named_handler(name)
        if handler is None:
            continue
        try:
            lane = Lane(handler, name=name, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(loaded.name, f"logfunnel.lanes.{name}", str(exc)) from None
        for logger in loggers:
            logger.handlers = [lane if h is handler else h for h in logger.handlers]
        made.append(lane)
    return made
