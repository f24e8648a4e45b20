"""What logfunnel's own handlers share with each other, apart from the standard library's."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["UnlockedHandle", "banner"]


def banner(message: str) -> None:
    """The toolkit's own failures go to stderr under a banner, never through the logging it serves."""
    try:
        sys.stderr.write(f"--- logfunnel (pid {os.getpid()}) ---\n{message}\n")
        sys.stderr.flush()
    except Exception:
        pass


class UnlockedHandle:
    """``Handler.handle`` without the handler lock around ``emit()``.

    For handlers whose ``emit()`` takes the locks it needs itself, for only as long as it needs them
    (a buffer append, a file lock), so that concurrent callers are not queued behind one another.
    Filters run as in the standard library, including 3.12's filters that return a new record.
    """

    filters: list[Any]

    def handle(self, record: logging.LogRecord) -> Any:
        rv = self.filter(record) if self.filters else True  # type: ignore[attr-defined]
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)  # type: ignore[attr-defined]
        return rv
