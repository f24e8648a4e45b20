"""A listener in the test's own process writing to one file: the shape most listener tests need."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import logfunnel
from logfunnel import _transport


class FileFunnel:
    """``start_listener(handlers=[FileHandler(path)], **options)`` with helpers to read the result."""

    def __init__(self, path: Path, fmt: str = "%(message)s", **options: Any) -> None:
        self.path = path
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(fmt))
        self.listener = logfunnel.start_listener(handlers=[self.handler], **options)

    @property
    def queue(self) -> _transport.QueueHandle:
        return self.listener.queue

    def stop(self) -> None:
        try:
            self.listener.stop()
        finally:
            self.handler.close()

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines()

    def rejected(self) -> int:
        return int(self.listener.stats()["rejected"])

    def process(self, name: str) -> dict[str, Any]:
        """The listener's figures for the worker called *name* (an empty dict until it has connected)."""
        found = [p for p in self.listener.stats()["processes"] if p["name"] == name]
        assert len(found) <= 1
        return found[0] if found else {}
