"""Configuration files: TOML, YAML and JSON, checked by `logfunnel serve --check` as a user runs it, and
loaded by `_configfile.load`; every error names the file and the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from logfunnel import _configfile
from logfunnel._configfile import ConfigError

GOOD_TOML = """\
version = 1

[formatters.line]
format = "%(asctime)s %(name)s %(levelname)s %(message)s"

[handlers.file]
class = "logging.handlers.RotatingFileHandler"
filename = "logs/app.log"
maxBytes = 1048576
backupCount = 3
formatter = "line"
level = "INFO"

[handlers.mail]
class = "logging.handlers.SMTPHandler"
mailhost = ["127.0.0.1", 1]
fromaddr = "a@example.com"
toaddrs = ["b@example.com"]
subject = "errors"
level = "ERROR"

[root]
level = "INFO"
handlers = ["file", "mail"]

[logfunnel]
state_file = "serve.json"
level = "INFO"
inline = ["file"]
receiver = { tcp = "127.0.0.1:0", udp = "127.0.0.1:0" }

[logfunnel.lanes.mail]
capacity = 100
when_full = "drop_oldest"
retry = { give_up_after = 10, max_delay = 2 }
"""

GOOD = {
    "version": 1,
    "formatters": {"line": {"format": "%(name)s %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "logs/app.log", "formatter": "line"}},
    "root": {"level": "INFO", "handlers": ["file"]},
    "logfunnel": {"state_file": "serve.json", "lanes": {"file": {"capacity": 10}}},
}


def _check(path: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    command = [*(prefix or [sys.executable, "-m", "logfunnel"]), "serve", "--config", str(path), "--check"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path


@pytest.mark.timeout(60)
def test_check_accepts_a_good_toml_file_and_creates_nothing(folder):
    """`--check` on a good TOML file exits 0, says OK, and creates no log file, state file or socket."""
    path = folder / "app.toml"
    path.write_text(GOOD_TOML)
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK (2 handlers, 0 loggers besides the root, 1 lane)")
    assert sorted(p.name for p in folder.rglob("*")) == ["app.toml", "logs"]


@pytest.mark.timeout(60)
def test_check_accepts_yaml(folder):
    """A YAML file with the same schema is checked the same way."""
    yaml = pytest.importorskip("yaml")
    path = folder / "app.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert not (folder / "logs" / "app.log").exists()


@pytest.mark.timeout(60)
def test_check_accepts_json(folder):
    """A JSON file with the same schema is checked the same way."""
    path = folder / "app.json"
    path.write_text(json.dumps(GOOD))
    result = _check(path)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(60)
def test_yaml_without_pyyaml_names_the_package(folder):
    """Without PyYAML a YAML file is refused with the package to install."""
    path = folder / "app.yaml"
    path.write_text("version: 1\n")
    block = "import sys; sys.modules['yaml'] = None; from logfunnel.cli import main; sys.exit(main())"
    result = _check(path, sys.executable, "-c", block)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"logfunnel serve: {path}: a YAML file needs PyYAML, which is not installed: "
        "pip install 'logfunnel[yaml]'"
    )


BAD = [
    # (what to replace in GOOD_TOML, with what, the key named, a part of the message)
    (
        'class = "logging.handlers.RotatingFileHandler"',
        'class = "logging.handlers.RotatingFileHandlr"',
        "handlers.file.class",
        "cannot import 'logging.handlers.RotatingFileHandlr'",
    ),
    ("maxBytes = 1048576", "maxbytes = 1048576", "handlers.file.maxbytes", "unexpected keyword argument"),
    ('formatter = "line"', 'formatter = "lines"', "handlers.file.formatter", "no formatter 'lines'"),
    ('level = "INFO"\n\n[handlers.mail]', 'level = "LOUD"\n\n[handlers.mail]', "handlers.file.level", "LOUD"),
    ('filename = "logs/app.log"', 'filename = "nowhere/app.log"', "handlers.file.filename", "does not exist"),
    ('handlers = ["file", "mail"]', 'handlers = ["file", "mial"]', "root.handlers", "'mial'"),
    ('state_file = "serve.json"', 'state_fil = "serve.json"', "logfunnel.state_fil", "unknown key"),
    ("capacity = 100", 'capacity = "100"', "logfunnel.lanes.mail.capacity", "expected a whole number >= 1"),
    ("capacity = 100", "capacty = 100", "logfunnel.lanes.mail.capacty", "unknown key"),
    ('when_full = "drop_oldest"', 'when_full = "wait"', "logfunnel.lanes.mail.when_full", "expected one of"),
    ("[logfunnel.lanes.mail]", "[logfunnel.lanes.mial]", "logfunnel.lanes.mial", "no handler 'mial'"),
    ('inline = ["file"]', 'inline = "file"', "logfunnel.inline", "expected a list of handler names"),
    ('tcp = "127.0.0.1:0"', 'tcp = "8.8.8.8:0"', "logfunnel.receiver.tcp", "not loopback"),
    ('level = "INFO"\ninline', "level = 5.5\ninline", "logfunnel.level", "got 'float'"),
    ("version = 1\n", "", "version", "missing: a logging configuration starts with version = 1"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("old", "new", "key", "part"), BAD, ids=[case[2] for case in BAD])
def test_check_names_the_file_and_the_key(folder, old, new, key, part):
    """Each mistake makes `--check` exit 1 with `FILE: KEY: what is wrong`."""
    assert old in GOOD_TOML
    path = folder / "app.toml"
    path.write_text(GOOD_TOML.replace(old, new, 1))
    result = _check(path)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith(f"logfunnel serve: {path}: {key}: "), line
    assert part in line
    assert not (folder / "logs" / "app.log").exists()


@pytest.mark.timeout(60)
def test_toml_syntax_error_names_the_file_and_line(folder):
    """A file that is not TOML is refused naming it and where the parser stopped."""
    path = folder / "app.toml"
    path.write_text("version = 1\n[handlers\n")
    result = _check(path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"logfunnel serve: {path}: not valid TOML: ")
    assert "line 2" in result.stderr


def test_unknown_suffix_is_refused(tmp_path):
    """A file that is neither .toml, .yaml, .yml nor .json is refused saying which are read."""
    path = tmp_path / "app.ini"
    path.write_text("[loggers]\n")
    with pytest.raises(
        ConfigError, match=r"app\.ini: expected a \.toml, \.yaml, \.yml or \.json file, got '\.ini'$"
    ):
        _configfile.load(path)


def test_missing_file_is_refused(tmp_path):
    """A file that cannot be read is refused naming it and why."""
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read it \(No such file or directory\)$"):
        _configfile.load(tmp_path / "nope.toml")


def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    """A handler's filename and the state file are resolved against the file's folder, not the cwd."""
    path = tmp_path / "conf" / "app.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD))
    monkeypatch.chdir(tmp_path)
    loaded = _configfile.load(Path("conf") / "app.json")
    assert loaded.dict_config["handlers"]["file"]["filename"] == str(
        path.parent.resolve() / "logs" / "app.log"
    )
    assert loaded.state_file == path.parent.resolve() / "serve.json"


def test_funnel_options_are_loaded(tmp_path):
    """The logfunnel table's keys arrive typed: level as a number, lanes' retry as a Retry."""
    path = tmp_path / "app.toml"
    path.write_text(GOOD_TOML)
    loaded = _configfile.load(path)
    assert loaded.level == 20
    assert loaded.inline == ["file"]
    assert loaded.receiver == {"tcp": "127.0.0.1:0", "udp": "127.0.0.1:0"}
    options = loaded.lanes["mail"]
    assert (options["capacity"], options["when_full"]) == (100, "drop_oldest")
    assert (options["retry"].give_up_after, options["retry"].max_delay) == (10.0, 2.0)
    assert "logfunnel" not in loaded.dict_config


def test_config_error_is_picklable():
    """A ConfigError crosses a process boundary whole (file, key, message)."""
    import pickle

    error = pickle.loads(pickle.dumps(ConfigError("app.toml", "handlers.file.class", "bad")))
    assert (str(error), error.key) == ("app.toml: handlers.file.class: bad", "handlers.file.class")
