"""A test's own ZeroMQ peer of the bridge: connected only once the handshake is done, not after a nap."""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message


def connect_when_ready(sock: zmq.Socket[bytes], endpoint: str, timeout: float = 5.0) -> None:
    """Connect ``sock`` and return once its ZMTP handshake with ``endpoint`` succeeded (its monitor says so)."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(endpoint)
        if not monitor.poll(int(timeout * 1000)):
            raise TimeoutError(f"no ZMTP handshake with {endpoint} within {timeout}s")
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def rebind_router(context: zmq.Context[zmq.Socket[bytes]], port: int, timeout: float = 5.0) -> zmq.Socket[bytes]:
    """A new ROUTER on the loopback port a closed one held; libzmq releases the port from its I/O thread, a moment
    after ``close``, so the bind is retried while the address is still in use."""
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    deadline = time.monotonic() + timeout
    while True:
        try:
            router.bind(f"tcp://127.0.0.1:{port}")
            return router
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                router.close(linger=0)
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def reconnection_of(sock: zmq.Socket[bytes], timeout: float = 5.0) -> Iterator[None]:
    """Around a peer's restart: leave the block only once ``sock`` has finished a fresh ZMTP handshake.

    Until libzmq's I/O thread notices that the old peer is gone, a DEALER still
    routes sends into the old connection's pipe, and they are dropped with it; a
    test that sends right after the restart can lose messages that way, which is
    ZeroMQ's behaviour and not what the test is about.
    """
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        yield
        if not monitor.poll(int(timeout * 1000)):
            raise TimeoutError(f"no new ZMTP handshake within {timeout}s of the peer's restart")
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
