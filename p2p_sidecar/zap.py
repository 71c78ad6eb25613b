"""The bridge's ZAP handler: which gateways may complete a CURVE handshake, answered from Trio.

With CURVE, libzmq asks a ZAP handler (RFC 27) about every incoming
handshake, over an in-process socket at ``inproc://zeromq.zap.01`` in the
same context.  pyzmq's ``zmq.auth`` handlers run a thread of their own; here
the handler is one more task in the bridge server's nursery, reading that
socket with ``TrioZmqSocket``, so there is no thread to start or stop and the
handler lives and dies with the bridge that needs it.

The bridge socket sets ``ZAP_ENFORCE_DOMAIN``: if this handler were ever
missing, libzmq would refuse handshakes rather than let every key in.
"""

from __future__ import annotations

import logging

import trio
import zmq
from zmq.utils import z85

from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.zmq_trio import TrioZmqSocket

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
BRIDGE_ZAP_DOMAIN = b"mcp-p2p-bridge"


class ZapHandler:
    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]], allowed_z85: frozenset[bytes], metrics: SidecarMetrics
    ) -> None:
        self._context = context
        self._allowed = frozenset(z85.decode(key) for key in allowed_z85)
        self._metrics = metrics

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the ZAP endpoint and answer requests until cancelled; started before the bridge binds."""
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        tsock = TrioZmqSocket(sock)
        log.info("bridge CURVE authentication on: %d gateway keys allowed", len(self._allowed))
        try:
            task_status.started()
            while True:
                for frames in await tsock.receive_batch():
                    reply = self.answer(frames)
                    if reply is not None:
                        tsock.send_nowait(reply)
        finally:
            sock.close(linger=0)

    def answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one ZAP request (ROUTER framing: routing id, empty delimiter, then RFC 27)."""
        if len(frames) < 8 or frames[1] != b"":
            log.warning("malformed ZAP request (%d frames) ignored", len(frames))
            return None
        routing_id, _, version, request_id, domain, address, _identity, mechanism, *credentials = frames
        if version != ZAP_VERSION:
            return [routing_id, b"", ZAP_VERSION, request_id, b"400", b"unsupported ZAP version", b"", b""]
        allowed = (
            mechanism == b"CURVE" and domain == BRIDGE_ZAP_DOMAIN and credentials and credentials[0] in self._allowed
        )
        if not allowed:
            self._metrics.auth_denied.inc()
            log.warning(
                "bridge handshake refused from %s (mechanism %s): key not in SIDECAR_BRIDGE_CURVE_CLIENT_KEYS",
                address.decode(errors="replace"),
                mechanism.decode(errors="replace"),
            )
            return [routing_id, b"", ZAP_VERSION, request_id, b"400", b"key not allowed", b"", b""]
        return [routing_id, b"", ZAP_VERSION, request_id, b"200", b"OK", z85.encode(credentials[0]), b""]
