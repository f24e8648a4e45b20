"""logfunnel: gather the ``logging`` output of many processes into one place, safely and fast.

Start a listener in the parent and give its ``.queue`` to every worker::

    listener = logfunnel.start_listener(handlers=[logging.FileHandler("app.log")])
    with multiprocessing.Pool(4, initializer=logfunnel.install_worker_logging,
                              initargs=(listener.queue,)) as pool:
        pool.map(work, items)
    listener.stop()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lanes import Lane, Retry, inline
from ._transport import QueueHandle
from ._wire import render_in_workers
from .listener import LogListener, start_listener
from .manager import LogManager, ManagerStartError
from .worker import FunnelHandler, flush_worker_logging, install_worker_logging, uninstall_worker_logging

__all__ = [
    "FunnelHandler",
    "Lane",
    "LogListener",
    "LogManager",
    "LogReceiver",
    "ManagerStartError",
    "QueueHandle",
    "Retry",
    "__version__",
    "flush_worker_logging",
    "inline",
    "install_worker_logging",
    "render_in_workers",
    "start_listener",
    "start_receiver",
    "uninstall_worker_logging",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import handlers as handlers  # for type checkers; loaded lazily by __getattr__
    from ._receiver import LogReceiver as LogReceiver
    from ._receiver import start_receiver as start_receiver

_LAZY = {"LogReceiver": "._receiver", "start_receiver": "._receiver"}  # name -> module, on first use


def __getattr__(name: str) -> Any:
    # ``logfunnel.handlers`` and the receiver after a bare ``import logfunnel``, imported when first used.
    if name == "handlers":
        import importlib

        return importlib.import_module(".handlers", __name__)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'logfunnel' has no attribute {name!r}")
