"""The wire format's cost: encode+decode of a realistic 1000-record batch, and the worst hostile frames
we could construct for each candidate format (time and peak RSS growth of decoding one, each in a
fresh forked process).

    python benchmarks/bench_wire.py            # everything (the pickle attacks take about a minute)
    python benchmarks/bench_wire.py --micro    # only the 1000-record batch

Candidates: the old restricted unpickler (pickle 5), MessagePack through msgspec with the listener's
schema (what logfunnel uses), msgspec and msgpack without a schema, the stdlib's C JSON decoder.
msgpack is optional (``pip install msgpack``); missing candidates are skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import resource
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import msgspec

from logfunnel import _wire

try:
    import msgpack  # type: ignore[import-not-found]
except ImportError:
    msgpack = None


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("refused")


def _unpickle(payload: bytes) -> Any:
    return _Restricted(io.BytesIO(payload)).load()


def _batch(count: int, full: bool) -> tuple[Any, ...]:
    records = []
    for i in range(count):
        record = logging.LogRecord(
            "app.worker", 20, "/srv/app/worker.py", 42, "request %d from %s took %.3f ms",
            (i, "10.0.0.%d" % (i % 255), i / 7), None, func="handle",
        )  # fmt: skip
        record.message = record.getMessage()
        state = record.__dict__.copy()
        state.update(msg=record.message, args=None, exc_info=None)
        records.append(state)
    lines = [[f"2026-12-01 07:00:00,123 INFO 1234 app.worker:handle:42 - {r['msg']}" for r in records]]
    return (_wire.BATCH, 1, count, 0, 0, [20] * count, lines, records if full else None)


def _best(fn: Callable[[], Any], loops: int = 40) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e3


def micro() -> None:
    codecs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
        "pickle (old)": (lambda m: pickle.dumps(m, 5), _unpickle),
        "msgspec+schema (new)": (_wire.pack, _wire.decode_message),
        "msgspec, no schema": (msgspec.msgpack.encode, msgspec.msgpack.decode),
        "json (stdlib C)": (lambda m: json.dumps(m).encode(), json.loads),
    }
    if msgpack is not None:
        codecs["msgpack, no schema"] = (msgpack.packb, msgpack.unpackb)
    print("1000-record batch: encode / decode, best of 5 (ms)")
    for full in (False, True):
        message = _batch(1000, full)
        for name, (encode, decode) in codecs.items():
            payload = encode(message)
            enc = _best(lambda e=encode, m=message: e(m))  # type: ignore[misc]
            dec = _best(lambda d=decode, p=payload: d(p))  # type: ignore[misc]
            kind = "records" if full else "lines  "
            print(f"  {kind} {name:22} {len(payload):8,d} B  encode {enc:6.3f}  decode {dec:6.3f}")


def _measure(decode: Callable[[bytes], Any], payload: bytes) -> tuple[float, int, str]:
    """Decode *payload* in a forked child: seconds, peak RSS growth in bytes, and the outcome."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            decode(payload)
            outcome = "accepted"
        except Exception as exc:
            outcome = f"refused ({type(exc).__name__})"
        elapsed = time.perf_counter() - start
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) * 1024
        os.write(write, json.dumps([elapsed, grown, outcome]).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(pid, 0)
    os.close(read)
    elapsed, grown, outcome = json.loads(data)
    return elapsed, grown, outcome


def _array(count: int) -> bytes:
    return b"\xdd" + struct.pack("!I", count)


def hostile() -> None:
    size = 8 * 1024 * 1024
    head = b"\x98\x01\x01\x01\x00\x00"  # (BATCH, first, stamped, dropped, lost, ...
    short_strings = b"\xa2ab" * (size // 3)
    chunk = 65536
    chunks = size // (3 * chunk)
    lines_flood = (
        head + _array(0) + b"\xdc" + struct.pack("!H", chunks) + (_array(chunk) + b"\xa2ab" * chunk) * chunks
    )
    keys = b"".join(b"\xa4" + b"%04d" % (k % 10000) + b"\xc0" for k in range(10000))
    one_record = b"\xde" + struct.pack("!H", 10000) + keys
    records_flood = (
        head + _array(0) + b"\x90" + _array(size // len(one_record)) + one_record * (size // len(one_record))
    )
    modulus = 2**61 - 1  # hash(n) == n % modulus
    layer: list[Any] = ["lol"] * 10
    for _ in range(6):
        layer = [layer] * 10
    colliding = pickle.dumps({k * modulus for k in range(40000)})
    cases: list[tuple[str, Callable[[bytes], Any], bytes]] = [
        ("pickle: 8 MB of EMPTY_SET", _unpickle, b"\x80\x05" + b"\x8f" * size + b"."),
        ("pickle: set of 40,000 colliding ints", _unpickle, colliding),
        ("pickle: memo refs (cheap here; 10**7 leaves to a walker)", _unpickle, pickle.dumps(layer)),
        ("msgspec+schema: 8 MB of empty arrays", _wire.decode_message, head + _array(size) + b"\x90" * size),
        ("msgspec+schema: empty arrays in a record", _wire.decode_message,
         head + _array(1) + b"\x14\x91\x91\xa1x\x91\x81\xa1x" + _array(size) + b"\x90" * size),
        ("msgspec+schema: 2-char lines (accepted)", _wire.decode_message, lines_flood),
        ("msgspec+schema: records of short keys", _wire.decode_message, records_flood),
        ("msgspec, no schema: 8 MB of empty arrays", msgspec.msgpack.decode, _array(size) + b"\x90" * size),
        ("msgspec, no schema: 2-char strings", msgspec.msgpack.decode, _array(size // 3) + short_strings),
        ("json: 8 MB of '[],'", json.loads, b"[" + b"[]," * (size // 3) + b"[]]"),
    ]  # fmt: skip
    if msgpack is not None:
        cases.append(
            ("msgpack, no schema: 8 MB of empty arrays", msgpack.unpackb, _array(size) + b"\x90" * size)
        )
    print("hostile frames: decode time, peak RSS growth (each in a fresh fork)")
    for name, decode, payload in cases:
        elapsed, grown, outcome = _measure(decode, payload)
        factor = grown / len(payload)
        print(
            f"  {name:52} {len(payload) / 2**20:6.2f} MiB  {elapsed:7.3f} s  "
            f"+{grown / 2**20:8.1f} MiB ({factor:5.1f}x)  {outcome}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", action="store_true", help="only the 1000-record batch")
    args = parser.parse_args()
    micro()
    if not args.micro:
        hostile()


if __name__ == "__main__":
    main()
