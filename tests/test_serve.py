"""`logfunnel serve`, driven as a user runs it: a subprocess, signals, and workers that join it."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

LINE = "%(process)d %(name)s %(levelname)s %(message)s"

CONFIG = f"""\
version = 1

[formatters.line]
format = "{LINE}"

[handlers.app]
class = "logging.FileHandler"
filename = "app.log"
formatter = "line"

[handlers.db]
class = "logging.FileHandler"
filename = "db.log"
formatter = "line"

[root]
level = "INFO"
handlers = ["app"]

[loggers."app.db"]
handlers = ["db"]
propagate = false

[loggers."noisy"]
level = "WARNING"

[logfunnel]
state_file = "serve.json"
receiver = {{ tcp = "127.0.0.1:0" }}
"""

# A worker as a cron job writes one: join the serve by its state file, log, exit.
WORKER = """
import logging, sys, logfunnel
handle = logfunnel.join_host_funnel(state_file=sys.argv[1], timeout=60)
logfunnel.install_worker_logging(handle)
tag, count = sys.argv[2], int(sys.argv[3])
for i in range(count):
    logging.getLogger(sys.argv[4]).info("%s %d", tag, i)
logging.getLogger("noisy").info("never made: noisy is at WARNING")
"""


# Starts a serve and exits, so that the serve is nobody's child here: the suite's reaper kills this
# process's children after each test, and a module's shared serve must outlive each test.
LAUNCHER = """
import subprocess, sys
out = open(sys.argv[1], "w")
proc = subprocess.Popen(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
print(proc.pid)
"""


class Serve:
    """A `python -m logfunnel serve` process in a session of its own, and the files beside its config."""

    def __init__(self, folder: Path, config: str = CONFIG, detached: bool = False) -> None:
        self.folder = folder
        self.config = folder / "app.toml"
        self.config.write_text(config)
        self.state = folder / "serve.json"
        command = [sys.executable, "-m", "logfunnel", "serve", "--config", str(self.config)]
        self.proc: subprocess.Popen[str] | None = None
        if detached:
            launched = subprocess.run(
                [sys.executable, "-c", LAUNCHER, str(folder / "serve.out"), *command],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            self.pid = int(launched.stdout)
        else:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while not self.state.exists():
            if not psutil.pid_exists(self.pid) or (self.proc is not None and self.proc.poll() is not None):
                raise AssertionError(f"serve exited before it wrote its state file: {self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("serve wrote no state file within 60 s")
            time.sleep(0.02)

    def output(self) -> str:
        if self.proc is not None:
            if self.proc.poll() is None:
                return ""
            return self.proc.stdout.read() + self.proc.stderr.read()  # type: ignore[union-attr]
        return (self.folder / "serve.out").read_text()

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def state_data(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())

    def worker(self, tag: str, count: int, logger: str = "app") -> None:
        subprocess.run(
            [sys.executable, "-c", WORKER, str(self.state), tag, str(count), logger], check=True, timeout=60
        )

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        assert self.proc is not None, "only a serve started as this process's child has an exit status"
        self.proc.send_signal(signum)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.communicate(timeout=30)
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
            psutil.Process(self.pid).wait(30)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short folder (a Unix socket path has a 107-byte limit) for the config, logs and state."""
    path = Path(tempfile.mkdtemp(prefix="lfs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared() -> Iterator[Serve]:
    """One serve for the tests that only join it and read what it wrote."""
    path = Path(tempfile.mkdtemp(prefix="lfs-"))
    serve = Serve(path, detached=True)
    yield serve
    serve.kill()
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(120)
def test_state_file_is_private_and_names_the_listener(shared):
    """The state file is mode 0600 in a folder of this user and holds the address, key and pid."""
    mode = stat.S_IMODE(shared.state.stat().st_mode)
    assert mode == 0o600
    state = shared.state_data()
    assert state["address"] == f"unix:{shared.folder / 'serve.sock'}"
    assert len(bytes.fromhex(state["authkey"])) == 32
    assert state["pid"] == shared.pid
    assert state["config"] == str(shared.config)


@pytest.mark.timeout(120)
def test_workers_records_arrive_once_each(shared):
    """Three workers that join by the state file each deliver every record exactly once."""
    for tag in ("w1", "w2", "w3"):
        shared.worker(tag, 200)
    lines = [line for line in _lines(shared.folder / "app.log") if " app INFO w" in line]
    messages = [line.split(" INFO ", 1)[1] for line in lines]
    expected = [f"{tag} {i}" for tag in ("w1", "w2", "w3") for i in range(200)]
    assert sorted(messages) == sorted(expected)


@pytest.mark.timeout(120)
def test_records_follow_the_files_routing(shared):
    """app.db goes to db.log only (propagate false) and noisy below WARNING is never written."""
    shared.worker("db", 50, logger="app.db")
    db = [line for line in _lines(shared.folder / "db.log") if " app.db INFO db " in line]
    assert len(db) == 50
    app = _lines(shared.folder / "app.log")
    assert not [line for line in app if " app.db " in line or "never made" in line]


@pytest.mark.timeout(120)
def test_loggers_the_serve_made_before_configuring_are_not_disabled(shared):
    """disable_existing_loggers (default true) does not silence names the serve's own imports made."""
    shared.worker("lock", 5, logger="filelock")
    lines = [line for line in _lines(shared.folder / "app.log") if " filelock INFO lock " in line]
    assert len(lines) == 5


@pytest.mark.timeout(120)
def test_stdlib_socket_handler_reaches_the_receiver(shared):
    """A stdlib SocketHandler sends to the receiver address in the state file; records are routed."""
    host, port = shared.state_data()["receiver"]["tcp"].rsplit(":", 1)
    handler = logging.handlers.SocketHandler(host, int(port))
    logger = logging.getLogger("stdlib.client")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for i in range(20):
            logger.info("socket %d", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = [line for line in _lines(shared.folder / "app.log") if " stdlib.client INFO socket " in line]
        if len(got) >= 20:
            break
        time.sleep(0.05)
    assert len(got) == 20


@pytest.mark.timeout(120)
def test_second_serve_for_the_same_state_file_is_refused(shared):
    """A second serve with the same state file exits 1 naming the running one's pid; the first runs on."""
    result = subprocess.run(
        [sys.executable, "-m", "logfunnel", "serve", "--config", str(shared.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"another logfunnel serve (pid {shared.pid}) is already running for {shared.state}" in (
        result.stderr
    )
    assert shared.alive()
    assert shared.state_data()["pid"] == shared.pid


@pytest.mark.timeout(120)
def test_serve_prints_how_to_join(shared):
    """The first lines name the address, the state file, the joining call and the environment."""
    out = shared.output()
    address = f"unix:{shared.folder / 'serve.sock'}"
    assert out.startswith(
        f"logfunnel serve: listening at {address} (pid {shared.pid}); state file {shared.state}\n"
    )
    assert f"logfunnel.join_host_funnel(state_file='{shared.state}')" in out
    assert f"export LOGFUNNEL_ADDRESS={address}" in out
    assert f"stdlib SocketHandler clients: {shared.state_data()['receiver']['tcp']} (tcp)" in out


@pytest.mark.timeout(120)
def test_sigterm_drains_summarises_and_removes_its_files(folder):
    """SIGTERM: exit 0, one summary line with the counts, the state file and socket gone."""
    serve = Serve(folder)
    try:
        serve.worker("t", 300)
        code, out, err = serve.stop()
    finally:
        serve.kill()
    assert code == 0, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("logfunnel serve: stopped by SIGTERM after ")
    assert summary.endswith(
        ": 300 records received from 1 process, 0 dropped, 0 lost; 0 from stdlib socket clients"
    )
    assert not serve.state.exists()
    assert not (folder / "serve.sock").exists()
    assert len([line for line in _lines(folder / "app.log") if " INFO t " in line]) == 300


@pytest.mark.timeout(120)
def test_sigint_stops_as_sigterm_does(folder):
    """SIGINT (Ctrl-C) also drains and exits 0, saying so."""
    serve = Serve(folder)
    try:
        code, out, err = serve.stop(signal.SIGINT)
    finally:
        serve.kill()
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("logfunnel serve: stopped by SIGINT after ")


@pytest.mark.timeout(120)
def test_sighup_reopens_a_rotated_file(folder):
    """After logrotate moves app.log and sends SIGHUP, new records go to a new app.log, old ones stay."""
    serve = Serve(folder)
    try:
        serve.worker("before", 10)
        (folder / "app.log").rename(folder / "app.log.1")
        serve.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while not (folder / "app.log").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        serve.worker("after", 10)
        code, _, err = serve.stop()
    finally:
        serve.kill()
    assert code == 0, err
    old = _lines(folder / "app.log.1")
    new = _lines(folder / "app.log")
    assert [line.split(" INFO ")[1] for line in old] == [f"before {i}" for i in range(10)]
    assert [line.split(" INFO ")[1] for line in new] == [f"after {i}" for i in range(10)]


@pytest.mark.timeout(120)
def test_sighup_leaves_a_file_in_place_alone(shared):
    """A SIGHUP with nothing rotated keeps writing the same file, without loss."""
    shared.worker("hup-one", 10)
    inode = (shared.folder / "app.log").stat().st_ino
    os.kill(shared.pid, signal.SIGHUP)
    shared.worker("hup-two", 10)
    assert (shared.folder / "app.log").stat().st_ino == inode
    lines = [line for line in _lines(shared.folder / "app.log") if " INFO hup-" in line]
    assert [line.split(" INFO ")[1] for line in lines] == [
        f"hup-{n} {i}" for n in ("one", "two") for i in range(10)
    ]
    assert shared.alive()


@pytest.mark.timeout(120)
def test_handler_that_cannot_start_names_the_key(folder):
    """A handler whose constructor fails makes serve exit 1 naming the file and the handler's key."""
    config = CONFIG.replace('filename = "db.log"', 'filename = "missing/db.log"')
    (folder / "app.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "logfunnel", "serve", "--config", str(folder / "app.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"logfunnel serve: {folder / 'app.toml'}: handlers.db: " in result.stderr
    assert "No such file or directory" in result.stderr
    assert not (folder / "serve.json").exists()


@pytest.mark.timeout(120)
def test_address_held_by_another_listener_is_refused(folder):
    """A serve whose address a live listener holds exits 1 saying so."""
    import logfunnel

    address = f"unix:{folder / 'other.sock'}"
    config = CONFIG + f'address = "{address}"\n'
    (folder / "app.toml").write_text(config)
    with logfunnel.start_listener(handlers=[logging.NullHandler()], address=address):
        result = subprocess.run(
            [sys.executable, "-m", "logfunnel", "serve", "--config", str(folder / "app.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot start: a listener is already running at {address}" in result.stderr


@pytest.mark.timeout(120)
def test_lane_options_put_the_handler_on_a_lane(folder):
    """`logfunnel.lanes.NAME` wraps that handler in a Lane with the options, on every logger using it."""
    config = CONFIG + '[logfunnel.lanes.db]\ncapacity = 7\nwhen_full = "drop_oldest"\nretry = false\n'
    (folder / "app.toml").write_text(config)
    script = """
import logging, sys
from logfunnel import _configfile
lanes = _configfile.apply(_configfile.load(sys.argv[1]))
lane = logging.getLogger("app.db").handlers[0]
print(type(lane).__name__, lane.name, lane.capacity, lane.when_full, type(lane.target).__name__, len(lanes))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder / "app.toml")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Lane", "db", "7", "drop_oldest", "FileHandler", "1"]
