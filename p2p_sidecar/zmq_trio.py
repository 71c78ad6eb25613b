"""A ZeroMQ socket driven by Trio, without an extra thread.

pyzmq has no Trio integration, so this is ours: the edge-triggered descriptor's rules live in
``shared_schema/zmq_socket.py`` (shared with the gateway's asyncio adapter); this shell sleeps in
``trio.lowlevel.wait_readable`` when a drain found nothing, and a send that leaves input pending cancels the
scope the receiver sleeps in, since the edge it waits for may already have been consumed by the send.

Only one task may receive (Trio allows one waiter per fd); sends are synchronous and never wait, so any task may
send.  See docs/bridge.md.
"""

from __future__ import annotations

import trio
import zmq

from shared_schema.zmq_socket import ZmqSocketCore


class TrioZmqSocket(ZmqSocketCore):
    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        super().__init__(sock)
        self._wait_scope: trio.CancelScope | None = None
        self._receiving = False

    def _input_pending(self) -> None:
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def receive_batch(self, limit: int = 256) -> list[list[bytes]]:
        """Wait for input, then return every message already queued (at most ``limit``)."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this ZeroMQ socket")
        self._receiving = True
        try:
            while True:
                batch = self.read_batch(limit)
                if batch:
                    await trio.lowlevel.checkpoint()
                    return batch
                if self.closed:
                    raise trio.ClosedResourceError("the ZeroMQ socket is closed")
                with trio.CancelScope() as scope:
                    self._wait_scope = scope
                    try:
                        await trio.lowlevel.wait_readable(self.fd)
                    finally:
                        self._wait_scope = None
        finally:
            self._receiving = False
