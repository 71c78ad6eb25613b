"""A test's own ZeroMQ peer of the bridge: connected only once the handshake is done, not after a nap."""

from __future__ import annotations

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
