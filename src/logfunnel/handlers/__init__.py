"""Handlers for the places a listener writes to, and for processes that write files directly.

``LockedFileHandler``, ``LockedRotatingFileHandler``, ``LockedTimedRotatingFileHandler`` and
``LockedWatchedFileHandler`` take the standard library's constructors and attributes, so that
replacing ``logging.handlers.RotatingFileHandler`` is a one-word change, in code or in a dictConfig.
``RFC5424Handler`` sends RFC 5424 syslog over UDP, TCP, TLS or RELP from a thread of its own.
"""

from __future__ import annotations

from .files import LockedFileHandler, LockedRotatingFileHandler, LockedWatchedFileHandler
from .syslog import RFC5424Handler
from .timed import LockedTimedRotatingFileHandler

__all__ = [
    "LockedFileHandler",
    "LockedRotatingFileHandler",
    "LockedTimedRotatingFileHandler",
    "LockedWatchedFileHandler",
    "RFC5424Handler",
]
