"""logfunnel: gather the ``logging`` output of many processes into one place, safely and fast.

Start a listener in the parent and give its ``.queue`` to every worker::

    listener = logfunnel.start_listener(handlers=[logging.FileHandler("app.log")])
    with multiprocessing.Pool(4, initializer=logfunnel.install_worker_logging,
                              initargs=(listener.queue,)) as pool:
        pool.map(work, items)
    listener.stop()
"""

from __future__ import annotations

from ._transport import QueueHandle
from .listener import LogListener, start_listener
from .manager import LogManager
from .worker import FunnelHandler, flush_worker_logging, install_worker_logging, uninstall_worker_logging

__all__ = [
    "FunnelHandler",
    "LogListener",
    "LogManager",
    "QueueHandle",
    "__version__",
    "flush_worker_logging",
    "install_worker_logging",
    "start_listener",
    "uninstall_worker_logging",
]

__version__ = "0.1.0"
