"""Issue 8, bounded cost per peer: a frame from a peer that knows the key costs the listener time
linear in its size and memory within a small factor of it, whatever the bytes; and a worker with one
huge record cuts it down once and delivers it, its neighbours intact.

Each hostile frame goes to a real listener over a real socket, in a forked child process whose peak
RSS growth is the measure (a generous structural bound, never a timing); a well-behaved worker's
records must keep arriving past the attack.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import pickletools
import resource
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import logfunnel
from _workers import closed_by_listener
from logfunnel import _transport, _wire

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
FRAME = 8 * 1024 * 1024  # the size of each hostile frame
FORMAT = "%(levelname)s %(name)s %(message)s"


# -- a listener in a child process, reporting its own peak memory ----------------------------------------


def _serve(conn: Any, path: str) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    listener = logfunnel.start_listener(handlers=[handler])
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send(listener.queue)
    conn.recv()  # the test is done
    stats = listener.stats()
    text = str(stats)  # must not raise, whatever the peers sent
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * 1024
    listener.stop()
    handler.close()
    conn.send((grown, stats, text))


class ChildListener:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn, child_conn = FORK.Pipe()
        self.process = FORK.Process(target=_serve, args=(child_conn, str(path)), daemon=True)
        self.process.start()
        assert self.conn.poll(20), "the listener child did not start"
        self.queue: _transport.QueueHandle = self.conn.recv()

    def finish(self) -> tuple[int, dict[str, Any], str]:
        """Stop the listener; return its peak RSS growth in bytes, its stats and their str()."""
        self.conn.send("done")
        assert self.conn.poll(30), "the listener child did not answer"
        result: tuple[int, dict[str, Any], str] = self.conn.recv()
        self.process.join(10)
        return result

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def child_listener(tmp_path: Path) -> Iterator[ChildListener]:
    listener = ChildListener(tmp_path / "out.log")
    try:
        yield listener
    finally:
        listener.kill()


class Worker:
    """A well-behaved worker speaking the protocol from this thread (lines only: a plain formatter)."""

    def __init__(self, handle: _transport.QueueHandle, name: str) -> None:
        self.name = name
        self.sock, plan = _transport.connect(handle, (os.getpid(), name, os.urandom(8), os.getppid()))
        assert len(plan["formats"]) == 1 and not plan["full"]
        self.sent = 0

    def send(self, count: int) -> None:
        first = self.sent + 1
        self.sent += count
        lines = [f"INFO good {self.name} record {seq}" for seq in range(first, self.sent + 1)]
        message = (_wire.BATCH, first, self.sent, 0, 0, [logging.INFO] * count, [lines], None)
        self.sock.sendall(_wire.frame(_wire.encode(message)))

    def bye(self) -> None:
        self.sock.sendall(_wire.frame(_wire.encode((_wire.BYE, self.sent, 0, 0))))
        self.sock.close()

    def expected(self) -> list[str]:
        return [f"INFO good {self.name} record {seq}" for seq in range(1, self.sent + 1)]


def _attack(listener: ChildListener, payload: bytes) -> None:
    """Send *payload* as one frame after authenticating; it must be refused (the connection closed),
    a good worker's records must arrive before and after it, and the listener's peak memory must
    grow by less than 10 times the frame."""
    good = Worker(listener.queue, "steady")
    good.send(100)
    sock, _ = _transport.connect(listener.queue, (4_000_003, "hostile", os.urandom(8), 1))
    sock.settimeout(30)
    try:
        sock.sendall(_wire.frame(payload))
        assert closed_by_listener(sock), "the listener did not close the hostile peer"
    finally:
        sock.close()
    good.send(100)  # still served
    late = Worker(listener.queue, "late")  # and newcomers still let in
    late.send(100)
    late.bye()
    good.bye()
    grown, stats, _ = listener.finish()
    assert stats["rejected"] == 1
    assert [line for line in listener.lines() if "steady" in line] == good.expected()
    assert [line for line in listener.lines() if "late" in line] == late.expected()
    assert grown < 10 * max(len(payload), 1024 * 1024), f"the listener grew by {grown} bytes"


def _array(count: int) -> bytes:
    return b"\xdd" + struct.pack("!I", count)


def _batch_prefix(levels_count: int) -> bytes:
    # (BATCH, first, stamped, dropped, lost, levels=[...]...): a fixarray of 8, then the fields.
    return b"\x98" + _wire.encode(_wire.BATCH)[-1:] + b"\x01\x01\x00\x00" + _array(levels_count)


# -- the failures of issue 8, each against a real listener -------------------------------------------------


def test_colliding_int_set_frame_costs_linear_time(child_listener: ChildListener) -> None:
    """A pickled set of 40,000 ints with one hash (13.7 s of pickle decoding) is refused at once."""
    _attack(child_listener, _colliding_set_pickle(40_000))


def _colliding_set_pickle(count: int) -> bytes:
    """pickle.dumps of a set of *count* ints with one hash, made without building that set (which
    would itself take quadratic time): a list's pickle, its list opcodes turned into set ones."""
    modulus = 2**61 - 1  # hash(n) == n % modulus for ints
    data = bytearray(pickle.dumps([k * modulus for k in range(count)], protocol=5))
    for op, _, pos in pickletools.genops(bytes(data)):
        if op.name == "EMPTY_LIST":
            data[pos] = 0x8F  # EMPTY_SET
        elif op.name == "APPENDS":
            data[pos] = 0x90  # ADDITEMS
    return bytes(data)


def test_the_colliding_set_pickle_is_that_set() -> None:
    """The attack's payload really is a pickled set of ints that share one hash."""
    value = pickle.loads(_colliding_set_pickle(300))
    assert type(value) is set and len(value) == 300 and len({hash(n) for n in value}) == 1


def test_colliding_float_keys_cannot_reach_a_dict(child_listener: ChildListener) -> None:
    """Map keys that are not strings (floats that hash alike) are refused by the schema."""
    keys = b"".join(b"\xcb" + struct.pack("!d", 2.0 ** (61 * k % 1000)) + b"\xc0" for k in range(2000))
    record = b"\xdf" + struct.pack("!I", 2000) + keys
    payload = _batch_prefix(1) + b"\x14" + b"\x91\x91\xa1x" + b"\x91" + record
    _attack(child_listener, payload)


@pytest.mark.parametrize("where", ["levels", "lines", "record-value", "unknown-kind", "no-kind"])
def test_empty_container_flood_is_refused_within_bounded_memory(
    child_listener: ChildListener, where: str
) -> None:
    """8 MB of empty arrays (1 byte each on the wire, 56 as a list) cost no more than the frame."""
    count = FRAME
    if where == "levels":
        payload = _batch_prefix(count) + b"\x90" * count
    elif where == "lines":
        payload = _batch_prefix(1) + b"\x14" + b"\x91" + _array(count) + b"\x90" * count
    elif where == "record-value":
        flood = _array(count) + b"\x90" * count
        payload = _batch_prefix(1) + b"\x14" + b"\x91\x91\xa1x" + b"\x91\x81\xa1x" + flood
    elif where == "unknown-kind":
        payload = b"\x92\x63" + _array(count) + b"\x90" * count
    else:
        payload = _array(count) + b"\x90" * count
    _attack(child_listener, payload)


def test_empty_set_opcode_flood_is_refused_within_bounded_memory(child_listener: ChildListener) -> None:
    """An 8 MB pickle of EMPTY_SET opcodes (1.95 GB under pickle) is refused at its second byte."""
    _attack(child_listener, b"\x80\x05" + b"\x8f" * FRAME + b".")


def test_nested_reference_bomb_is_refused(child_listener: ChildListener) -> None:
    """Memo references nested 25 deep ("billion laughs", 18.5 s under pickle) cannot be expressed."""
    layer: list[Any] = ["lol"] * 10
    for _ in range(25):
        layer = [layer] * 10
    _attack(child_listener, pickle.dumps(layer, protocol=5))


@pytest.mark.parametrize(
    "payload",
    [
        _batch_prefix(0)[:3] + b"\xcf" + b"\xff" * 8 + b"\x00\x00\x90\x91\x90\xc0",  # stamped 2**64 - 1
        pickle.dumps((_wire.BATCH, 1, 10**5000, 0, 0, [], [[]], None)),  # what issue 8 saw
        _batch_prefix(0)[:2] + b"\xd3" + b"\xff" * 8 + b"\x01\x00\x00\x90\x91\x90\xc0",  # first = -1
    ],
    ids=["stamped-2**64-1", "pickled-10**5000", "negative-first"],
)
def test_huge_stamped_is_refused_and_stats_still_print(child_listener: ChildListener, payload: bytes) -> None:
    """A counter outside 0 <= n < 2**63 closes the peer; stats() and str(stats()) still work."""
    _attack(child_listener, payload)


def test_a_record_attribute_of_the_wrong_type_is_refused(child_listener: ChildListener) -> None:
    """``created`` must be a float: a record that says otherwise closes its peer before any use."""
    record = {"name": "x", "levelno": 20, "msg": "m", "created": "yesterday"}
    _attack(child_listener, _wire.encode((_wire.BATCH, 1, 1, 0, 0, [20], [["x"]], [record])))


# -- a huge record in a real worker ------------------------------------------------------------------------


class _Blob(logging.Formatter):
    """A Formatter subclass, so whole records travel; shows the length and the tail of ``blob``."""

    def format(self, record: logging.LogRecord) -> str:
        blob = getattr(record, "blob", "")
        return (
            f"{record.getMessage()} blob={len(blob)} tail={blob[-60:]!r} ctx={getattr(record, 'ctx', None)}"
        )


def _log_huge(handle: _transport.QueueHandle) -> None:
    # A regression (whole records re-encoded, or recursion) runs into this limit instead of the machine.
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + 400 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("huge")
    log.info("before", extra={"ctx": {"n": 1}})
    log.info("the big one", extra={"blob": "y" * 70_000_000, "ctx": {"n": 2}})
    log.info("after", extra={"ctx": {"n": 3}})
    logfunnel.flush_worker_logging()
    logfunnel.uninstall_worker_logging()


def test_huge_extra_is_truncated_once_and_neighbours_arrive(tmp_path: Path) -> None:
    """A 70 MB extra is cut once with a marker, counted in stats()["truncated"], in bounded memory."""
    path = tmp_path / "huge.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_Blob())
    with logfunnel.start_listener(handlers=[handler]) as listener:
        process = FORK.Process(target=_log_huge, args=(listener.queue,))
        process.start()
        process.join(50)
        if process.is_alive():
            process.kill()
            process.join(5)
        assert process.exitcode == 0
        stats = listener.stats()
    handler.close()
    marker = " [logfunnel: truncated from 70000000 characters]"
    assert path.read_text(encoding="utf-8").splitlines() == [
        "before blob=0 tail='' ctx={'n': 1}",
        f"the big one blob={_wire.MAX_TEXT + len(marker)} tail={('y' * 12 + marker)!r} ctx={{'n': 2}}",
        "after blob=0 tail='' ctx={'n': 3}",
    ]
    [worker] = stats["processes"]
    assert (worker["received"], worker["lost"], worker["truncated"]) == (3, 0, 1)
    assert stats["truncated"] == 1


class _Show(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.getMessage()} {getattr(record, 'pair', None)!r} {getattr(record, 'big', None)!r}"


def _log_awkward(handle: _transport.QueueHandle) -> None:
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("awkward")
    log.warning("caf\udcff %s", "x", extra={"pair": ("a\udcff", 2**70), "big": 2**70})
    log.warning("after")
    logfunnel.uninstall_worker_logging()


def test_lone_surrogates_and_huge_ints_in_one_record_still_arrive(tmp_path: Path) -> None:
    """A lone surrogate arrives exactly; an int beyond 64 bits as its repr; nothing is a placeholder."""
    lines_path, records_path = tmp_path / "lines.log", tmp_path / "records.log"
    lines = logging.FileHandler(lines_path, encoding="utf-8", errors="surrogateescape")
    lines.setFormatter(logging.Formatter("%(message)s"))
    records = logging.FileHandler(records_path, encoding="utf-8", errors="backslashreplace")
    records.setFormatter(_Show())
    with logfunnel.start_listener(handlers=[lines, records]) as listener:
        process = FORK.Process(target=_log_awkward, args=(listener.queue,))
        process.start()
        process.join(20)
        assert process.exitcode == 0
    lines.close()
    records.close()
    assert lines_path.read_bytes() == b"caf\xff x\nafter\n"
    assert records_path.read_text(encoding="utf-8").splitlines() == [
        f"caf\\udcff x ('a\\udcff', {2**70}) '{2**70}'",  # the tuple arrives as a tuple
        "after None None",
    ]
    assert listener.stats()["lost"] == 0
