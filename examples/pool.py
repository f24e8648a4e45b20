"""multiprocessing.Pool: every worker joins the listener through the Pool initializer.

Run: python examples/pool.py   (writes pool-example.log in the current directory)
"""

import logging
import multiprocessing

import logfunnel


def work(n: int) -> int:
    log = logging.getLogger("example.pool")
    log.info("task %d starts", n)
    if n == 3:
        try:
            _ = n / 0
        except ZeroDivisionError:
            log.exception("task %d failed", n)
    return n * n


if __name__ == "__main__":
    handler = logging.FileHandler("pool-example.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(processName)-18s %(levelname)-7s %(message)s"))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        with multiprocessing.Pool(
            4, initializer=logfunnel.install_worker_logging, initargs=(listener.queue,)
        ) as pool:
            print(pool.map(work, range(8)))
    print(listener.stats()["received"], "records in pool-example.log")
