"""Run CPython's own queue tests from ``test.test_logging`` with logfunnel's classes swapped in.

``python tests/_stdlib_queue.py`` patches ``logging.handlers.QueueHandler`` to ``FunnelHandler`` and
``logging.handlers.QueueListener`` to ``LogListener`` *before* importing the running interpreter's
``test.test_logging`` (so its module-level ``CustomListener(QueueListener)`` and its
``patch.object(QueueListener, ...)`` decorators see logfunnel's classes, and dictConfig resolves
``"logging.handlers.QueueHandler"`` to ``FunnelHandler``), then runs ``QueueHandlerTest``,
``QueueListenerTest`` and the queue tests of ``ConfigDictTest`` that this version has. The last line
of its output is a JSON summary that ``test_stdlib_queue.py`` checks.
"""

from __future__ import annotations

import inspect
import json
import logging.handlers
import queue
import sys
import threading
import unittest
import warnings
from typing import Any

import logfunnel

#: Test ids (the part after ``test.test_logging.``) that cannot hold for a drop-in, with the reason.
#: Keep it short and honest: an entry must never hide a missing feature.
EXCLUDED: dict[str, str] = {}

_WHOLE_CLASSES = ("QueueHandlerTest", "QueueListenerTest")


def _patch() -> None:
    logging.handlers.QueueHandler = logfunnel.FunnelHandler  # type: ignore[misc]
    logging.handlers.QueueListener = logfunnel.LogListener  # type: ignore[misc]


def _is_queue_test(case: type, name: str) -> bool:
    """A ConfigDictTest method about queue handlers: by its name, or by what its body configures."""
    if "queue" in name.lower():
        return True
    try:
        source = inspect.getsource(getattr(case, name))
    except (OSError, TypeError):
        return False
    return "QueueHandler" in source or "QueueListener" in source


def selected_tests(module: Any) -> list[str]:
    """The ids (``Class.method``) of the queue tests this interpreter's test_logging has."""
    loader = unittest.TestLoader()
    ids = []
    for class_name in _WHOLE_CLASSES:
        case = getattr(module, class_name, None)
        if case is not None:
            ids += [f"{class_name}.{name}" for name in loader.getTestCaseNames(case)]
    config = module.ConfigDictTest
    ids += [
        f"ConfigDictTest.{name}" for name in loader.getTestCaseNames(config) if _is_queue_test(config, name)
    ]
    return ids


class PutNowaitQueue:
    """A user's queue-like class with only ``put_nowait`` and ``get``, as 3.12+ dictConfig may hand in."""

    def __init__(self, maxsize: int = 0) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)

    def put_nowait(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._queue.get(block, timeout)


# -- functions run in child processes by test_stdlib_queue.py (importable by spawn/forkserver) -----


def log_unpicklable_args(queue: Any) -> None:
    """Log a message whose arguments cannot be pickled (a lock) through a plain FunnelHandler."""
    logfunnel.install_worker_logging(queue)
    logging.getLogger("child").warning("holding %s and %d items", threading.Lock(), 3)


def log_exception_with_unpicklable_args(queue: Any) -> None:
    """Log an exception whose message arguments cannot be pickled (a lock)."""
    logfunnel.install_worker_logging(queue)
    try:
        raise ValueError("inner")
    except ValueError:
        logging.getLogger("child").exception("boom %s", threading.Lock())


def _count_resource_warnings() -> list[str]:
    """Record every ResourceWarning (an unclosed socket, say) so the summary can report them."""
    seen: list[str] = []
    show = warnings.showwarning

    def record(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, ResourceWarning):
            seen.append(str(message))
        show(message, category, *args, **kwargs)

    warnings.simplefilter("always", ResourceWarning)
    warnings.showwarning = record
    return seen


def main() -> int:
    _patch()
    resource_warnings = _count_resource_warnings()
    from test import test_logging  # imported only once the classes are swapped

    assert test_logging.logging.handlers.QueueHandler is logfunnel.FunnelHandler
    ids = selected_tests(test_logging)
    chosen = [test_id for test_id in ids if test_id not in EXCLUDED]
    suite = unittest.TestLoader().loadTestsFromNames(chosen, test_logging)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    summary = {
        "python": sys.version.split()[0],
        "run": result.testsRun,
        "selected": ids,
        "excluded": {test_id: EXCLUDED[test_id] for test_id in ids if test_id in EXCLUDED},
        "failures": [[test.id(), text] for test, text in result.failures],
        "errors": [[test.id(), text] for test, text in result.errors],
        "skipped": [[test.id(), reason] for test, reason in result.skipped],
        "unexpected_successes": [test.id() for test in result.unexpectedSuccesses],
        "resource_warnings": resource_warnings,
    }
    print(json.dumps(summary))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
