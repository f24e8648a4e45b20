"""The `logfunnel` command: `logfunnel demo`, driven from outside as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from logfunnel import cli

RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +"
    r"\S+\[\d+\] (?P<logger>\S+) \[(?P<request>[^\]]+)\] (?P<message>.*)$"
)
ACCESS = re.compile(r'^"(GET|POST) (/\S*)" (?P<status>\d{3}) \d+B \d+\.\dms$')
LOGGERS = {"shop.http", "shop.db", "shop.cache", "shop.payments", "shop.jobs"}


def _run(
    *args: str, timeout: float = 100, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(command or [sys.executable, "-m", "logfunnel"]), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def _log_lines(directory: Path) -> list[str]:
    files = sorted(directory.glob("demo.log*"), key=lambda p: (-len(p.name), p.name), reverse=False)
    return [line for p in files for line in p.read_text(encoding="utf-8").splitlines()]


def _records(lines: list[str]) -> list[re.Match[str]]:
    return [m for m in map(RECORD.match, lines) if m]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One `python -m logfunnel demo` run of 2 workers for 2 s; yields (result, its directory)."""
    directory = tmp_path_factory.mktemp("demo") / "d"
    result = _run("demo", "--workers", "2", "--seconds", "2", "--dir", str(directory))
    return result, directory


@pytest.mark.timeout(120)
def test_demo_accounts_for_every_record(demo_run):
    """Every record produced is in the log file and the summary says the check passed."""
    result, directory = demo_run
    assert result.returncode == 0, result.stderr
    assert "check      produced = delivered + dropped + lost: yes" in result.stdout
    produced = int(re.search(r"^  produced +([\d,]+)", result.stdout, re.M)[1].replace(",", ""))
    assert len(_records(_log_lines(directory))) == produced


@pytest.mark.timeout(120)
def test_access_line_levels_follow_the_status(demo_run):
    """A 500 is an ERROR and a 404 a WARNING, never a DEBUG: the level comes from the status."""
    _, directory = demo_run
    expected = {2: "INFO", 3: "INFO", 4: "WARNING", 5: "ERROR"}
    access = [(m["level"], ACCESS.match(m["message"])) for m in _records(_log_lines(directory))
              if m["logger"] == "shop.http"]  # fmt: skip
    assert access and all(match for _, match in access)
    seen = {(level, int(match["status"])) for level, match in access if match}
    assert {level for level, status in seen if status >= 500} == {"ERROR"}
    assert all(level == expected[status // 100] for level, status in seen)


@pytest.mark.timeout(120)
def test_payment_failure_has_a_deep_traceback_from_application_code(demo_run):
    """A failed charge logs a traceback several frames deep, raised in the shop's code, not in cli.py."""
    _, directory = demo_run
    lines = _log_lines(directory)
    start = next(i for i, line in enumerate(lines) if " shop.payments " in line and " ERROR " in line)
    block = []
    for line in lines[start + 1 :]:
        if RECORD.match(line):
            break
        block.append(line)
    frames = [line for line in block if line.startswith('  File "')]
    assert block[0] == "Traceback (most recent call last):"
    assert len(frames) >= 4
    assert not [frame for frame in frames if "cli.py" in frame]
    names = {frame.rsplit(" in ", 1)[1] for frame in frames}
    assert {"checkout", "charge_card", "post"} <= names
    assert block[-1].split(":")[0].endswith("PaymentDeclined")


@pytest.mark.timeout(120)
def test_each_logger_has_its_own_kind_of_message(demo_run):
    """All five loggers speak, each its own way: access lines, cache hits, queries, charges, jobs."""
    _, directory = demo_run
    by_logger: dict[str, list[re.Match[str]]] = {}
    for m in _records(_log_lines(directory)):
        by_logger.setdefault(m["logger"], []).append(m)
    assert set(by_logger) == LOGGERS
    assert all(
        m["level"] == "DEBUG" and re.match(r"^(get|set) \S+", m["message"]) for m in by_logger["shop.cache"]
    )
    assert any(
        re.match(r"^(SELECT|INSERT|UPDATE) .* \[\d+\.\d ms\]$", m["message"]) for m in by_logger["shop.db"]
    )
    assert any(
        m["message"].startswith("slow query") and m["level"] == "WARNING" for m in by_logger["shop.db"]
    )
    assert any(" paid: " in m["message"] for m in by_logger["shop.payments"])
    assert any(re.search(r"\d+/\d+ items \(\d+%\)$", m["message"]) for m in by_logger["shop.jobs"])


@pytest.mark.timeout(120)
def test_request_id_from_extra_ties_a_request_together(demo_run):
    """The request id given in `extra` is on each line of its request; job lines, without one, show '-'."""
    _, directory = demo_run
    records = _records(_log_lines(directory))
    requests = {m["request"] for m in records if m["logger"] == "shop.http"}
    assert all(re.match(r"^[0-9a-f]+-[0-9a-f]{6}$", request) for request in requests)
    assert {m["request"] for m in records if m["logger"] in ("shop.cache", "shop.db")} <= requests
    assert {m["request"] for m in records if m["logger"] == "shop.jobs"} == {"-"}


@pytest.mark.timeout(120)
def test_errors_are_rare(demo_run):
    """The mix looks like a service's day: under 1% of the records are errors."""
    _, directory = demo_run
    levels = [m["level"] for m in _records(_log_lines(directory))]
    assert 0 < levels.count("ERROR") < 0.01 * len(levels)


@pytest.mark.timeout(120)
def test_summary_puts_the_listeners_rate_next_to_the_generators(demo_run):
    """Nobody mistakes the demo's rate for logfunnel's speed: both rates and the bound hit are stated."""
    out = demo_run[0].stdout
    generator = r"^  generator +[\d,]+ records/s produced in all, [\d,]+ to [\d,]+ per worker"
    assert re.search(generator, out, re.M)
    assert re.search(r"^  listener +[\d,]+ records/s delivered", out, re.M)
    assert re.search(r"The (workers|listener) w[a-z]+ the bound", out)
    assert "Neither rate is logfunnel's ceiling" in " ".join(out.split())


@pytest.mark.timeout(120)
def test_progress_is_plain_lines_when_not_on_a_terminal(demo_run):
    """Piped output gets whole progress lines, no carriage returns or terminal escapes."""
    out = demo_run[0].stdout
    assert "\r" not in out and "\x1b" not in out
    assert re.search(r"^ +\d+\.\d s +[\d,]+ records delivered", out, re.M)


@pytest.mark.timeout(120)
def test_demo_refuses_to_delete_a_demo_log_it_did_not_write(tmp_path):
    """A demo.log the demo did not create is neither deleted nor overwritten; it says why, exits 2."""
    (tmp_path / "demo.log").write_text("my own log\n", encoding="utf-8")
    (tmp_path / "demo.log.1").write_text("my own backup\n", encoding="utf-8")
    result = _run("demo", "--workers", "1", "--seconds", "0.2", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "demo.log, demo.log.1, which an earlier demo run did not write" in result.stderr
    assert (tmp_path / "demo.log").read_text(encoding="utf-8") == "my own log\n"
    assert (tmp_path / "demo.log.1").read_text(encoding="utf-8") == "my own backup\n"


@pytest.mark.timeout(120)
def test_second_run_removes_only_its_own_files_and_says_so(tmp_path):
    """A rerun removes the earlier run's demo.log, names it on stdout, and leaves other files alone."""
    (tmp_path / "notes.txt").write_text("keep me\n", encoding="utf-8")
    first = _run("demo", "--workers", "1", "--seconds", "0.2", "--dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "removed" not in first.stdout
    second = _run("demo", "--workers", "1", "--seconds", "0.2", "--dir", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert f"removed 1 file of an earlier demo run from {tmp_path}/: demo.log" in second.stdout
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be from 1 to 512 (each is a process), got 0"),
        (["--workers", "-3"], "--workers must be from 1 to 512 (each is a process), got -3"),
        (["--workers", "1000000000"], "--workers must be from 1 to 512 (each is a process), got 1000000000"),
        (["--seconds", "0"], "--seconds must be a number above 0, got 0"),
        (["--seconds", "-1.5"], "--seconds must be a number above 0, got -1.5"),
        (["--seconds", "inf"], "--seconds must be a number above 0, got inf"),
    ],
)
def test_bad_counts_are_usage_errors_not_hangs(tmp_path, args, message):
    """`--workers 0` or `--seconds 0` stop at once with exit 2 and a clear message, making no file."""
    result = _run("demo", *args, "--dir", str(tmp_path / "d"), timeout=50)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"logfunnel demo: error: {message}"
    assert not (tmp_path / "d").exists()


@pytest.mark.timeout(60)
def test_help_describes_the_tool_not_the_module():
    """`logfunnel --help` says what logfunnel is; `demo --help` what the demo does and what it removes."""
    top = _run("--help", timeout=50)
    assert top.returncode == 0
    assert "``" not in top.stdout
    assert "gathers the logging records of many processes" in " ".join(top.stdout.split())
    sub = _run("demo", "--help", timeout=50)
    assert sub.returncode == 0
    text = " ".join(sub.stdout.split())
    assert "simulated requests of a small web shop" in text
    assert "It removes only the files an earlier demo run wrote in DIR" in text


@pytest.mark.timeout(60)
def test_version_from_python_dash_m():
    """`python -m logfunnel --version` and the old `python -m logfunnel.cli --version` print the version."""
    for command in ([sys.executable, "-m", "logfunnel"], [sys.executable, "-m", "logfunnel.cli"]):
        result = _run("--version", command=command, timeout=50)
        assert result.returncode == 0
        assert result.stdout.startswith("logfunnel 0.")


@pytest.mark.timeout(120)
def test_console_script_runs_the_demo(tmp_path):
    """The installed `logfunnel` script runs the demo like `python -m logfunnel` does."""
    script = Path(sys.executable).parent / "logfunnel"
    if not script.exists():
        reason = f"no logfunnel script installed beside {sys.executable}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)  # CI installs the package: a missing script is a packaging bug there
        pytest.skip(reason)
    result = _run("demo", "--workers", "1", "--seconds", "0.3", "--dir", str(tmp_path), command=[str(script)])
    assert result.returncode == 0, result.stderr
    assert "check      produced = delivered + dropped + lost: yes" in result.stdout


@pytest.mark.timeout(120)
def test_demo_function_returns_the_figures_other_code_uses(tmp_path, capsys):
    """`cli.demo()` still returns produced, accounted and the listener's received/dropped/lost."""
    result = cli.demo(workers=1, seconds=0.3, directory=os.fspath(tmp_path))
    assert {"produced", "accounted", "received", "dropped", "lost"} <= set(result)
    assert result["accounted"] is True
    assert result["produced"] == result["received"] + result["dropped"] + result["lost"]
    assert "check      produced = delivered + dropped + lost: yes" in capsys.readouterr().out
