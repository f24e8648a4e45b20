"""The locked handlers' own options and file modes: what concurrent-log-handler users move over with."""

from __future__ import annotations

import gzip
import logging
import os
import pwd
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _fork_helpers import FORMAT, make_handler, own_logger, parse_file
from _tmpfs import fill, tiny_tmpfs
from logfunnel.handlers import (
    LockedFileHandler,
    LockedRotatingFileHandler,
    LockedTimedRotatingFileHandler,
    LockedWatchedFileHandler,
)
from logfunnel.listener import LogListener

ALL = [LockedFileHandler, LockedWatchedFileHandler, LockedRotatingFileHandler, LockedTimedRotatingFileHandler]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _log(handler: logging.Handler, count: int, name: str = "opt") -> None:
    log = own_logger(name, handler)
    for i in range(count):
        log.info("w=solo i=%d", i)


@pytest.mark.parametrize("cls", ALL)
def test_lock_file_in_missing_folder(tmp_path, cls):
    """A lock_file in a folder that does not exist: the folder is made and no record is lost."""
    lock = tmp_path / "locks" / "deeper" / "app.lock"
    handler = make_handler(cls, tmp_path / "app.log", lock_file=str(lock))
    _log(handler, 1000)
    handler.close()
    assert lock.exists()
    assert [i for _, _, i in parse_file(tmp_path / "app.log")] == list(range(1000))


def test_lock_file_that_cannot_be_made_fails_the_constructor(tmp_path):
    """A lock_file below a regular file fails at once, naming the lock file and what to do."""
    (tmp_path / "plain").write_text("")
    lock = tmp_path / "plain" / "app.lock"
    with pytest.raises(OSError, match=r"^\[Errno \d+\] LockedFileHandler\(\) could not open its lock file "):
        LockedFileHandler(str(tmp_path / "app.log"), lock_file=str(lock))


@pytest.mark.parametrize("cls", ALL)
def test_chmod_applies_to_lock_file(tmp_path, umask_022, cls):
    """chmod=0o666 under umask 022: the lock file (and the timed schedule) are 0o666, so another
    user may take the lock."""
    handler = make_handler(cls, tmp_path / "app.log", chmod=0o666)
    _log(handler, 3)
    handler.close()
    assert _mode(tmp_path / ".app.log.lock") == 0o666
    assert _mode(tmp_path / "app.log") == 0o666
    if cls is LockedTimedRotatingFileHandler:
        assert _mode(tmp_path / ".app.log.schedule") == 0o666


@pytest.mark.parametrize("cls", ALL)
def test_log_file_never_visible_with_umask_mode(tmp_path, umask_000, monkeypatch, cls):
    """chmod=0o600 under umask 0: the log is created 0o600, never 0o666 until a later chmod."""
    seen: list[int] = []
    fchmod = os.fchmod

    def spy(fd: int, mode: int) -> None:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))  # what others could see until now
        fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", spy)
    handler = make_handler(cls, tmp_path / "app.log", chmod=0o600)
    _log(handler, 3)
    handler.close()
    assert seen, "no file was made"
    assert all(mode & ~0o600 == 0 for mode in seen), f"visible with {[oct(m) for m in seen]}"
    assert _mode(tmp_path / "app.log") == 0o600


@pytest.mark.timeout(60)
def test_failed_compression_leaves_no_fake_gz(tmp_path):
    """Compressing a backup on a full disk fails: the backup stays plain under its plain name (no
    .gz holding plain text); the next start, with space again, compresses it."""
    with tiny_tmpfs(tmp_path) as disk:
        path = disk / "app.log"
        handler = make_handler(
            LockedRotatingFileHandler, path, maxBytes=500_000, backupCount=3, compress=True
        )
        _log(handler, 2000, "gz-full")
        filler = fill(disk)
        handler.doRollover()  # a rename: no space needed; gzip's temporary file gets none
        assert handler._compressor is not None
        assert handler._compressor.wait(30)
        handler.close()
        names = sorted(p.name for p in disk.iterdir())
        assert "app.log.1.gz" not in names, names
        assert not any(p.name.endswith(".gz") for p in disk.iterdir()), names
        assert [i for _, _, i in parse_file(disk / "app.log.1")] == list(range(2000))
        filler.unlink()
        again = make_handler(LockedRotatingFileHandler, path, maxBytes=500_000, backupCount=3, compress=True)
        again.close()
        assert not (disk / "app.log.1").exists()
        with gzip.open(disk / "app.log.1.gz", "rt") as packed:
            assert len(packed.read().splitlines()) == 2000


def test_older_releases_fake_gz_gets_its_plain_name_back_and_is_compressed(tmp_path):
    """A .gz with plain text inside (an older release's leftover) is renamed, then gzipped, at start."""
    (tmp_path / "app.log.2.gz").write_text("plain\n")
    handler = make_handler(
        LockedRotatingFileHandler, tmp_path / "app.log", maxBytes=1000, backupCount=3, compress=True
    )
    handler.close()
    with gzip.open(tmp_path / "app.log.2.gz", "rt") as packed:
        assert packed.read() == "plain\n"
    assert not (tmp_path / "app.log.2").exists()


@pytest.mark.parametrize("compress", [False, True])
def test_owner_applies_to_log_backups_and_lock_file(tmp_path, compress):
    """owner=('nobody', gid): the log, each backup (gzipped too) and the lock file belong to nobody."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("chown to another user needs root, and CI runs as root")
        pytest.skip("chown to another user needs root")
    nobody = pwd.getpwnam("nobody")
    owner = ("nobody", nobody.pw_gid)
    handler = make_handler(
        LockedRotatingFileHandler,
        tmp_path / "app.log",
        maxBytes=2000,
        backupCount=5,
        compress=compress,
        owner=owner,
    )
    _log(handler, 400)
    handler.close()
    files = list(tmp_path.iterdir())
    assert len([p for p in files if p.name.startswith("app.log.")]) == 5
    for path in files:
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path.name


def test_owner_that_does_not_exist_is_refused():
    """An unknown user name fails the constructor, saying what was expected."""
    with pytest.raises(
        ValueError,
        match=r"^LockedFileHandler\(\) expected owner=\(user, group\) with a known user, got 'no-such-us'$",
    ):
        LockedFileHandler("/tmp/never.log", delay=True, owner=("no-such-us", None))


@pytest.mark.parametrize("cls", ALL)
def test_umask_option_sets_the_mode_of_every_file_made(tmp_path, umask_022, cls):
    """umask=0o077: the log and the lock file are 0o600 whatever the process's umask; it is untouched."""
    handler = make_handler(cls, tmp_path / "app.log", umask=0o077)
    _log(handler, 3)
    handler.close()
    assert _mode(tmp_path / "app.log") == 0o600
    assert _mode(tmp_path / ".app.log.lock") == 0o600
    assert os.umask(0o022) == 0o022


class _PerRecord(LockedRotatingFileHandler):
    """Overrides a seam: the standard library's emit, record by record."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return super().shouldRollover(record)


@pytest.mark.parametrize("option", ["terminator", "newline"])
@pytest.mark.parametrize("cls", [*ALL, _PerRecord])
def test_terminator_and_newline_end_every_line(tmp_path, cls, option):
    """terminator='\\r\\n' (or CLH's newline=) ends every line, on the batched and per-record paths."""
    handler = make_handler(cls, tmp_path / "app.log", **{option: "\r\n"})
    _log(handler, 5)
    handler.close()
    data = (tmp_path / "app.log").read_bytes()
    assert data.count(b"\r\n") == 5 and data.endswith(b"\r\n")


def test_terminator_is_honoured_by_the_listener_fast_path(tmp_path):
    """A plain FileHandler's terminator attribute ends each line the listener writes in a batch."""
    handler = logging.FileHandler(tmp_path / "app.log")
    handler.terminator = "\r\n"
    LogListener._write_lines(handler, ["a", "b"])
    handler.close()
    assert (tmp_path / "app.log").read_bytes() == b"a\r\nb\r\n"


def test_terminator_and_newline_that_differ_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^LockedFileHandler\(\) got terminator='\\n' and newline='\\r\\n'"):
        LockedFileHandler(str(tmp_path / "a.log"), terminator="\n", newline="\r\n")


@pytest.mark.parametrize(("policy", "expected"), [("replace", "bad ?"), ("ignore", "bad ")])
def test_unicode_error_policy_is_errors(tmp_path, policy, expected):
    """unicode_error_policy='replace' / 'ignore' writes the unencodable line as errors= would."""
    handler = LockedFileHandler(str(tmp_path / "a.log"), encoding="ascii", unicode_error_policy=policy)
    assert handler.errors == policy
    own_logger("policy", handler).info("bad \u00e9")
    handler.close()
    assert (tmp_path / "a.log").read_text() == expected + "\n"


def test_unicode_error_policy_checks_its_value(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"^LockedFileHandler\(\) expected unicode_error_policy 'ignore', 'replace' or 'strict', "
        r"got 'drop'$",
    ):
        LockedFileHandler(str(tmp_path / "a.log"), unicode_error_policy="drop")
    with pytest.raises(ValueError, match=r"they are the same option, give one$"):
        LockedFileHandler(str(tmp_path / "a.log"), errors="ignore", unicode_error_policy="strict")


class _PerRecordTimed(LockedTimedRotatingFileHandler):
    """Overrides a seam: shouldRollover() and doRollover() decide, record by record."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return super().shouldRollover(record)


@pytest.mark.parametrize("cls", [LockedTimedRotatingFileHandler, _PerRecordTimed])
@pytest.mark.parametrize("compress", [False, True])
def test_timed_max_bytes_rotates_on_size_within_an_interval(tmp_path, compress, cls):
    """maxBytes on the timed handler: numbered backups of the hour, each under maxBytes; backupCount
    keeps the newest; every line kept is there once."""
    path = tmp_path / "app.log"
    handler = make_handler(cls, path, when="H", utc=True, backupCount=3, maxBytes=1000, compress=compress)
    _log(handler, 200)
    handler.close()
    backups = sorted(p for p in tmp_path.iterdir() if p.name.startswith("app.log."))
    assert len(backups) == 3, [p.name for p in backups]
    stamp = time.strftime("%Y-%m-%d_%H", time.gmtime())
    names = {p.name.removesuffix(".gz") for p in backups}
    assert all(name.startswith(f"app.log.{stamp}") for name in names), names
    for backup in backups:
        if backup.name.endswith(".gz"):
            with gzip.open(backup, "rt") as packed:
                text = packed.read()
        else:
            text = backup.read_text()
        assert 0 < len(text.encode()) < 1000
        assert all(line.endswith(tuple("0123456789")) for line in text.splitlines())
    assert path.stat().st_size < 1000
    last = [i for _, _, i in parse_file(path)]
    assert last[-1] == 199


def test_timed_without_max_bytes_keeps_one_backup_per_interval(tmp_path):
    """Without maxBytes nothing changes: one backup per interval, appended to."""
    path = tmp_path / "app.log"
    handler = make_handler(LockedTimedRotatingFileHandler, path, when="H", utc=True)
    handler.setFormatter(logging.Formatter(FORMAT))
    _log(handler, 5)
    handler.doRollover()
    _log(handler, 5, "again")
    handler.doRollover()
    handler.close()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("app.log.")]) == 1
