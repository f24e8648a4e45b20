"""Spawned processes (the default on macOS and Windows, and forkserver on Linux from Python 3.14).

The handle is small and picklable, so it travels as a Process argument.
Run: python examples/spawn.py
"""

import logging
import multiprocessing

import logfunnel


def child(handle, name: str) -> None:
    logfunnel.install_worker_logging(handle)
    logging.getLogger("example.spawn").warning("hello from %s", name)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(processName)s: %(message)s"))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        processes = [ctx.Process(target=child, args=(listener.queue, f"child {i}")) for i in range(3)]
        for p in processes:
            p.start()
        for p in processes:
            p.join()
    print(listener.stats()["received"], "records")
