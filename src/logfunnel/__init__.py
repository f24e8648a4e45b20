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
    "join_host_funnel",
    "render_in_workers",
    "start_listener",
    "start_receiver",
    "uninstall_worker_logging",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import config as config  # for type checkers; loaded lazily by __getattr__
    from . import handlers as handlers
    from ._lanes import Lane as Lane
    from ._lanes import Retry as Retry
    from ._lanes import inline as inline
    from ._receiver import LogReceiver as LogReceiver
    from ._receiver import start_receiver as start_receiver
    from ._render import render_in_workers as render_in_workers
    from ._serve import join_host_funnel as join_host_funnel
    from ._transport import QueueHandle as QueueHandle
    from .listener import LogListener as LogListener
    from .listener import start_listener as start_listener
    from .manager import LogManager as LogManager
    from .manager import ManagerStartError as ManagerStartError
    from .worker import FunnelHandler as FunnelHandler
    from .worker import flush_worker_logging as flush_worker_logging
    from .worker import install_worker_logging as install_worker_logging
    from .worker import uninstall_worker_logging as uninstall_worker_logging

# name -> module, imported on first use: the package itself imports nothing, so that loading one of
# its modules (the pytest plugin, in every pytest run of anyone who installs logfunnel) costs nothing.
_LAZY = {
    "FunnelHandler": ".worker",
    "Lane": "._lanes",
    "LogListener": ".listener",
    "LogManager": ".manager",
    "LogReceiver": "._receiver",
    "ManagerStartError": ".manager",
    "QueueHandle": "._transport",
    "Retry": "._lanes",
    "flush_worker_logging": ".worker",
    "inline": "._lanes",
    "install_worker_logging": ".worker",
    "join_host_funnel": "._serve",
    "render_in_workers": "._render",
    "start_listener": ".listener",
    "start_receiver": "._receiver",
    "uninstall_worker_logging": ".worker",
}


def __getattr__(name: str) -> Any:
    # The public names, and submodules (``logfunnel.handlers``, ``logfunnel.manager``...) after a
    # bare ``import logfunnel``, imported when first used and then kept as attributes.
    import importlib

    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'logfunnel' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'logfunnel' has no attribute {name!r}")
    globals()[name] = value
    return value
