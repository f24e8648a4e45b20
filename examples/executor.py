"""ProcessPoolExecutor: pass the listener's handle with each task (or use it as the initializer).

Run: python examples/executor.py
"""

import logging
from concurrent.futures import ProcessPoolExecutor

import logfunnel


def work(handle, n: int) -> int:
    logfunnel.install_worker_logging(handle)  # idempotent: cheap after the first task in a process
    logging.getLogger("example.executor").info("computing %d squared", n)
    return n * n


if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(message)s"))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        with ProcessPoolExecutor(4) as executor:
            results = list(executor.map(work, [listener.queue] * 8, range(8)))
    print(results, listener.stats()["received"], "records")
