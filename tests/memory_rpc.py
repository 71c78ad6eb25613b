"""An in-memory ``PeerRpc`` for unit tests of the distribution layer (never for end-to-end tests).

Bodies and replies go through a JSON round trip, as they would through a
real wire, so a handler never shares objects with its caller.  A peer can be
taken down: its requests and requests to it then fail with
``PeerUnreachable``, like a killed process.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import trio

from p2p_sidecar.taskqueue.protocol import BadRequest, OpHandler, PeerOpFailed, PeerUnreachable


class MemoryNetwork:
    def __init__(self) -> None:
        self.peers: dict[str, MemoryPeer] = {}
        self.down: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []

    def join(self, peer_id: str) -> MemoryPeer:
        peer = MemoryPeer(self, peer_id)
        self.peers[peer_id] = peer
        self.down.discard(peer_id)
        return peer


class MemoryPeer:
    def __init__(self, network: MemoryNetwork, peer_id: str) -> None:
        self._network = network
        self._peer_id = peer_id
        self.handlers: dict[str, OpHandler] = {}
        self.capabilities: set[str] = set()

    @property
    def local_peer_id(self) -> str:
        return self._peer_id

    def register_op(self, op: str, handler: OpHandler) -> None:
        self.handlers[op] = handler

    def _reachable(self, peer_id: str) -> MemoryPeer:
        target = self._network.peers.get(peer_id)
        if target is None or peer_id in self._network.down or self._peer_id in self._network.down:
            raise PeerUnreachable(f"{peer_id} is not connected")
        return target

    async def request(self, peer_id: str, op: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        self._network.requests.append((self._peer_id, peer_id, op))
        target = self._reachable(peer_id)
        handler = target.handlers.get(op)
        if handler is None:
            raise PeerOpFailed(f"{peer_id} does not serve {op}")
        wire_body = json.loads(json.dumps(body))
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(timeout):
            try:
                reply = await handler(self._peer_id, wire_body)
            except BadRequest as exc:
                raise PeerOpFailed(f"{op}: {exc}") from None
            self._reachable(peer_id)  # a peer that died while answering sends nothing
            return json.loads(json.dumps(reply))
        raise PeerUnreachable(f"{op} to {peer_id}: no answer within {timeout}s")

    def peers_with_capability(self, capability: str) -> list[str]:
        return [
            peer_id
            for peer_id, peer in self._network.peers.items()
            if peer_id != self._peer_id and peer_id not in self._network.down and capability in peer.capabilities
        ]

    def advertise(self, capabilities: Iterable[str]) -> None:
        self.capabilities = set(capabilities)
