"""The loop-independent half of a non-blocking ZeroMQ socket, shared by the Trio and asyncio adapters.

ZeroMQ exposes one file descriptor per socket, and it is *edge-triggered*: it signals "the socket's state
changed", not "a message is waiting", and any operation on the socket (a receive, a send, even reading
``EVENTS``) can consume that edge.  Every event loop has to keep the same two rules, which pyzmq's own
``_future.py`` keeps for asyncio; this class keeps them once, and the two shells
(``p2p_sidecar/zmq_trio.py``, ``gateway/zmq_asyncio.py``) only decide how to sleep and how to be woken:

1. A reader drains with ``NOBLOCK`` until ``zmq.Again`` and re-reads ``EVENTS`` before it gives up, so it never
   sleeps on an edge that was already consumed (``read_batch``).
2. Any send can consume the edge, so after each send ``EVENTS`` is re-read and, if input is pending, the shell's
   ``_input_pending`` hook wakes the reader (``send_nowait``).

Sends never wait: ZeroMQ's queue is bounded by the high-water mark and a full queue raises ``zmq.Again``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import zmq


class ZmqSocketCore:
    """A ZeroMQ socket with the edge-triggered FD's rules applied; subclasses say how a reader is woken."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._fd = sock.FD
        self._closed = False

    @property
    def fd(self) -> int:
        """The descriptor an event loop watches (readable = "look at ``EVENTS`` again")."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    def input_pending(self) -> bool:
        """Whether a message can be received now (reading ``EVENTS`` also re-arms the descriptor's edge)."""
        # EVENTS is an integer option; pyzmq types every option as int | bytes
        return bool(cast(int, self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)

    def send_nowait(self, frames: Sequence[bytes]) -> None:
        """Queue a multipart message or raise ``zmq.Again`` / ``zmq.ZMQError``; never waits."""
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        finally:
            if not self._closed and self.input_pending():
                self._input_pending()

    def read_batch(self, limit: int) -> list[list[bytes]]:
        """Every message already queued, at most ``limit``, without waiting.

        An empty list means the socket has nothing and ``EVENTS`` was re-read after the last ``zmq.Again``, so
        the descriptor's next edge will announce the next message: the caller may sleep on it.
        """
        batch: list[list[bytes]] = []
        while len(batch) < limit and not self._closed:
            try:
                batch.append(self._sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                if not self.input_pending():
                    break
        return batch

    def close(self) -> None:
        """Close the socket at once (``linger=0``); later reads return nothing and sends raise."""
        if not self._closed:
            self._closed = True
            self._sock.close(linger=0)

    def _input_pending(self) -> None:
        """Called after a send that left input pending: wake whoever waits for the descriptor."""
        raise NotImplementedError
