"""A libp2p stream that speaks frames, and the one place stream exceptions are translated.

py-libp2p raises a family of its own exceptions from stream reads and
writes (``StreamEOF`` at end of stream instead of returning ``b""``,
``StreamReset``, ``StreamClosed``, ``StreamError`` wrapping anything else),
and occasionally Trio's or the OS's.  ``FramedStream`` turns all of them
into ``StreamGone`` so the RPC layers above handle exactly two failures:
the stream is gone (``StreamGone``) or the peer sent bytes that are not our
protocol (``WireError``).

It is also where a peer's unfinished message is bounded: the bytes of the
frame in progress are charged to the node's ``PartialFrameBudget`` as they
arrive (a charge past it is ``WireError("over_budget")``), and a frame must
finish within ``frame_timeout`` seconds of its first byte
(``WireError("too_slow")``).  Either way the caller resets the stream, and the
charge is given back whenever the frame completes or the stream ends.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF

from p2p_sidecar.node.budget import PartialFrameBudget
from p2p_sidecar.node.wire import FrameReader, WireError

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
    def __init__(
        self,
        stream: INetStream,
        max_bytes: int,
        *,
        budget: PartialFrameBudget | None = None,
        frame_timeout: float = float("inf"),
    ) -> None:
        self.raw = stream
        self.peer_id = str(stream.muxed_conn.peer_id)
        self._reader = FrameReader(max_bytes)
        self._bodies: deque[bytes] = deque()
        self._budget = budget
        self._frame_timeout = frame_timeout
        self._frame_started = 0.0
        self._charged = 0
        self.broken = False

    async def next_body(self) -> bytes:
        """The next frame body; raises ``StreamGone`` or ``WireError``."""
        try:
            while not self._bodies:
                await self._read_more()
        except BaseException:
            self.give_back()  # the caller resets the stream: what it held is free again
            raise
        return self._bodies.popleft()

    async def _read_more(self) -> None:
        deadline = self._frame_started + self._frame_timeout if self._reader.in_frame else float("inf")
        with trio.move_on_at(deadline) as scope:
            try:
                data = await self.raw.read(READ_CHUNK)
            except StreamEOF:
                raise StreamGone("the peer closed the stream", eof=True) from None
            except _STREAM_FAILURES as exc:
                self.broken = True
                raise StreamGone(f"stream failed ({type(exc).__name__}: {exc})") from None
        if scope.cancelled_caught:
            raise WireError(
                "too_slow",
                f"a message of {self._reader.buffered} bytes so far did not finish within "
                f"{self._frame_timeout:.3g}s of its first byte",
            )
        if not data:
            raise StreamGone("the peer closed the stream", eof=True)
        between_frames = not self._reader.in_frame
        bodies = self._reader.feed(data)
        if bodies or between_frames:
            self._frame_started = trio.current_time()  # what is left over (if anything) is a frame begun now
        self._bodies.extend(bodies)
        self._charge(self._reader.buffered)

    def _charge(self, holding: int) -> None:
        if self._budget is None:
            return
        if holding < self._charged:
            self._budget.give_back(self.peer_id, self._charged - holding)
            self._charged = holding
        elif holding > self._charged:
            passed = self._budget.take(self.peer_id, holding - self._charged)
            if passed is not None:
                limit = "per-peer" if passed == "peer" else "node-wide"
                raise WireError(
                    "over_budget",
                    f"unfinished messages would hold more than the {limit} limit "
                    f"({self._budget.per_peer if passed == 'peer' else self._budget.total} bytes)",
                )
            self._charged = holding

    def give_back(self) -> None:
        """Return this stream's share of the budget (idempotent)."""
        if self._budget is not None and self._charged:
            self._budget.give_back(self.peer_id, self._charged)
        self._charged = 0

    async def send(self, frame: bytes) -> None:
        try:
            await self.raw.write(frame)
        except _STREAM_FAILURES as exc:
            self.broken = True
            raise StreamGone(f"cannot write ({type(exc).__name__}: {exc})") from None

    async def reset(self) -> None:
        """Abort the stream (both directions), never raising and never waiting long, even when cancelled."""
        self.broken = True
        self.give_back()
        await _quietly(self.raw.reset)

    async def close(self) -> None:
        self.give_back()
        await _quietly(self.raw.close)


async def _quietly(action: Any) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + RESET_GRACE
        try:
            await action()
        except _STREAM_FAILURES as exc:
            log.debug("ignoring %s while tearing down a stream", type(exc).__name__)
