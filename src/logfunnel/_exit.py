"""Run a callback at every normal exit of this process, including a fork child's ``os._exit``.

``atexit`` covers the main process and ``subprocess`` children. A child started by multiprocessing
(or multiprocess, or billiard) leaves through ``os._exit`` after running its own finalizers, so the
callback is registered with those too. Callbacks may run more than once (a fork child inherits its
parent's ``atexit`` list): they must be idempotent and check the pid they were meant for.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["CleanUp", "at_exit"]

_registered: set[tuple[int, Callable[[], None]]] = set()


def at_exit(callback: Callable[[], None]) -> None:
    """Register *callback* for this process's exit, once per process.

    Call it when the process first has something to flush, not from an at-fork hook: a child that
    multiprocessing starts clears its finalizers after the fork hooks have run. The registries are
    checked, not just remembered, for the same reason.
    """
    key = (os.getpid(), callback)
    if key not in _registered:
        _registered.add(key)
        atexit.register(callback)
    for name in ("multiprocessing.util", "multiprocess.util", "billiard.util"):
        util = sys.modules.get(name)
        if util is None:
            continue
        registry = getattr(util, "_finalizer_registry", {})
        # A finalizer runs only in the process that made it (Finalize checks its _pid): one a raw
        # fork child inherited from its parent is skipped at the child's exit, so it needs its own.
        pid = os.getpid()
        if not any(
            getattr(f, "_callback", None) is callback and getattr(f, "_pid", pid) == pid
            for f in list(registry.values())
        ):
            util.Finalize(None, callback, exitpriority=-100)


class CleanUp:
    """``func(*args)``, called once: by the first caller, or when *owner* is garbage collected.

    ``weakref.finalize`` alone will not do for what must run at exit after ours: its own exit hook,
    registered when the first finalizer is made (often after our hooks, so it runs before them),
    runs those marked ``atexit`` and then disables every other finalizer for good.
    """

    def __init__(self, owner: object, func: Callable[..., Any], *args: Any) -> None:
        self._call: tuple[Callable[..., Any], tuple[Any, ...]] | None = (func, args)
        self._lock = threading.Lock()
        weakref.finalize(owner, self).atexit = False  # holds this object, never *owner*

    def __call__(self) -> None:
        with self._lock:
            call, self._call = self._call, None
        if call is not None:
            call[0](*call[1])

    def detach(self) -> None:
        """Never call it (a fork child's copy of its parent's clean-up)."""
        with self._lock:
            self._call = None
