"""The host's funnel: the state file, and start-or-join (`join_host_funnel`) by many independent
processes at once, including the replacement of a serve that was killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import filelock
import psutil
import pytest

import logfunnel
from logfunnel import _host
from logfunnel._configfile import ConfigError
from logfunnel._serve import FunnelNotRunning
from logfunnel._transport import QueueHandle

CONFIG = """\
version = 1
disable_existing_loggers = false

[formatters.line]
format = "%(process)d %(name)s %(levelname)s %(message)s"

[handlers.app]
class = "logging.FileHandler"
filename = "app.log"
formatter = "line"

[root]
level = "INFO"
handlers = ["app"]

[logfunnel]
state_file = "serve.json"
"""

# An independent program (a cron job, a celery worker) that wants the host's funnel.
RACER = """
import json, logging, sys, logfunnel
config, state, tag, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
handle = logfunnel.join_host_funnel(config=config, state_file=state, timeout=90)
logfunnel.install_worker_logging(handle)
for i in range(count):
    logging.getLogger("race").info("%s %d", tag, i)
print(json.load(open(state))["pid"])
"""


@pytest.fixture
def host() -> Iterator[Path]:
    """A short folder with the config; at the end, every serve started for it is killed."""
    folder = Path(tempfile.mkdtemp(prefix="lfh-"))
    (folder / "app.toml").write_text(CONFIG)
    yield folder
    for proc in _serves(folder):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    shutil.rmtree(folder, ignore_errors=True)


def _serves(folder: Path) -> list[psutil.Process]:
    """The live serve processes for *folder*'s config (wherever they are in the process tree)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if "serve" in cmdline and str(folder / "app.toml") in cmdline and proc.info["status"] != "zombie":
            found.append(proc)
    return found


def _race(folder: Path, tags: list[str], count: int) -> list[int]:
    """Start one racer per tag at once; return the serve pid each reports."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                str(folder / "app.toml"),
                str(folder / "serve.json"),
                tag,
                str(count),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in tags
    ]
    pids = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        pids.append(int(out))
    return pids


def _terminate(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    psutil.Process(pid).wait(60)


def _messages(folder: Path) -> Counter[str]:
    lines = (folder / "app.log").read_text().splitlines()
    return Counter(line.split(" race INFO ", 1)[1] for line in lines if " race INFO " in line)


@pytest.mark.timeout(180)
def test_eight_racers_start_exactly_one_serve_and_all_records_arrive_once(host):
    """8 processes start-or-join at once: one serve runs, every record of all 8 arrives exactly once."""
    tags = [f"r{n}" for n in range(8)]
    pids = _race(host, tags, 250)
    assert len(set(pids)) == 1
    serves = _serves(host)
    assert [proc.pid for proc in serves] == pids[:1]
    _terminate(pids[0])
    assert _messages(host) == Counter(f"{tag} {i}" for tag in tags for i in range(250))
    summary = (host / "serve.json.out").read_text().strip().splitlines()[-1]
    assert summary.endswith(": 2000 records received from 8 processes, 0 dropped, 0 lost")
    assert not (host / "serve.json").exists()


@pytest.mark.timeout(180)
def test_killed_serve_is_replaced_by_the_next_joiner(host):
    """After kill -9 (stale state file and socket left behind), the next joiner starts a new serve."""
    (first,) = _race(host, ["before"], 10)
    os.killpg(first, signal.SIGKILL)
    psutil.Process(first).wait(30)
    assert (host / "serve.json").exists() and (host / "serve.sock").exists()  # what a SIGKILL leaves
    (second,) = _race(host, ["after"], 10)
    assert second != first
    assert [proc.pid for proc in _serves(host)] == [second]
    _terminate(second)
    assert _messages(host) == Counter([f"before {i}" for i in range(10)] + [f"after {i}" for i in range(10)])


@pytest.mark.timeout(120)
def test_serve_outlives_its_starter_in_a_session_of_its_own(host):
    """The started serve runs on after the process that started it exits, in its own session."""
    (pid,) = _race(host, ["one"], 1)
    assert os.getsid(pid) == pid
    assert psutil.Process(pid).is_running()
    _terminate(pid)


def test_join_without_config_and_no_serve_says_how_to_start_one(tmp_path):
    """Joining only, with nothing running, raises FunnelNotRunning naming the state file."""
    state = tmp_path / "serve.json"
    with pytest.raises(FunnelNotRunning, match=rf"^no logfunnel serve is running for {state}: start one"):
        logfunnel.join_host_funnel(state_file=state, timeout=5)


@pytest.mark.timeout(120)
def test_serve_that_cannot_start_is_reported_with_its_output(host):
    """A serve that exits at start-up (a handler's folder is missing) is reported with its own error."""
    (host / "app.toml").write_text(CONFIG.replace('filename = "app.log"', 'filename = "gone/app.log"'))
    with pytest.raises(FunnelNotRunning) as info:
        logfunnel.join_host_funnel(config=host / "app.toml", timeout=90)
    text = str(info.value)
    assert "exited with status 1 before it was ready" in text
    assert f"{host / 'app.toml'}: handlers.app: " in text


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    """A bad file raises ConfigError in the caller, and no serve is started."""
    path = tmp_path / "app.toml"
    path.write_text(CONFIG.replace("[logfunnel]", "[logfunnel]\nbogus = 1"))
    with pytest.raises(ConfigError, match=r"app\.toml: logfunnel\.bogus: unknown key"):
        logfunnel.join_host_funnel(config=path, timeout=5)
    assert not (tmp_path / "serve.json.start.lock").exists()


@pytest.mark.timeout(120)
def test_joiner_names_the_funnel_for_its_children(host):
    """join_host_funnel publishes LOGFUNNEL_ADDRESS/AUTHKEY, so a plain subprocess joins with no argument."""
    handle = logfunnel.join_host_funnel(config=host / "app.toml", timeout=90)
    assert os.environ["LOGFUNNEL_ADDRESS"] == handle.address
    child = (
        "import logging, logfunnel; logfunnel.install_worker_logging(); "
        "logging.getLogger('race').info('child 0')"
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    _terminate(_host.read_state(host / "serve.json")["pid"])
    assert _messages(host) == Counter(["child 0"])


# -- the state file ---------------------------------------------------------------------------------


def test_state_file_round_trips_and_is_private(tmp_path):
    """write_state writes 0600 in a 0700 folder; handle_from_state gives back an equal handle."""
    handle = QueueHandle("unix:/tmp/x.sock", os.urandom(32))
    path = tmp_path / "run" / "serve.json"
    _host.write_state(path, handle, 4321, {"config": "/etc/app.toml"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert _host.handle_from_state(path) == handle
    assert _host.read_state(path)["config"] == "/etc/app.toml"


def test_state_folder_that_others_can_write_is_refused(tmp_path):
    """A state file's folder writable by others (someone could swap the file) is refused, saying why."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(
        PermissionError, match=r"shared is not a folder of this user that only this user can write"
    ):
        _host.write_state(folder / "serve.json", QueueHandle("unix:/tmp/x.sock", b"k" * 32), 1)
    assert not (folder / "serve.json").exists()


def test_remove_state_spares_a_successors_file(tmp_path):
    """remove_state removes the file only when the pid in it is the caller's."""
    path = tmp_path / "serve.json"
    _host.write_state(path, QueueHandle("unix:/tmp/x.sock", b"k" * 32), 1111)
    _host.remove_state(path, 2222)
    assert path.exists()
    _host.remove_state(path, 1111)
    assert not path.exists()


def test_serve_alive_follows_the_serve_lock(tmp_path):
    """serve_alive is True exactly while some holder has the state file's serve lock."""
    path = tmp_path / "serve.json"
    assert not _host.serve_alive(path)
    lock = filelock.FileLock(_host.serve_lock_path(path))
    with lock:
        assert _host.serve_alive(path)
    assert not _host.serve_alive(path)


def test_read_state_refuses_a_foreign_file(tmp_path):
    """A file that is not a state file is refused naming it."""
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"address": "unix:/x"}))
    with pytest.raises(ValueError, match=r"serve\.json: not a logfunnel state file \(no 'authkey'\)$"):
        _host.read_state(path)


def test_default_address_is_beside_the_state_file(tmp_path):
    """A serve without an address listens on serve.sock beside its state file."""
    assert _host.default_address(tmp_path / "serve.json") == f"unix:{tmp_path / 'serve.sock'}"
