"""The simulated shop's traffic, drawn in advance so that the request loop only logs.

Each ``Request`` holds everything random about one request: its route, what the cache and the
database do, how long it takes, its status. ``draw_traffic`` makes a few thousand of them per
worker; the loop walks them, reshuffled each round, and spends its time in ``logging``.
"""

from __future__ import annotations

import random
from typing import NamedTuple
from urllib.parse import quote_plus

__all__ = ["Request", "draw_traffic"]


class Request(NamedTuple):
    method: str
    path: str
    route: str  # which handler serves it: "product", "search", "cart", "add", "checkout", "static", "health"
    status: int
    duration_ms: float
    size: int
    cache_key: str  # "" when the route does not use the cache
    cache_hit: bool
    cache_ms: float
    sql: str  # "" when the route does not query the database
    query_ms: float
    deadlocks: int  # how many times the query hits a deadlock before it succeeds (3: it gives up)
    db_fails: bool  # the database connection drops during the query
    amount: float  # checkout: the order's total
    card: str  # checkout: the card's last four digits
    charge_fails: bool  # checkout: the card processor does not answer


_ROUTES = ["product", "search", "cart", "add", "checkout", "static", "health"]
_ROUTE_WEIGHTS = [36, 14, 15, 8, 3, 19, 5]
_SEARCHES = ["espresso", "caf\u00e9 cr\u00e8me", "grinder", "filter papers", "oat milk", "mug", "kettle"]
_STATIC = {"/static/app.3f9a1c.js": 184_310, "/static/app.3f9a1c.css": 41_877, "/static/logo.svg": 6_120}
_BODY = {"product": (1_800, 9_000), "search": (4_000, 42_000), "cart": (900, 6_500), "add": (300, 900)}
_FIXED_BODY = {304: 0, 401: 87, 404: 112, 429: 64, 500: 146, 502: 98, 503: 120}


def _size(rng: random.Random, route: str, path: str, status: int) -> int:
    if status in _FIXED_BODY:
        return _FIXED_BODY[status]
    if route == "static":
        return _STATIC[path]
    if route == "health":
        return 15
    low, high = _BODY.get(route, (400, 700))
    return rng.randint(low, high)


def _status(rng: random.Random, route: str) -> int:
    """The status a request is answered with before anything goes wrong inside the service."""
    roll = rng.random()
    if route == "static":
        return 304 if roll < 0.6 else 200
    if route == "health":
        return 200
    if roll < 0.004:
        return 429
    if roll < 0.008 and route in ("cart", "add", "checkout"):
        return 401
    if roll < 0.030 and route == "product":
        return 404
    return 201 if route == "add" else 200


def _target(rng: random.Random, route: str) -> tuple[str, str, str, str]:
    """Method, path, cache key and SQL of a request to *route*."""
    product = rng.randint(1000, 48_000)
    if route == "product":
        sql = f"SELECT id, name, price, stock FROM products WHERE id = {product}"
        return "GET", f"/api/products/{product}", f"product:{product}", sql
    if route == "search":
        term = rng.choice(_SEARCHES)
        sql = f"SELECT id, name, price FROM products WHERE name ILIKE '%{term}%' LIMIT 24"
        return "GET", "/api/search?q=" + quote_plus(term), "", sql
    if route == "cart":
        return "GET", "/api/cart", f"session:{rng.getrandbits(48):012x}", ""
    if route == "add":
        cart = rng.randint(1, 99_999)
        sql = f"INSERT INTO cart_items (cart_id, product_id, qty) VALUES ({cart}, {product}, 1)"
        return "POST", "/api/cart/items", "", sql
    if route == "checkout":
        return "POST", "/api/checkout", "", "UPDATE products SET stock = stock - 1 WHERE id = ANY(%(ids)s)"
    if route == "static":
        return "GET", rng.choice(list(_STATIC)), "", ""
    return "GET", "/health", "", ""


def _draw(rng: random.Random) -> Request:
    route = rng.choices(_ROUTES, _ROUTE_WEIGHTS)[0]
    method, path, cache_key, sql = _target(rng, route)
    status = _status(rng, route)
    cache_hit = bool(cache_key) and rng.random() < (0.9 if route == "cart" else 0.8)
    if status >= 400 or cache_hit:
        sql = ""  # refused before the database, or answered from the cache
    query_ms = rng.lognormvariate(0.3, 1.0) if sql else 0.0
    if route == "search" and sql and rng.random() < 0.02:
        query_ms += rng.uniform(250, 1800)  # the occasional search that misses the index
    deadlocks = 0
    if sql and route in ("add", "checkout") and rng.random() < 0.01:
        deadlocks = 3 if rng.random() < 0.05 else rng.randint(1, 2)
    db_fails = bool(sql) and rng.random() < 0.0008
    if deadlocks == 3 or db_fails:
        status = 503 if route == "search" else 500
    charge_fails = route == "checkout" and status == 200 and rng.random() < 0.1
    if charge_fails:
        status = 502
    duration_ms = query_ms + rng.lognormvariate(1.2, 0.8) + 180.0 * deadlocks + 2500.0 * charge_fails
    return Request(
        method=method,
        path=path,
        route=route,
        status=status,
        duration_ms=duration_ms / 4 if route == "static" else duration_ms,
        size=_size(rng, route, path, status),
        cache_key=cache_key,
        cache_hit=cache_hit,
        cache_ms=rng.uniform(0.05, 0.6),
        sql=sql,
        query_ms=query_ms,
        deadlocks=deadlocks,
        db_fails=db_fails,
        amount=round(rng.uniform(8, 240), 2),
        card=f"{rng.randint(0, 9999):04d}",
        charge_fails=charge_fails,
    )


def draw_traffic(rng: random.Random, count: int) -> list[Request]:
    """Draw *count* requests with the proportions of a small shop's day (errors are rare)."""
    return [_draw(rng) for _ in range(count)]
