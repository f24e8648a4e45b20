"""Fixtures shared by the suite: restore global logging state, reap stray children, read log files."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

import logfunnel
import logfunnel._handling
from logfunnel._transport import ADDRESS_ENV, AUTHKEY_ENV, COUNTS_ENV

sys.path.insert(0, os.path.dirname(__file__))  # so spawned children can import _workers

LINE_FORMAT = "%(process)d %(processName)s %(levelname)s %(message)s"


def pytest_configure(config: pytest.Config) -> None:
    """With PYTHONDONTWRITEBYTECODE set, compile logfunnel's and the tests' own modules once, first.

    That variable (set on this project's CI machines) stops every interpreter from writing compiled
    modules, but not from reading them: without this, each of the hundreds of interpreters the suite
    starts (spawned workers, CLI runs, README blocks) compiled logfunnel from source again, about
    0.13 CPU-s each and a fifth of the suite's CPU. Only these two folders are written to (their
    __pycache__, which git ignores); the pytest-xdist workers start after this, in the controller.
    """
    if not sys.dont_write_bytecode or hasattr(config, "workerinput"):
        return
    import compileall

    for folder in (Path(logfunnel.__file__).parent, Path(__file__).parent):
        compileall.compile_dir(folder, quiet=2)


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session: pytest.Session):
    """While collecting, let pytest keep the test modules it rewrote (for their asserts) in tests/__pycache__.

    Under PYTHONDONTWRITEBYTECODE each pytest-xdist worker rewrote and compiled every test module again
    (about 2 CPU-s a worker); a later run reads what this one wrote. Everything else stays unwritten."""
    flag = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        yield
    finally:
        sys.dont_write_bytecode = flag


@pytest.fixture(autouse=True)
def _restore_logging():
    """Every test leaves the root logger, the environment and the worker state as it found them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    env = {name: os.environ.get(name) for name in (ADDRESS_ENV, AUTHKEY_ENV, COUNTS_ENV)}
    yield
    logfunnel.uninstall_worker_logging()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    # Run multiprocessing finalizers inside the test that made them. What survives is frozen (moved out of
    # the collector's sight), so this collection scans only what this test made: a full collection of a
    # worker's whole heap cost about 60 ms a test, a fifth of the suite's CPU. The objects frozen while
    # they were alive (module fixtures, caches) are collected when the module ends (below).
    gc.collect()
    gc.freeze()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """At the end of each module, once its fixtures are torn down, collect everything, frozen or not."""
    yield
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        gc.unfreeze()
        gc.collect()
        gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_banners():
    """Each test starts with the rate limit of logfunnel's stderr banners unspent."""
    logfunnel._handling.reset_banners()
    yield


@pytest.fixture(autouse=True)
def _reap_children():
    """Kill any process a test started and left behind (multiprocessing's helpers excepted)."""
    yield
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        try:
            child.kill()
            child.wait(5)
        except psutil.Error:
            pass


@pytest.fixture
def short_dir():
    """A directory for socket files: tmp_path can exceed the 107-byte limit of a Unix socket path."""
    path = tempfile.mkdtemp(prefix="lft-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def log_file(tmp_path: Path):
    """A FileHandler writing LINE_FORMAT lines to a fresh file; yields (handler, path)."""
    path = tmp_path / "funnel.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    yield handler, path
    handler.close()
