"""pytest plugin (a ``pytest11`` entry point): the ``funnel`` fixture, records from child processes.

``caplog`` sees nothing that a child process logs, under fork, spawn and forkserver alike
(pytest-dev/pytest#3037, #12116): the child's records go to its own copy of the capture handler.
A test that asks for ``funnel`` gets a logfunnel listener of its own, running in the test's
process for the length of the test::

    def work(item):
        logging.getLogger("app").info("processing %s", item)

    def test_pool_logs(funnel, caplog):
        with multiprocessing.Pool(2, initializer=logfunnel.install_worker_logging,
                                  initargs=(funnel.queue,)) as pool:
            pool.map(work, range(4))
        funnel.flush()
        assert sorted(funnel.messages) == [f"processing {i}" for i in range(4)]

Every record a child sends is kept in ``funnel.records`` and then handled by this process's own
logging configuration, as if the child's call had been made here: ``caplog`` (and pytest's live
log and its report sections) get it once, at the levels ``caplog.set_level`` and ``log_level`` set.

Nothing is imported or started until a test uses the fixture; ``-p no:logfunnel`` turns the plugin
off. Options: the ``logfunnel_level`` and ``logfunnel_timeout`` ini settings, and per test the
``funnel`` marker: ``@pytest.mark.funnel(level="INFO", timeout=30)``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .listener import LogListener

__all__ = ["Funnel", "FunnelWarning", "funnel"]

#: Seconds ``flush()``, ``wait_for()`` and teardown wait by default (ini ``logfunnel_timeout``).
DEFAULT_TIMEOUT = 10.0
#: Seconds teardown waits for children still connected to finish (a ``Pool`` being terminated).
TEARDOWN_GRACE = 3.0
_SHOWN = 20  # records named in a failure message


class FunnelWarning(pytest.PytestWarning):
    """A test's child processes lost or dropped records, or were still connected when it ended.

    Raised as a warning at the fixture's teardown, so it shows in pytest's warnings summary under the
    test's name. ``-W error::logfunnel.pytest_plugin.FunnelWarning`` (or the ``filterwarnings`` ini
    setting) makes it fail the test; a test that kills its children on purpose silences it with
    ``@pytest.mark.filterwarnings("ignore::logfunnel.pytest_plugin.FunnelWarning")``.
    """


_NAMES = ("logfunnel", "logfunnel.pytest_plugin")  # its entry point's name, and its module's


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    # Loaded through its entry point ("logfunnel") and by module name too (``-p
    # logfunnel.pytest_plugin``, or ``pytest_plugins = ["logfunnel.pytest_plugin"]`` in a conftest),
    # it would be registered twice, and pytest stops with "Plugin already registered under a
    # different name". Once registered under one name, the other is blocked: it loads once.
    if plugin is not sys.modules[__name__] or plugin_name not in _NAMES:
        return
    for other in _NAMES:
        if other != plugin_name and manager.get_plugin(other) is None and not manager.is_blocked(other):
            manager.set_blocked(other)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "logfunnel_level",
        "the lowest level the funnel fixture asks child processes to send (default: every level)",
        default="NOTSET",
    )
    parser.addini(
        "logfunnel_timeout",
        "seconds funnel.flush(), funnel.wait_for() and the fixture's teardown wait at most "
        f"(default {DEFAULT_TIMEOUT})",
        default=str(DEFAULT_TIMEOUT),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "funnel(level=None, timeout=None): options of the funnel fixture (logfunnel) for this test: "
        "the lowest level child processes send, and the seconds flush/wait_for/teardown wait",
    )


class Funnel:
    """The ``funnel`` fixture's value: a listener for the test, and what it received.

    ``queue`` is the handle to give each child (``install_worker_logging(funnel.queue)``, as a
    ``Pool`` initializer or in a ``Process`` target); a ``subprocess`` child joins with
    ``install_worker_logging()`` alone, since ``LOGFUNNEL_ADDRESS`` names the funnel during the test.
    """

    def __init__(self, level: int, timeout: float) -> None:
        self.level = level
        self.timeout = timeout
        self._records: list[logging.LogRecord] = []
        self._changed = threading.Condition()
        self._listener: Any = _listener_class()(self, level)

    # -- what arrived ------------------------------------------------------------------------------

    @property
    def listener(self) -> LogListener:
        """The ``LogListener`` behind the fixture (routed through this process's logging)."""
        return self._listener  # type: ignore[no-any-return]

    @property
    def queue(self) -> Any:
        """The picklable handle for ``install_worker_logging`` in a child process."""
        return self.listener.queue

    @property
    def address(self) -> str:
        """The funnel's address (also in ``LOGFUNNEL_ADDRESS`` while the test runs)."""
        return str(self.listener.address)

    @property
    def records(self) -> list[logging.LogRecord]:
        """Every record received at ``level`` or above, as ``logging.LogRecord``, in the order each
        process logged them (records of different processes interleave as they arrived)."""
        with self._changed:
            return list(self._records)

    @property
    def messages(self) -> list[str]:
        """``getMessage()`` of each of ``records``."""
        return [record.getMessage() for record in self.records]

    def clear(self) -> None:
        """Forget the records received so far (``stats()`` keeps counting)."""
        with self._changed:
            self._records.clear()

    def stats(self) -> dict[str, Any]:
        """The listener's figures: received, dropped, lost, and per process (see ``LogListener.stats``)."""
        return self.listener.stats()

    def _add(self, record: logging.LogRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    # -- waiting -----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record that the funnel's workers had logged when it was called is handled.

        What it promises: each record whose logging call had returned, in any process that had
        installed worker logging with this funnel's queue, is in ``records``, in ``caplog`` and
        through every handler of this process (lanes drained) when ``flush()`` returns. A worker
        that keeps logging meanwhile is waited for up to what it had logged at the call, not beyond.
        A worker that has ended is waited for until the funnel has settled it, so that ``stats()``
        then gives its final state and exactly what it dropped (a full buffer) or lost (killed).
        A worker that is alive but cannot send (stopped, or stuck holding its own lock) makes it
        raise ``AssertionError`` after *timeout* seconds (default: the fixture's), naming it.
        Processes that never installed worker logging are not known to the funnel.
        """
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        targets = self._listener.accepted_now()
        while True:
            behind = self._listener.behind(targets)
            if not behind:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                shown = "; ".join(behind)
                raise AssertionError(
                    f"funnel.flush() timed out after {wait} s: {shown}. A worker that is alive but "
                    "cannot send (stopped, blocked) holds its records; end it, or give flush() longer"
                )
            self._listener.wait_for_progress(min(remaining, 0.05))
        self._listener.drain_lanes(max(0.0, deadline - time.monotonic()))

    def wait_for(
        self, predicate: Callable[[list[logging.LogRecord]], object], timeout: float | None = None
    ) -> list[logging.LogRecord]:
        """Wait until ``predicate(records)`` is true; return the records it was true of.

        *predicate* is called with the list of records received so far, each time more arrive.
        After *timeout* seconds (default: the fixture's) it raises ``AssertionError`` naming what
        did arrive. It does not wait for this process's handlers: call ``flush()`` before looking at
        ``caplog``.
        """
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                snapshot = list(self._records)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
        raise AssertionError(
            f"funnel.wait_for({_describe(predicate)}) was still false after {wait} s; "
            f"{_arrived(snapshot)}; {_processes(self.stats())}"
        )

    # -- the end of the test -----------------------------------------------------------------------

    def _finish(self) -> list[str]:
        """Stop the listener; return what a user should be told (lost, dropped, still connected)."""
        _uninstall_own(self.queue)
        deadline = time.monotonic() + min(self.timeout, TEARDOWN_GRACE)
        while _connected(self.stats()) and time.monotonic() < deadline:
            self._listener.wait_for_progress(0.05)
        self.listener.stop(timeout=self.timeout)
        return _problems(self.stats())


def _listener_class() -> Any:
    """The listener behind the fixture, made on first use (importing the listener costs time)."""
    global _LISTENER_CLASS
    if _LISTENER_CLASS is None:
        _LISTENER_CLASS = _make_listener_class()
    return _LISTENER_CLASS


_LISTENER_CLASS: Any = None


def _make_listener_class() -> Any:
    from . import _counts
    from ._processes import _Process
    from .listener import LogListener

    class FunnelListener(LogListener):
        """A listener routed through this process's logging (``handlers=None``), so that ``caplog``
        gets what children log, which also keeps every record for the fixture and tells workers
        to send every record at the fixture's level, whatever this process's levels are."""

        def __init__(self, funnel: Funnel, level: int) -> None:
            super().__init__(None)
            self._funnel = funnel
            self._funnel_level = level
            self._local = threading.local()  # set while the listener reports a loss of its own
            self._progress = threading.Condition()
            self._handled: dict[tuple[int, bytes], int] = {}  # (pid, incarnation) -> last seq handled

        def handle(self, record: logging.LogRecord) -> None:
            if record.levelno >= self._funnel_level and not getattr(self._local, "reporting", False):
                self._funnel._add(record)  # noqa: SLF001
            super().handle(record)

        def _emit_local(self, level: int, message: str, *args: object) -> None:
            # A loss report goes to this process's logging (caplog sees it), not into funnel.records.
            self._local.reporting = True
            try:
                super()._emit_local(level, message, *args)
            finally:
                self._local.reporting = False

        def _welcome_plan(self) -> dict[str, Any]:
            # Workers send every record at the fixture's level; this process's levels (caplog's
            # included) decide when each record is handled, as they would for a call made here,
            # even when a test changes them after its children connected.
            plan = super()._welcome_plan()
            plan["levels"] = {"": self._funnel_level}
            plan["disabled"] = []
            return plan

        def _on_message(self, process: _Process, payload: bytes) -> None:
            try:
                super()._on_message(process, payload)
            finally:
                if process.key is not None and process.next_seq is not None:
                    with self._progress:
                        self._handled[process.key] = process.next_seq - 1
                        self._progress.notify_all()

        def _connection_ended(self, process: _Process, connections: Any) -> None:
            super()._connection_ended(process, connections)
            with self._progress:
                self._progress.notify_all()

        # -- what flush() waits for ------------------------------------------------------------

        def accepted_now(self) -> dict[tuple[int, bytes], Any]:
            """Each worker process's counts (accepted records, start time), read from its count file."""
            folder = self.queue.counts
            found: dict[tuple[int, bytes], Any] = {}
            if folder is None:
                return found
            for name, pid, incarnation in _counts.scan(folder):
                counts = _counts.read(folder, name)
                if counts is not None:
                    found[(pid, incarnation)] = counts
            return found

        def behind(self, targets: dict[tuple[int, bytes], Any]) -> list[str]:
            """What flush() still waits for: processes alive whose records up to their count in
            *targets* are not all handled, and processes gone that this listener has not settled."""
            folder = self.queue.counts
            late = []
            for key, counts in targets.items():
                name = _counts.file_name(*key)
                if not (folder and name and os.path.exists(os.path.join(folder, name))):
                    continue  # settled (the listener removes the file once it is), or never finished
                process = self._processes.get(key)
                who = f"process {key[0]} ({counts.name})"
                if not _counts.alive(key[0], counts.start):
                    late.append(f"{who} has ended, and the funnel has not seen the end of its connection")
                    continue
                with self._progress:
                    handled = self._handled.get(key, 0)
                if process is not None and (process.state != "connected" or handled >= counts.accepted):
                    continue  # said goodbye, or caught up
                late.append(f"{who} had logged {counts.accepted} records, {handled} are handled")
            return late

        def wait_for_progress(self, timeout: float) -> None:
            with self._progress:
                self._progress.wait(timeout)

        def drain_lanes(self, timeout: float) -> None:
            """Wait (within *timeout*) for what routing put on lanes (network handlers) to be delivered."""
            deadline = time.monotonic() + timeout
            for lane in self._dispatcher.lanes():
                lane.drain(max(0.0, deadline - time.monotonic()))

    return FunnelListener


def _uninstall_own(queue: Any) -> None:
    """Take this process's own FunnelHandler for *queue* off (after shipping what it holds): the
    funnel stops, and a handler left behind would try to reach it for the rest of the session."""
    worker = sys.modules.get("logfunnel.worker")
    root = logging.getLogger()
    if worker is None or not any(getattr(h, "queue", None) == queue for h in root.handlers):
        return
    before = list(root.handlers)
    worker.uninstall_worker_logging()
    # Uninstall gives back what install took, and on the root that includes pytest's capture
    # handlers of the phase that installed (caplog's and the report's). pytest puts fresh ones there
    # for each phase; given back, the stale ones would stay for the rest of the session. (A pytest
    # run inside a test, pytester's in-process runs, also took the outer test's: those go too.)
    capture = getattr(sys.modules.get("_pytest.logging"), "LogCaptureHandler", None)
    for handler in list(root.handlers):
        if capture is not None and isinstance(handler, capture) and handler not in before:
            root.removeHandler(handler)


def _connected(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in stats["processes"] if p["state"] == "connected"]


def _problems(stats: dict[str, Any]) -> list[str]:
    found = []
    for p in stats["processes"]:
        who = f"process {p['pid']} ({p['name']})"
        if p["lost"]:
            found.append(f"{who} {p['state']} with {p['lost']} log records lost")
        if p["dropped"]:
            found.append(f"{who} dropped {p['dropped']} log records (its buffer was full)")
        if p["state"] == "connected":
            found.append(
                f"{who} was still connected when the test ended: what it logs from now on is not seen; "
                "end it (join it, or leave the Pool's `with` block and join) within the test"
            )
    if stats["rejected"]:
        found.append(f"{stats['rejected']} connections were refused (see the banners on stderr)")
    return found


def _describe(predicate: Callable[..., object]) -> str:
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    if name.endswith("<lambda>"):
        import inspect

        try:
            source = inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            return name
        start = source.find("lambda")
        return source[start:][:200] if start >= 0 else name
    return name


def _arrived(records: list[logging.LogRecord]) -> str:
    if not records:
        return "no record arrived"
    shown = ", ".join(
        f"{r.process} {r.levelname} {r.name}: {r.getMessage()!r}"[:200] for r in records[-_SHOWN:]
    )
    more = f" (the last {_SHOWN})" if len(records) > _SHOWN else ""
    return f"{len(records)} records arrived{more}: [{shown}]"


def _processes(stats: dict[str, Any]) -> str:
    if not stats["processes"]:
        return (
            "no process connected to the funnel (did each child call install_worker_logging(funnel.queue)?)"
        )
    return "processes: " + ", ".join(
        f"{p['pid']} ({p['name']}) {p['state']}, received {p['received']}, dropped {p['dropped']}, "
        f"lost {p['lost']}"
        for p in stats["processes"]
    )


def _warn(request: pytest.FixtureRequest, warning: Warning) -> None:
    """Warn, in the name of the test's own function (its file and first line), not of this module."""
    code = getattr(getattr(request.node, "function", None), "__code__", None)
    if code is None:
        warnings.warn(warning, stacklevel=2)
        return
    warnings.warn_explicit(warning, type(warning), code.co_filename, code.co_firstlineno)


def _option(request: pytest.FixtureRequest, name: str) -> Any:
    marker = request.node.get_closest_marker("funnel")
    if marker is not None and marker.kwargs.get(name) is not None:
        return marker.kwargs[name]
    return request.config.getini(f"logfunnel_{name}")


@pytest.fixture
def funnel(request: pytest.FixtureRequest) -> Iterator[Funnel]:
    """A logfunnel listener for this test: give ``funnel.queue`` to the child processes.

    ``funnel.records``/``.messages`` hold what they logged (at ``funnel.level`` and above), which
    also reaches ``caplog``; ``funnel.flush()`` waits until what they logged so far is handled,
    ``funnel.wait_for(predicate)`` until the records satisfy *predicate*; ``funnel.stats()`` counts
    received, dropped and lost records per process. At teardown the listener stops (having handled
    what was sent), and a ``FunnelWarning`` names records lost or dropped and children still
    connected.
    """
    from ._checks import check_level

    raw_level = _option(request, "level")
    if isinstance(raw_level, str) and raw_level.strip().isdigit():
        raw_level = int(raw_level)
    level = check_level(
        raw_level, "the funnel fixture's level (logfunnel_level, or @pytest.mark.funnel(level=))"
    )
    raw = _option(request, "timeout")
    try:
        timeout = float(raw)
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"logfunnel_timeout (or funnel(timeout=...)) must be a number of seconds, got {raw!r}"
        ) from None
    made = Funnel(level, timeout)
    made.listener.start()
    try:
        yield made
    finally:
        problems = made._finish()  # noqa: SLF001
        if problems:
            _warn(request, FunnelWarning("; ".join(problems)))
