"""Handlers for the places a listener writes to, and for processes that write files directly.

``LockedFileHandler``, ``LockedRotatingFileHandler``, ``LockedTimedRotatingFileHandler`` and
``LockedWatchedFileHandler`` take the standard library's constructors and attributes, so that
replacing ``logging.handlers.RotatingFileHandler`` is a one-word change, in code or in a dictConfig.
"""

from __future__ import annotations

from .files import LockedFileHandler, LockedRotatingFileHandler, LockedWatchedFileHandler
from .timed import LockedTimedRotatingFileHandler

__all__ = [
    "LockedFileHandler",
    "LockedRotatingFileHandler",
    "LockedTimedRotatingFileHandler",
    "LockedWatchedFileHandler",
]
