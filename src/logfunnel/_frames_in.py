"""Reading length-prefixed frames from peers, and accepting them, for both servers of the toolkit.

The listener (``_serving``: logfunnel's own MessagePack frames) and the receiver (``_receiver``: the
stdlib ``SocketHandler``'s pickles) read the same framing, a 4-byte big-endian length and that many
bytes, from non-blocking stream sockets with one selector. What they share lives here once:

- ``FrameStream``: one peer's buffer and frame deadline. ``read_frames`` reads once, hands every whole
  frame to a callable and keeps what is left; a length over ``frame_limit()`` raises ``FrameTooLarge``
  before a byte of that frame is kept, and the end of the stream raises ``StreamEnded``. Its cost is
  linear in the bytes received, and it holds at most one frame and one read past it.
- ``read_waiting``: what a stream holds right now (``FIONREAD``), read when the server stops.
- ``AcceptPause``: accept() left alone for a while after it failed for want of descriptors.

What a frame means, what to do about a peer's mistakes, and what is told on stderr is each server's.
"""

from __future__ import annotations

import errno
import fcntl
import selectors
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "ACCEPTS_PER_TURN",
    "OUT_OF_DESCRIPTORS",
    "READ_SIZE",
    "AcceptPause",
    "FrameStream",
    "FrameTooLarge",
    "StreamEnded",
    "out_of_descriptors_hint",
    "read_waiting",
]

READ_SIZE = 1 << 20  # the most one recv() asks for
ACCEPTS_PER_TURN = 64  # accepted per turn of a loop, so that the peers already connected get read
# accept() fails with these while the process (or the system) is out of descriptors or memory.
# The connection stays in the backlog and the server socket stays readable: retrying at once is a
# busy loop (measured: 92-97 % of a core and 422k stderr lines in 10 s with 600 idle peers).
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LENGTH = struct.Struct("!I")  # the stdlib SocketHandler's ">L" and logfunnel's wire.HEADER alike


class FrameTooLarge(Exception):
    """A peer's length prefix says more than the limit; nothing of that frame was kept."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size, self.limit = size, limit


class StreamEnded(Exception):
    """The peer closed its side (or the connection broke); ``buffered`` bytes of a frame were left."""

    def __init__(self, buffered: int) -> None:
        super().__init__(f"the connection ended with {buffered} bytes of a frame buffered")
        self.buffered = buffered


class FrameStream:
    """One peer's stream socket: the bytes of a frame begun, and until when it may take to finish.

    A subclass says how large a frame may be (``frame_limit``, asked before each frame, so it may
    change as frames are handled: a handshake first, then records) and how long a frame begun may
    take (``frame_timeout``; None keeps no deadline, as while the handshake's own deadline applies).
    """

    __slots__ = ("buffer", "frame_deadline", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()  # at most one frame (the limit) and one read past it
        self.frame_deadline: float | None = None  # for the frame begun in the buffer

    def frame_limit(self) -> int:
        """The largest frame this peer may send now (override it)."""
        raise NotImplementedError

    def frame_timeout(self) -> float | None:
        """Seconds the peer has to finish a frame it has begun; None: no deadline now (the default)."""
        return None

    def read_frames(self, handle: Callable[[bytes], None], limit: int = READ_SIZE) -> int:
        """Read once (at most *limit* bytes), hand every whole frame's payload to *handle* in order,
        and return the bytes read (0: nothing to read now).

        Raises ``StreamEnded`` at the end of the stream, ``FrameTooLarge`` for a length over the
        limit; an exception from *handle* goes through as well, the stream left as it was then.
        Either way the caller closes the connection: the framing can no longer be trusted.
        """
        try:
            data = self.sock.recv(min(limit, READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:
            raise StreamEnded(len(self.buffer))
        buffer = self.buffer
        buffer += data
        offset = 0
        header = _LENGTH.size
        while len(buffer) - offset >= header:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            most = self.frame_limit()
            if size > most:
                raise FrameTooLarge(size, most)
            end = offset + header + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[offset + header : end])
            offset = end
            handle(payload)
        if offset:
            del buffer[:offset]
        timeout = self.frame_timeout()
        if timeout is not None:
            if not buffer:
                self.frame_deadline = None
                if offset > READ_SIZE:
                    self.buffer = bytearray()  # give back the memory of a big frame
            elif offset or self.frame_deadline is None:
                self.frame_deadline = time.monotonic() + timeout  # a new frame has begun
        return len(data)


def read_waiting(stream: FrameStream, read: Callable[[int], int]) -> None:
    """Read what *stream* holds right now with ``read(limit)`` (which returns the bytes it read, and
    closes the socket if it must): what was handed over before a server's stop(). A peer that keeps
    sending keeps writing; what it writes from now on is not read."""
    try:
        raw = fcntl.ioctl(stream.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return
    pending: int = struct.unpack("i", raw)[0]
    while pending > 0 and stream.sock.fileno() != -1:  # not closed
        consumed = read(pending)
        if not consumed:
            break
        pending -= consumed


class AcceptPause:
    """The server socket left out of the selector for a while after accept() failed for want of
    descriptors with nothing to give up: the connection it could not take keeps the socket readable,
    so retrying at once would be a busy loop."""

    __slots__ = ("data", "selector", "server", "until")

    def __init__(self, selector: selectors.BaseSelector, server: socket.socket, data: Any) -> None:
        self.selector, self.server, self.data = selector, server, data  # data: the server's selector key
        self.until: float | None = None  # set while accept() is left alone

    def pause(self, seconds: float) -> None:
        try:
            self.selector.unregister(self.server)
        except (KeyError, ValueError):
            pass
        self.until = time.monotonic() + seconds

    def timeout(self, timeout: float) -> float:
        """*timeout* for the next select(), shortened so that accepting resumes on time."""
        if self.until is None:
            return timeout
        return min(timeout, max(0.0, self.until - time.monotonic()))

    def resume_if_due(self, now: float) -> None:
        if self.until is not None and now >= self.until:
            self.until = None
            self.selector.register(self.server, selectors.EVENT_READ, self.data)


def out_of_descriptors_hint(exc: OSError) -> str:
    """What to do about *exc* from accept(), for a banner."""
    return " (raise the limit: ulimit -n)" if exc.errno == errno.EMFILE else ""
