"""A ZeroMQ socket driven by Trio, without an extra thread.

pyzmq has no Trio integration, so this is ours.  ZeroMQ exposes one file
descriptor per socket that is *edge-triggered*: it signals "something
changed", not "a message is waiting", and any operation on the socket
(including a send, or reading ``EVENTS``) can consume that edge.  Hence the
two rules this class keeps:

1. The receiver drains with ``NOBLOCK`` until ``zmq.Again`` and re-checks
   ``EVENTS`` before it sleeps in ``trio.lowlevel.wait_readable``.
2. After every send, ``EVENTS`` is re-read; if input is pending, the sleeping
   receiver is woken by cancelling the scope it sleeps in, since the edge it
   waits for may already have been consumed by the send.

Only one task may receive (Trio allows one waiter per fd); sends are
synchronous and never wait, so any task may send.  See docs/bridge.md.
"""

from __future__ import annotations

import trio
import zmq


class TrioZmqSocket:
    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._wait_scope: trio.CancelScope | None = None
        self._receiving = False

    @property
    def raw(self) -> zmq.Socket:
        return self._sock

    def send_nowait(self, frames: list[bytes]) -> None:
        """Queue a multipart message or raise ``zmq.Again`` / ``zmq.ZMQError``; never blocks."""
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        finally:
            self._wake_receiver_if_readable()

    def _wake_receiver_if_readable(self) -> None:
        scope = self._wait_scope
        if scope is not None and self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            scope.cancel()

    async def receive_batch(self, limit: int = 256) -> list[list[bytes]]:
        """Wait for input, then return every message already queued (at most ``limit``)."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this ZeroMQ socket")
        self._receiving = True
        try:
            while True:
                batch: list[list[bytes]] = []
                while len(batch) < limit:
                    try:
                        batch.append(self._sock.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                if batch:
                    await trio.lowlevel.checkpoint()
                    return batch
                if self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    continue
                with trio.CancelScope() as scope:
                    self._wait_scope = scope
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    finally:
                        self._wait_scope = None
        finally:
            self._receiving = False
