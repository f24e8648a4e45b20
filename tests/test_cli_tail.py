"""`logfunnel tail`, driven as a user runs it: a subprocess following a listener with real workers."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from logfunnel import _control, start_listener

WORKER = """
import logging, sys, logfunnel
logfunnel.install_worker_logging()
logging.getLogger().setLevel(logging.DEBUG)
name, count = sys.argv[1], int(sys.argv[2])
log = logging.getLogger(name)
for i in range(count):
    log.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[i % 4], "%s %d", name, i)
if len(sys.argv) > 3:
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("it failed")
"""


def _env(listener) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGFUNNEL_")}
    env.update(LOGFUNNEL_ADDRESS=listener.address, LOGFUNNEL_AUTHKEY=listener.queue.authkey.hex())
    return env


class Tail:
    """A running `logfunnel tail` subprocess (in its own process group, killed if still running)."""

    def __init__(self, listener, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "logfunnel", "tail", *args], env=_env(listener), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.first = self.proc.stderr.readline()  # "following …" once it has subscribed

    def finish(self, timeout: float = 30) -> tuple[int, list[str], str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        return self.proc.returncode, out.splitlines(), self.first + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _workers(listener, *runs: tuple[str, ...]) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, *run], env=_env(listener), start_new_session=True)
        for run in runs
    ]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _until(listener, total: int) -> None:
    deadline = time.monotonic() + 30
    while listener.stats()["received"] < total:
        assert time.monotonic() < deadline, "did not hang"
        time.sleep(0.02)


@pytest.fixture
def listener(tmp_path):
    handler = logging.FileHandler(tmp_path / "funnel.log", encoding="utf-8")
    running = start_listener([handler])
    yield running
    running.stop()
    handler.close()


LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) +MainProcess\[(?P<pid>\d+)\] (?P<name>\S+): "
    r"(?P<message>.*)$"
)


@pytest.mark.timeout(60)
def test_tail_follows_filtered_records_and_says_when_the_listener_stops(listener):
    """`tail --level WARNING --logger app` prints exactly the WARNING+ records of app and app.*, in the
    default format, and exits 0 saying so when the listener stops."""
    tail = Tail(listener, "--level", "warning", "--logger", "app")
    assert tail.first.startswith(f"logfunnel tail: following {listener.address} (level WARNING and above")
    _workers(listener, ("app", "100"), ("app.db", "40"), ("apple", "40"), ("other", "40"))
    _until(listener, 220)
    listener.stop()
    status, lines, err = tail.finish()
    assert status == 0, err
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    got = sorted((m["name"], m["level"], m["message"]) for m in matches)
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    expected = sorted(
        (name, levels[i % 4], f"{name} {i}")
        for name, count in (("app", 100), ("app.db", 40))
        for i in range(count)
        if i % 4 >= 2
    )
    assert got == expected
    assert err.splitlines()[-1] == f"logfunnel tail: the listener at {listener.address} has stopped"
    assert "Traceback" not in err


@pytest.mark.timeout(60)
def test_tail_format_and_tracebacks(listener):
    """`--format` is a logging format of the record's fields; a traceback follows its record's line."""
    tail = Tail(listener, "--format", "%(levelname)s|%(name)s|%(funcName)s|%(lineno)d|%(message)s")
    _workers(listener, ("job", "4", "raise"))
    _until(listener, 5)
    listener.stop()
    status, lines, err = tail.finish()
    assert status == 0, err
    assert lines[:5] == [
        "DEBUG|job|<module>|8|job 0",
        "INFO|job|<module>|8|job 1",
        "WARNING|job|<module>|8|job 2",
        "ERROR|job|<module>|8|job 3",
        "ERROR|job|<module>|13|it failed",
    ]
    assert lines[5] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"


@pytest.mark.timeout(60)
def test_tail_exits_cleanly_on_ctrl_c(listener):
    """SIGINT (Ctrl-C) ends `tail` with status 0 and no traceback; the listener keeps its processes."""
    tail = Tail(listener)
    _workers(listener, ("app", "8"))
    _until(listener, 8)
    os.killpg(tail.proc.pid, signal.SIGINT)
    status, lines, err = tail.finish()
    assert status == 0
    assert "Traceback" not in err
    assert len(lines) == 8
    assert [p["received"] for p in listener.stats()["processes"]] == [8]


@pytest.mark.timeout(60)
def test_tail_that_fell_behind_says_how_many_it_missed(listener, monkeypatch):
    """A tail stopped while records arrive misses some; once running it says how many: shown + missed
    = produced, and the listener's file got them all."""
    monkeypatch.setattr(_control, "TAIL_BUFFER_BYTES", 32 * 1024)
    tail = Tail(listener, "--format", "%(message)s")
    os.killpg(tail.proc.pid, signal.SIGSTOP)
    try:
        _workers(listener, ("app", "8000"), ("db", "8000"))
        _until(listener, 16000)
    finally:
        os.killpg(tail.proc.pid, signal.SIGCONT)
    shown: list[str] = []
    reports: list[str] = []
    readers = [
        threading.Thread(target=lambda: shown.extend(tail.proc.stdout), daemon=True),
        threading.Thread(target=lambda: reports.extend(tail.proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30
    while len(shown) + _missed(reports) < 16000:
        assert time.monotonic() < deadline, f"did not hang: {len(shown)} shown, {_missed(reports)} missed"
        time.sleep(0.05)
    os.killpg(tail.proc.pid, signal.SIGINT)
    try:
        assert tail.proc.wait(timeout=30) == 0
    finally:
        tail.kill()
    for reader in readers:
        reader.join(10)
    tail.proc.stdout.close()
    tail.proc.stderr.close()
    assert _missed(reports) > 0
    assert len(shown) + _missed(reports) == 16000
    assert listener.stats()["received"] == 16000


def _missed(reports: list[str]) -> int:
    found = (re.match(r"^logfunnel tail: ([\d,]+) records were not shown", line) for line in list(reports))
    return sum(int(m[1].replace(",", "")) for m in found if m)


@pytest.mark.timeout(30)
def test_bad_format_and_level_are_refused(listener):
    """A format naming a field tail does not carry, or an unknown level: status 2, one line."""
    for args, pattern in (
        (
            ["--format", "%(nosuchfield)s"],
            r"^logfunnel tail: --format expected a logging format of the fields .*",
        ),
        (["--level", "LOUD"], r"^logfunnel tail: --level expected a level name .* got 'LOUD'$"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "logfunnel", "tail", *args], env=_env(listener), capture_output=True,
            text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and re.match(pattern, result.stderr), result.stderr
