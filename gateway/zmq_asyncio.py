"""A ZeroMQ socket driven by asyncio reader callbacks: the gateway's twin of ``p2p_sidecar/zmq_trio.py``.

``zmq.asyncio`` wraps every send and receive in a Future and re-schedules itself after each one; on the bridge's
hot path that costs gateway CPU per call that reader callbacks do not (``bench/zmq_adapters.py`` measures both
side by side; see docs/bridge.md).  The edge-triggered descriptor's rules live in ``shared_schema/zmq_socket.py``,
shared with the Trio adapter; this shell registers a reader callback that drains, and a send that leaves input
pending schedules a drain.

Messages are handed to ``on_message`` synchronously, in order, from the drain; it must not block (set futures,
start tasks).  Sends never wait: ZeroMQ's queue is bounded by the high-water mark and a full queue raises
``zmq.Again``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq

from shared_schema.zmq_socket import ZmqSocketCore

DRAIN_BATCH = 512
"""Messages handled per loop callback before yielding to other callbacks."""


class AsyncioZmqSocket(ZmqSocketCore):
    def __init__(
        self, sock: zmq.Socket[bytes], on_message: Callable[[list[bytes]], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(sock)
        self._on_message = on_message
        self._loop = loop
        self._drain_scheduled = False
        loop.add_reader(self.fd, self._drain)
        # The edge may already have fired (and been consumed) before we watched the FD,
        # e.g. a monitor socket's first events: look once instead of waiting for the next edge.
        self._input_pending()

    def _input_pending(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def drain_now(self) -> None:
        """Read what is already queued, at once (before acting on news from another socket)."""
        self._drain()

    def _drain(self) -> None:
        self._drain_scheduled = False
        batch = self.read_batch(DRAIN_BATCH)
        for frames in batch:
            if self.closed:  # a message handler closed the socket: the rest would go nowhere
                return
            self._on_message(frames)
        if len(batch) == DRAIN_BATCH:
            self._input_pending()  # more may be waiting: continue after other callbacks had a turn

    def close(self) -> None:
        if not self.closed:
            self._loop.remove_reader(self.fd)
        super().close()
