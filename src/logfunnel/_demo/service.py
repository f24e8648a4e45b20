"""The simulated shop: handle one request the way a small web service would, and log like one.

Each logger has its own kind of message: ``shop.http`` one access line per request (its level from
the status), ``shop.cache`` hits and misses at DEBUG, ``shop.db`` queries, slow queries and
deadlock retries, ``shop.payments`` (in ``payments.py``) charges and their rare failures with a
traceback, ``shop.jobs`` the progress of a background job. Per-request context travels in
``extra={"request_id": ...}`` and the demo's formatter shows it.
"""

from __future__ import annotations

import logging

from .payments import PaymentDeclined, checkout
from .traffic import Request

__all__ = ["ReindexJob", "handle_request"]

http_log = logging.getLogger("shop.http")
db_log = logging.getLogger("shop.db")
cache_log = logging.getLogger("shop.cache")
payments_log = logging.getLogger("shop.payments")
jobs_log = logging.getLogger("shop.jobs")

SLOW_QUERY_MS = 200.0


def _level(status: int) -> int:
    if status >= 500:
        return logging.ERROR
    return logging.WARNING if status >= 400 else logging.INFO


def _lookup(request: Request, extra: dict[str, str]) -> None:
    outcome = "hit" if request.cache_hit else "miss"
    cache_log.debug("get %s: %s (%.2f ms)", request.cache_key, outcome, request.cache_ms, extra=extra)


def _query(request: Request, extra: dict[str, str]) -> bool:
    """Run the request's SQL (in spirit); False when the transaction had to be given up."""
    for attempt in range(1, request.deadlocks + 1):
        if attempt == 3:
            db_log.error("transaction abandoned after 3 deadlocks: %s", request.sql, extra=extra)
            return False
        db_log.warning(
            "deadlock detected, retrying transaction (attempt %d of 3): %s",
            attempt + 1,
            request.sql,
            extra=extra,
        )
    if request.db_fails:
        db_log.error(
            "query failed: server closed the connection unexpectedly (db-primary:5432): %s",
            request.sql,
            extra=extra,
        )
        return False
    if request.query_ms > SLOW_QUERY_MS:
        db_log.warning(
            "slow query (%.0f ms > %.0f ms): %s", request.query_ms, SLOW_QUERY_MS, request.sql, extra=extra
        )
    else:
        db_log.debug("%s [%.1f ms]", request.sql, request.query_ms, extra=extra)
    return True


def _checkout(request: Request, extra: dict[str, str]) -> None:
    order_id = "ord-" + extra["request_id"]
    try:
        checkout(order_id, request.amount, request.card, request.charge_fails, extra)
    except PaymentDeclined:
        payments_log.exception("checkout of order %s failed, the customer sees 502", order_id, extra=extra)


def handle_request(request: Request, extra: dict[str, str]) -> None:
    """Serve *request*: cache, database and payment as its route needs, then one access line."""
    if request.cache_key:
        _lookup(request, extra)
    if request.sql and _query(request, extra) and request.cache_key:
        cache_log.debug("set %s (ttl 300 s)", request.cache_key, extra=extra)
    if request.route == "checkout" and (request.status == 200 or request.charge_fails):
        _checkout(request, extra)
    http_log.log(
        _level(request.status),
        '"%s %s" %d %dB %.1fms',
        request.method,
        request.path,
        request.status,
        request.size,
        request.duration_ms,
        extra=extra,
    )


class ReindexJob:
    """A background job that reindexes the catalogue in steps and reports its progress."""

    name = "reindex-products"

    def __init__(self, items: int = 48_000, batch: int = 500) -> None:
        self.items = items
        self.batch = batch
        self.done = 0
        self.runs = 0

    def step(self) -> None:
        """Index the next batch; log the start, the progress and the end of each run."""
        if self.done == 0:
            self.runs += 1
            jobs_log.info("%s run %d started: %d items", self.name, self.runs, self.items)
        self.done = min(self.done + self.batch, self.items)
        if self.done % 7_000 < self.batch:  # a few items in a run lack a price
            jobs_log.warning("%s: item %d skipped, it has no price", self.name, 1000 + self.done)
        jobs_log.info(
            "%s: %d/%d items (%.0f%%)", self.name, self.done, self.items, 100.0 * self.done / self.items
        )
        if self.done == self.items:
            jobs_log.info("%s run %d finished", self.name, self.runs)
            self.done = 0
