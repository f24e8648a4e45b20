"""Run a real gunicorn (``python -m gunicorn``) with logfunnel's hooks, and read what it wrote.

One ``Gunicorn`` per configuration: it writes the config file, starts gunicorn in a session of its
own on a free loopback port (``127.0.0.1:0``; the port is read from gunicorn's "Listening at"
line), sends requests with urllib, and at the end stops it and kills whatever is left: the
process group, and the log managers (which gunicorn's master moves to groups of their own).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).parent
SRC = HERE.parent / "src"

CONFIG = """
import json
import logging

import logfunnel.integrations.gunicorn as logfunnel_gunicorn
from logfunnel.integrations.gunicorn import *  # noqa: F403

bind = "127.0.0.1:0"
workers = 2
worker_class = {worker_class!r}
threads = 4 if worker_class == "gthread" else 1  # threads > 1 turns sync into gthread
preload_app = {preload!r}
max_requests = {max_requests!r}
timeout = 2
graceful_timeout = 10
errorlog = {folder!r} + "/error.log"
accesslog = {folder!r} + "/access.log"
access_log_format = "%(r)s %(s)s"
control_socket = {folder!r} + "/gunicorn.ctl"
logconfig_dict = {{
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {{"line": {{"format": {prefix!r} + "%(process)d %(name)s %(levelname)s %(message)s"}}}},
    "handlers": {{"app": {{"class": "logging.FileHandler", "filename": {folder!r} + "/app.log",
                          "formatter": "line"}}}},
    "root": {{"level": "INFO", "handlers": ["app"]}},
    "loggers": {{}},
}}


def worker_exit(server, worker):  # hooks of the user's own, chained to logfunnel's as the README says
    logging.getLogger("app").info("worker_exit hook of %d", worker.pid)
    logfunnel_gunicorn.worker_exit(server, worker)


def pre_fork(server, worker):  # the master, before each fork: which threads it has then
    import threading

    with open({folder!r} + "/master-threads.txt", "a") as f:
        f.write(" ".join(sorted(t.name for t in threading.enumerate())) + "\\n")


def on_exit(server):
    logfunnel_gunicorn.on_exit(server)
    with open({folder!r} + "/stats.json", "w") as f:
        json.dump(logfunnel_gunicorn.manager_stats(), f, default=str)
"""


class Gunicorn:
    def __init__(
        self,
        folder: Path,
        *,
        app: str = "_gunicorn_app:app",
        args: tuple[str, ...] = (),
        error_log: str = "error.log",
        **options: Any,
    ) -> None:
        """With *options* (worker_class, preload, max_requests), write CONFIG; else use the folder's."""
        self.folder = folder
        self.app, self.args, self.error_log = app, args, error_log
        self.options = options
        if options:
            self.write_config(prefix="")
        self.process: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()  # every process of this gunicorn seen, for the cleanup
        self.port = 0

    def write_config(self, prefix: str) -> None:
        options = {"extra": "", **self.options}
        text = CONFIG.format(folder=str(self.folder), prefix=prefix, **options)
        (self.folder / "gunicorn.conf.py").write_text(text)

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]))
        with open(self.folder / "stdout.txt", "wb") as out, open(self.folder / "stderr.txt", "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *self.args, self.app],
                cwd=self.folder, env=env, start_new_session=True, stdout=out, stderr=err,
            )  # fmt: skip
        match = self.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+) ", self.error_log)
        self.port = int(match.group(1))

    # -- reading what it wrote ---------------------------------------------------------------------

    def text(self, name: str) -> str:
        try:
            return (self.folder / name).read_text()
        except FileNotFoundError:
            return ""

    def lines(self, name: str) -> list[str]:
        return self.text(name).splitlines()

    def wait_for(self, pattern: str, name: str = "error.log", count: int = 1, timeout: float = 30) -> Any:
        """Wait until *pattern* is found *count* times in file *name*; the last match."""
        deadline = time.monotonic() + timeout
        while True:
            self.remember()
            found = list(re.finditer(pattern, self.text(name)))
            if len(found) >= count:
                return found[-1]
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                state = "runs" if self.process.poll() is None else f"exited {self.process.returncode}"
                raise AssertionError(
                    f"{pattern!r} x{count} not in {name} (found {len(found)}); gunicorn {state}\n"
                    f"--- stderr:\n{self.text('stderr.txt')[-3000:]}\n--- {name}:\n{self.text(name)[-3000:]}"
                )
            time.sleep(0.05)

    def count(self, pattern: str, name: str) -> int:
        return len(re.findall(pattern, self.text(name)))

    def stats(self) -> list[dict[str, Any]]:
        return json.loads(self.text("stats.json"))  # type: ignore[no-any-return]

    # -- talking to it -----------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 20) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as response:
            response.read()
            return int(response.status)

    def get_in_background(self, path: str) -> threading.Thread:
        """A request that never answers (its worker is killed): sent from a thread, its error ignored."""

        def send() -> None:
            try:
                self.get(path, timeout=30)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.remember()
        self.process.send_signal(sig)

    def remember(self) -> None:
        """Note every process of this gunicorn now alive (managers leave the group: see cleanup)."""
        if self.process is None:
            return
        try:
            master = psutil.Process(self.process.pid)
            self.seen.update(p.pid for p in master.children(recursive=True))
        except psutil.Error:
            pass

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the master and wait for it (and its managers) to exit; its return code."""
        assert self.process is not None
        self.signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def alive(self) -> list[int]:
        left = []
        for pid in self.seen:
            try:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE and "gunicorn" in " ".join(process.cmdline()):
                    left.append(pid)
            except psutil.Error:
                pass
        return left

    def cleanup(self) -> None:
        """Kill the process group and every process of this gunicorn still alive; no leftovers."""
        if self.process is None:
            return
        self.remember()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass


def app_lines(lines: list[str], ident: str) -> list[str]:
    """The app's lines for request *ident* (``ID line i``)."""
    return [line for line in lines if f" app INFO {ident} " in line]


def counts_by_id(lines: list[str], pattern: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for line in lines:
        match = re.search(pattern, line)
        if match:
            found[match.group(1)] += 1
    return found


def run_once(factory: Any, name: str, scenario: Any) -> dict[str, Any]:
    """Run *scenario(folder)* once per test session, even under pytest-xdist; its JSON result.

    xdist may send the tests of one module to several workers, and each would start its own
    gunicorn for the same scenario: the first to take the lock runs it, the others read its result
    (pytest-xdist's recipe for a fixture that must run once).
    """
    from filelock import FileLock

    shared = Path(factory.getbasetemp())
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder all xdist workers of this session share
    result = shared / f"gunicorn-{name}.json"
    with FileLock(str(result) + ".lock"):
        if result.exists():
            return json.loads(result.read_text())  # type: ignore[no-any-return]
        folder = shared / f"gunicorn-{name}"
        folder.mkdir()
        data = scenario(folder)
        result.write_text(json.dumps(data))
        return data  # type: ignore[no-any-return]
