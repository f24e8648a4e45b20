"""_frames_in: the frame reader the listener and the receiver share, on real socket pairs."""

from __future__ import annotations

import selectors
import socket
import struct
from collections.abc import Iterator

import pytest

from logfunnel import _frames_in
from logfunnel._frames_in import AcceptPause, FrameStream, FrameTooLarge, StreamEnded, read_waiting


class _Limited(FrameStream):
    __slots__ = ("limit", "timeout")

    def __init__(self, sock: socket.socket, limit: int, timeout: float | None) -> None:
        super().__init__(sock)
        self.limit, self.timeout = limit, timeout

    def frame_limit(self) -> int:
        return self.limit

    def frame_timeout(self) -> float | None:
        return self.timeout


def _frame(payload: bytes) -> bytes:
    return struct.pack(">L", len(payload)) + payload


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_every_whole_frame_is_handed_over_in_order(pair):
    """Three frames in one read arrive as three payloads, in order, and nothing stays buffered."""
    ours, theirs = pair
    stream, got = _Limited(ours, 100, 30.0), []
    data = _frame(b"one") + _frame(b"") + _frame(b"three")
    theirs.sendall(data)
    assert stream.read_frames(got.append) == len(data)
    assert got == [b"one", b"", b"three"]
    assert (stream.buffer, stream.frame_deadline) == (bytearray(), None)


def test_a_frame_split_across_reads_is_kept_until_whole(pair):
    """A frame dribbled a byte at a time is handed over once, when its last byte arrives."""
    ours, theirs = pair
    stream, got = _Limited(ours, 100, 30.0), []
    data = _frame(b"dribbled")
    for byte in data[:-1]:
        theirs.sendall(bytes([byte]))
        assert stream.read_frames(got.append) == 1
        assert got == [] and stream.frame_deadline is not None
    theirs.sendall(data[-1:])
    stream.read_frames(got.append)
    assert got == [b"dribbled"] and stream.frame_deadline is None


def test_a_deadline_is_kept_from_the_frame_begun_not_from_each_read(pair):
    """Bytes of the same frame do not push its deadline back; the next frame gets a new one."""
    ours, theirs = pair
    stream, got = _Limited(ours, 100, 30.0), []
    theirs.sendall(_frame(b"abcdef")[:5])
    stream.read_frames(got.append)
    first = stream.frame_deadline
    theirs.sendall(b"b")
    stream.read_frames(got.append)
    assert stream.frame_deadline == first
    theirs.sendall(b"cdef" + _frame(b"next")[:2])
    stream.read_frames(got.append)
    assert got == [b"abcdef"] and stream.frame_deadline is not None and stream.frame_deadline >= first


def test_no_deadline_is_kept_while_frame_timeout_is_none(pair):
    """A stream whose frame_timeout() is None (a handshake under way) keeps no frame deadline."""
    ours, theirs = pair
    stream = _Limited(ours, 100, None)
    theirs.sendall(_frame(b"half")[:5])
    assert stream.read_frames(lambda payload: None) == 5
    assert stream.frame_deadline is None and len(stream.buffer) == 5


def test_a_length_over_the_limit_raises_before_the_frame_is_kept(pair):
    """A 4 GiB length prefix raises FrameTooLarge with the size and limit, having buffered only the read."""
    ours, theirs = pair
    stream = _Limited(ours, 100, 30.0)
    theirs.sendall(struct.pack(">L", 2**32 - 1) + b"x" * 10)
    with pytest.raises(
        FrameTooLarge, match=r"^a frame of 4294967295 bytes exceeds the limit of 100 bytes$"
    ) as info:
        stream.read_frames(lambda payload: None)
    assert (info.value.size, info.value.limit) == (2**32 - 1, 100)
    assert len(stream.buffer) == 14


def test_the_limit_is_asked_before_each_frame(pair):
    """A limit that grows once the first frame is handled (a handshake, then records) applies to the next."""
    ours, theirs = pair
    stream, got = _Limited(ours, 10, 30.0), []

    def handle(payload: bytes) -> None:
        got.append(payload)
        stream.limit = 1000

    theirs.sendall(_frame(b"hello") + _frame(b"y" * 500))
    stream.read_frames(handle)
    assert got == [b"hello", b"y" * 500]


def test_the_end_of_the_stream_raises_with_what_was_buffered(pair):
    """A peer that closes within a frame: StreamEnded says how many bytes of it were left."""
    ours, theirs = pair
    stream = _Limited(ours, 100, 30.0)
    theirs.sendall(_frame(b"cut short")[:6])
    stream.read_frames(lambda payload: None)
    theirs.close()
    with pytest.raises(StreamEnded) as info:
        stream.read_frames(lambda payload: None)
    assert info.value.buffered == 6


def test_nothing_to_read_returns_zero(pair):
    """A read with nothing waiting returns 0 and changes nothing."""
    ours, _ = pair
    stream = _Limited(ours, 100, 30.0)
    assert stream.read_frames(lambda payload: None) == 0
    assert (stream.buffer, stream.frame_deadline) == (bytearray(), None)


def test_the_memory_of_a_big_frame_is_given_back(pair):
    """After a frame larger than one read is handled, the stream holds a fresh, empty buffer."""
    ours, theirs = pair
    size = _frames_in.READ_SIZE + 1000
    stream, got = _Limited(ours, 2 * size, 30.0), []
    theirs.setblocking(False)
    data, sent = memoryview(_frame(b"z" * size)), 0
    while len(got) == 0:
        try:
            sent += theirs.send(data[sent:])
        except BlockingIOError:
            pass
        before = stream.buffer
        stream.read_frames(lambda payload: got.append(len(payload)))
    assert got == [size]
    assert stream.buffer is not before and stream.buffer == bytearray()


def test_read_waiting_reads_what_is_there_and_no_more(pair):
    """read_waiting reads the bytes waiting at the call, frame by frame, and stops there."""
    ours, theirs = pair
    stream, got = _Limited(ours, 100, 30.0), []
    theirs.sendall(_frame(b"a") * 50)
    read_waiting(stream, lambda limit: stream.read_frames(got.append, limit))
    assert got == [b"a"] * 50


def test_accept_pause_leaves_the_server_out_until_due():
    """A paused server socket is out of the selector, shortens the select timeout, and comes back."""
    server = socket.create_server(("127.0.0.1", 0))
    selector = selectors.DefaultSelector()
    try:
        selector.register(server, selectors.EVENT_READ, "accept")
        pause = AcceptPause(selector, server, "accept")
        assert pause.timeout(1.0) == 1.0
        pause.pause(0.2)
        assert server not in selector.get_map() and pause.timeout(1.0) <= 0.2
        assert pause.until is not None
        pause.resume_if_due(pause.until - 0.1)
        assert server not in selector.get_map()
        pause.resume_if_due(pause.until)
        assert selector.get_key(server).data == "accept" and pause.until is None
    finally:
        selector.close()
        server.close()
