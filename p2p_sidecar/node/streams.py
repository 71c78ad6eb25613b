"""A libp2p stream that speaks frames, and the one place stream exceptions are translated.

py-libp2p raises a family of its own exceptions from stream reads and
writes (``StreamEOF`` at end of stream instead of returning ``b""``,
``StreamReset``, ``StreamClosed``, ``StreamError`` wrapping anything else),
and occasionally Trio's or the OS's.  ``FramedStream`` turns all of them
into ``StreamGone`` so the RPC layers above handle exactly two failures:
the stream is gone (``StreamGone``) or the peer sent bytes that are not our
protocol (``WireError``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF

from p2p_sidecar.node.wire import FrameReader

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
RESET_GRACE = 1.0
"""Seconds a reset or close may take before we stop waiting for it."""


class StreamGone(ConnectionError):
    """The stream ended: closed by the peer (``eof``) or broken (reset, connection lost)."""

    def __init__(self, detail: str, *, eof: bool = False) -> None:
        super().__init__(detail)
        self.eof = eof


_STREAM_FAILURES: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.BusyResourceError,
    EOFError,
    ValueError,  # py-libp2p's muxers raise ValueError subclasses for some stream states
)


class FramedStream:
    def __init__(self, stream: INetStream, max_bytes: int) -> None:
        self.raw = stream
        self.peer_id = str(stream.muxed_conn.peer_id)
        self._reader = FrameReader(max_bytes)
        self._bodies: deque[bytes] = deque()
        self.broken = False

    async def next_body(self) -> bytes:
        """The next frame body; raises ``StreamGone`` or ``WireError``."""
        while not self._bodies:
            try:
                data = await self.raw.read(READ_CHUNK)
            except StreamEOF:
                raise StreamGone("the peer closed the stream", eof=True) from None
            except _STREAM_FAILURES as exc:
                self.broken = True
                raise StreamGone(f"stream failed ({type(exc).__name__}: {exc})") from None
            if not data:
                raise StreamGone("the peer closed the stream", eof=True)
            self._bodies.extend(self._reader.feed(data))
        return self._bodies.popleft()

    async def send(self, frame: bytes) -> None:
        try:
            await self.raw.write(frame)
        except _STREAM_FAILURES as exc:
            self.broken = True
            raise StreamGone(f"cannot write ({type(exc).__name__}: {exc})") from None

    async def reset(self) -> None:
        """Abort the stream (both directions), never raising and never waiting long, even when cancelled."""
        self.broken = True
        await _quietly(self.raw.reset)

    async def close(self) -> None:
        await _quietly(self.raw.close)


async def _quietly(action: Any) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + RESET_GRACE
        try:
            await action()
        except _STREAM_FAILURES as exc:
            log.debug("ignoring %s while tearing down a stream", type(exc).__name__)
