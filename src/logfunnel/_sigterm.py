"""Ship buffered records before dying of SIGTERM (``Pool.terminate()``, ``with Pool() as pool:``).

A Python signal handler runs only in the main thread, between bytecodes. A pool worker's main thread
spends its idle time blocked in C (``sem_wait`` on the task queue's lock, which ``terminate()`` holds
for good). If SIGTERM arrives just before that call blocks, or is taken by another thread, the handler
stays pending and the blocked call is never interrupted: the worker never dies, and ``Pool.join()``
hangs. The default disposition has no such race, so a handler of our own must close it.

So the handler comes with a watcher: ``signal.set_wakeup_fd`` makes the C-level handler write each
signal's number to a pipe, and a small thread that reads the pipe aims SIGTERM at the main thread with
``pthread_kill``; a signal delivered to that thread interrupts the blocked call and runs the handler.
The handler flushes (bounded), restores the default disposition and sends SIGTERM again, so the process
dies of the signal as it would have without us.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["after_fork_in_child", "install", "installed", "uninstall"]

_FLUSH_TIMEOUT = 2.0
_state: dict[str, Any] = {}  # pid, read, write: this process's wakeup pipe
_flush: Callable[[float], None] | None = None
_terminating = False


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminating
    if _terminating:  # a second SIGTERM (the watcher's) while the first is being handled
        return
    _terminating = True
    try:
        if _flush is not None:
            _flush(_FLUSH_TIMEOUT)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


def install(flush: Callable[[float], None]) -> bool:
    """Install the handler if SIGTERM still has its default disposition; call from the main thread."""
    global _flush
    if threading.current_thread() is not threading.main_thread():
        return False
    if not installed():
        if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
            return False  # the application has its own (gunicorn, celery): leave it alone
        signal.signal(signal.SIGTERM, _on_sigterm)
    _flush = flush
    if _state.get("pid") != os.getpid():
        _start_watcher()
    return True


def uninstall() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if installed():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _stop_watcher()


def after_fork_in_child() -> None:
    """A child must never write into its parent's pipe: a parent's watcher would act on it."""
    global _terminating
    _terminating = False
    if _state:
        try:
            if signal.set_wakeup_fd(-1) != _state.get("write"):
                pass  # someone replaced ours meanwhile; -1 is still right for a fresh child
        except ValueError:
            pass
        for name in ("read", "write"):
            try:
                os.close(_state[name])
            except OSError:
                pass
        _state.clear()
    if installed():  # the child re-arms (watcher included) when it installs or first logs
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass


def _start_watcher() -> None:
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:
        os.close(read)
        os.close(write)
        return
    if previous not in (-1, _state.get("write")):  # the fd belongs to someone else (asyncio): give it back
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)
        return
    _stop_watcher(keep_wakeup=True)
    _state.update(pid=os.getpid(), read=read, write=write)
    main = threading.main_thread().ident
    threading.Thread(target=_watch, args=(read, main), name="logfunnel-sigterm", daemon=True).start()


def _stop_watcher(keep_wakeup: bool = False) -> None:
    if not _state:
        return
    if not keep_wakeup:
        try:
            if signal.set_wakeup_fd(-1) != _state["write"]:
                pass
        except ValueError:
            pass
    for name in ("write", "read"):  # closing the write end ends the watcher's read with EOF
        try:
            os.close(_state[name])
        except OSError:
            pass
    _state.clear()


def _watch(read: int, main: int | None) -> None:
    while True:
        try:
            data = os.read(read, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM in data and main is not None:
            # Aim SIGTERM at the main thread until its handler has started.
            while not _terminating:
                try:
                    signal.pthread_kill(main, signal.SIGTERM)
                except (OSError, ValueError):
                    return
                time.sleep(0.2)
            return
