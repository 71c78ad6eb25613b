"""The libp2p node as the task queue sees it: ``protocol.PeerRpc`` over ``node.Node``.

The queue is written against a small protocol so that it can be proven
without a network; this adapter is the one place where the node's
world (``BridgeError`` codes, ``RpcContext``, the peer table) meets the
queue's (``PeerUnreachable`` / ``PeerOpFailed``, ``BadRequest``, peer ids):

* ``register_op`` serves a queue op on our peer protocol; a ``BadRequest``
  from the handler is answered ``invalid_arguments`` (the peer's body was
  malformed), a ``QueueError`` its own code (e.g. ``unavailable`` when the
  database cannot be written), anything else the node's ``internal`` reply.
* ``request`` calls ``Node.call`` (which dials a known peer that is not
  connected, e.g. an owner that restarted) and sorts its ``BridgeError`` into
  the two outcomes the queue acts on: *no answer* (not connected, stream
  failure, timeout, a node shutting down or too busy to take the request:
  worth trying again later) or *a definite error answer* from the peer.
* ``peers_with_capability`` reads the peer table: live peers only (they
  answered within the gone timeout) that belong to this node's network
  (``Membership``: an outsider would be refused anyway), never this node.
* ``advertise`` replaces the task types in the node's capabilities; peers
  learn the change with their next ping (the capability revision changes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from p2p_sidecar.node.host import Node
from p2p_sidecar.node.peers import LIVE_STATES
from p2p_sidecar.node.rpc_server import RpcContext
from p2p_sidecar.taskqueue.errors import QueueError
from p2p_sidecar.taskqueue.protocol import BadRequest, OpHandler, PeerOpFailed, PeerUnreachable
from shared_schema import BridgeError, ErrorCode

log = logging.getLogger(__name__)

NO_ANSWER = frozenset(
    {
        ErrorCode.UNAVAILABLE,  # cannot open a stream / not connected / the peer is shutting down
        ErrorCode.TIMEOUT,  # no reply within the budget
        ErrorCode.BUSY,  # the peer is at SIDECAR_P2P_MAX_INBOUND_REQUESTS: it did not look at the request
        ErrorCode.BAD_FRAME,  # the reply was not our protocol: the stream is as good as gone
        ErrorCode.VERSION_MISMATCH,
    }
)
"""Codes meaning the op did not run there (or we cannot know): the queue treats the peer as unreachable."""


class NodePeerRpc:
    """``PeerRpc`` for ``QueueService``, on this sidecar's libp2p node."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def local_peer_id(self) -> str:
        return self._node.peer_id

    def register_op(self, op: str, handler: OpHandler) -> None:
        async def serve(context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
            try:
                return await handler(context.peer_id, args)
            except BadRequest as exc:
                log.info("peer %s sent a malformed %s: %s", context.peer_id, op, exc)
                raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"{op}: {exc}") from None
            except QueueError as exc:
                log.warning("%s from peer %s refused: %s", op, context.peer_id, exc.message)
                raise exc.to_bridge() from None

        self._node.rpc.register(op, serve)

    async def request(self, peer_id: str, op: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        try:
            reply = await self._node.call(peer_id, op, body, timeout=timeout)
        except BridgeError as exc:
            if exc.code in NO_ANSWER:
                raise PeerUnreachable(f"{op} to {peer_id}: {exc.code.value}: {exc.message}") from None
            raise PeerOpFailed(f"{op} to {peer_id}: {exc.code.value}: {exc.message}") from None
        if not isinstance(reply, dict):
            raise PeerOpFailed(f"{op} to {peer_id}: the reply is not a map")
        return reply

    def peers_with_capability(self, capability: str) -> list[str]:
        admits = self._node.membership.admits
        return [
            record.peer_id
            for record in self._node.table.in_state(*LIVE_STATES)
            if capability in record.capabilities.get("task_types", ()) and admits(record.peer_id)
        ]

    def advertise(self, capabilities: Iterable[str]) -> None:
        self._node.capabilities.set_task_types(capabilities)
