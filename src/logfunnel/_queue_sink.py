"""A worker's sink for people who hand in a queue of their own (a ``multiprocessing`` queue, or
anything with ``put_nowait``): records go on it as ``QueueHandler.enqueue`` puts them, and the queue's
own machinery carries them. ``_sink.SocketSink`` is the logfunnel transport.
"""

from __future__ import annotations

import logging
import pickle
import queue as queue_module
from typing import Any

from . import _wire
from ._handling import banner

__all__ = ["QueueSink"]


class QueueSink:
    """For people who already have a queue (anything with ``put_nowait``): put records on it as
    ``QueueHandler.enqueue`` does, blocking or dropping when it is full as ``on_full`` says."""

    def __init__(self, queue: Any, handler: Any) -> None:
        self.queue = queue
        self._block_timeout = handler.block_timeout
        put = getattr(queue, "put", None)
        # Block with a timeout only where the queue can; a queue-like object may have put_nowait alone.
        self._put = put if handler.on_full == "block" and callable(put) else None
        # Records on an in-process queue are never pickled, so their values stay as they are there.
        self._pickled = not isinstance(queue, _IN_PROCESS_QUEUES)
        self.dropped = 0

    def put(self, record: Any, wait: bool) -> None:
        if self._pickled and isinstance(record, logging.LogRecord):
            state = record.__dict__
            for key, value in state.items():  # the queue's feeder thread would drop the record silently
                if not _wire.wire_safe(value):
                    try:
                        pickle.dumps(value)
                    except Exception:
                        state[key] = _wire.safe_repr(value)
        try:
            if self._put is not None:
                self._put(record, True, self._block_timeout)
            else:
                self.queue.put_nowait(record)
        except queue_module.Full:
            self.dropped += 1

    def flush(self, timeout: float | None) -> bool:
        return True  # the queue's own feeder thread ships; multiprocessing joins it at exit

    def close(self, timeout: float | None) -> None:
        if self.dropped:
            banner(f"{self.dropped} log records were dropped because the queue was full")


_IN_PROCESS_QUEUES = (queue_module.Queue, queue_module.SimpleQueue)
