"""Run CPython's own file-handler tests with logfunnel's Locked* classes in place of the stdlib's.

``python tests/_stdlib_files.py`` (with logfunnel importable) imports ``test.test_logging`` from the
running interpreter, swaps the names it looks up at call time (``logging.FileHandler``,
``logging.handlers.RotatingFileHandler``, ``TimedRotatingFileHandler``, ``WatchedFileHandler``) for the
Locked* classes, runs the file-handler test cases with unittest and prints one JSON line with the
counts and the names of the tests that failed. It runs in a subprocess of its own
(``tests/test_handlers_stdlib.py``) because the swap is global to the interpreter.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import tempfile
import types
import unittest
from typing import Any

# The file-handler tests of test_logging that run with the Locked* classes swapped in: whole
# classes, plus the file parts of HandlerTest.
CLASSES = ["FileHandlerTest", "RotatingFileHandlerTest", "TimedRotatingFileHandlerTest"]
# (test_path_objects was renamed test_pathlike_objects in 3.13.)
HANDLER_TESTS = ["test_builtin_handlers", "test_path_objects", "test_pathlike_objects", "test_race"]

# Tests that cannot apply to a locked handler, each with the reason. Keyed by test id without the
# module ("Class.test_name"); a test listed here is not run. Keep this short: a skip must never
# hide a missing feature.
EXCLUDED: dict[str, str] = {}


class _View(types.ModuleType):
    """A module that answers with *overrides* first and *module* for every other name."""

    def __init__(self, module: types.ModuleType, overrides: dict[str, Any]) -> None:
        super().__init__(module.__name__)
        self.__dict__.update(overrides)
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def swap_in(test_logging: types.ModuleType) -> None:
    """Make test_logging see the Locked* classes where it looks the stdlib's up.

    Only test_logging's view of ``logging`` changes: the standard library's own modules keep the
    real classes (``BaseRotatingHandler`` calls ``logging.FileHandler.__init__`` by name).
    """
    from logfunnel.handlers import (
        LockedFileHandler,
        LockedRotatingFileHandler,
        LockedTimedRotatingFileHandler,
        LockedWatchedFileHandler,
    )

    handlers = _View(
        logging.handlers,
        {
            "RotatingFileHandler": LockedRotatingFileHandler,
            "TimedRotatingFileHandler": LockedTimedRotatingFileHandler,
            "WatchedFileHandler": LockedWatchedFileHandler,
        },
    )
    test_logging.logging = _View(logging, {"FileHandler": LockedFileHandler, "handlers": handlers})  # type: ignore[attr-defined]


def build_suite(test_logging: types.ModuleType) -> tuple[unittest.TestSuite, int]:
    """The selected tests of test_logging, minus EXCLUDED; and how many were left out."""
    loader = unittest.TestLoader()
    tests: list[unittest.TestCase] = []
    for name in CLASSES:
        tests.extend(loader.loadTestsFromTestCase(getattr(test_logging, name)))
    tests.extend(test_logging.HandlerTest(n) for n in HANDLER_TESTS if hasattr(test_logging.HandlerTest, n))
    kept = [t for t in tests if _short_id(t) not in EXCLUDED]
    return unittest.TestSuite(kept), len(tests) - len(kept)


def _short_id(test: unittest.TestCase) -> str:
    return ".".join(test.id().split(".")[-2:])


def main() -> int:
    from test import test_logging

    swap_in(test_logging)
    suite, excluded = build_suite(test_logging)
    with tempfile.TemporaryFile("w+") as out:
        result = unittest.TextTestRunner(stream=out, verbosity=2).run(suite)
        out.seek(0)
        sys.stderr.write(out.read())
    problems = [(_short_id(t), text) for t, text in result.failures + result.errors]  # type: ignore[arg-type]
    report = {
        "python": sys.version.split()[0],
        "run": result.testsRun,
        "skipped": [(_short_id(t), why) for t, why in result.skipped],  # type: ignore[arg-type]
        "excluded": excluded,
        "failed": [name for name, _ in problems],
    }
    print(json.dumps(report))
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
