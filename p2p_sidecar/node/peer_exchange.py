"""Learning peers from peers: the ``peers`` op of our protocol, asked periodically.

Each node answers ``peers`` with the peers it is connected to right now that
serve our protocol (their self-advertised addresses, at most ``MAX_SHARED``), and every
``SIDECAR_PEER_EXCHANGE_INTERVAL`` asks each of its live peers the same,
and once right after connecting to a new one so a fresh node learns the
network in one round trip.  What comes back is checked like any input from
the network (peer ids and TCP multiaddrs only, bounded counts); new peers go
into the table as KNOWN and the connection manager decides whether to dial.

The DHT of py-libp2p 0.8.1 was not used for discovery: measured here,
``find_providers`` returned duplicates and logged read warnings, and one
round trip to a peer we already trust answers the same question.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2p_sidecar.node.addresses import parse_peer_addr
from p2p_sidecar.node.peers import LIVE_STATES, PeerState, PeerTable
from p2p_sidecar.node.rpc_server import RpcContext
from shared_schema import BridgeError

log = logging.getLogger(__name__)

OP = "peers"
MAX_SHARED = 64
MAX_ADDRS_PER_PEER = 8

Requester = Callable[[str, str, dict[str, Any], float], Awaitable[Any]]


def shareable(table: PeerTable, requester: str) -> list[dict[str, Any]]:
    peers = [
        {"peer_id": record.peer_id, "addrs": record.addrs[:MAX_ADDRS_PER_PEER]}
        for record in table.in_state(PeerState.CONNECTED)
        if record.peer_id != requester and record.addrs and record.serves_rpc is not False
    ]
    return peers[:MAX_SHARED]


def merge(table: PeerTable, entries: Any, *, now: float, source: str = "exchange") -> list[str]:
    """Add what a peer told us; returns the ids of peers we did not know.  Invalid entries are skipped."""
    if not isinstance(entries, list):
        return []
    learned: list[str] = []
    for entry in entries[:MAX_SHARED]:
        if not isinstance(entry, dict) or not isinstance(entry.get("peer_id"), str):
            continue
        peer_id = entry["peer_id"]
        raw_addrs = entry.get("addrs")
        if not isinstance(raw_addrs, list):
            continue
        addrs: list[str] = []
        for raw in raw_addrs[:MAX_ADDRS_PER_PEER]:
            if isinstance(raw, str):
                try:
                    addrs.append(parse_peer_addr(raw, peer_id=peer_id).addr)
                except ValueError:
                    continue
        if not addrs:
            continue
        known = table.get(peer_id) is not None
        record = table.ensure(peer_id, now=now, source=source, addrs=() if known else addrs)
        if record is None:
            continue
        if not known:
            learned.append(peer_id)
        elif record.state not in LIVE_STATES:
            for addr in addrs:  # not connected: any address might be the one that works
                if addr not in record.addrs:
                    record.addrs.append(addr)
    return learned


class PeerExchange:
    def __init__(
        self,
        table: PeerTable,
        request: Requester,
        *,
        interval: float,
        timeout: float,
        on_learned: Callable[[], None],
    ) -> None:
        self._table = table
        self._request = request
        self._interval = interval
        self._timeout = timeout
        self._on_learned = on_learned
        self._soon: trio.MemorySendChannel[str] | None = None

    async def handle(self, context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"peers": shareable(self._table, context.peer_id)}

    def exchange_soon(self, peer_id: str) -> None:
        """Ask this (newly connected) peer whom it knows, without waiting for the next round."""
        if self._soon is not None:
            with contextlib.suppress(trio.WouldBlock):  # a full queue: the next round asks this peer anyway
                self._soon.send_nowait(peer_id)

    async def exchange_with(self, peer_id: str, timeout: float | None = None) -> list[str]:
        try:
            reply = await self._request(peer_id, OP, {}, timeout or self._timeout)
        except BridgeError as exc:
            log.debug("peer exchange with %s failed: %s", peer_id, exc.message)
            return []
        learned = merge(self._table, reply.get("peers") if isinstance(reply, dict) else None, now=time.time())
        if learned:
            log.info("learned %d peer(s) from %s", len(learned), peer_id)
            self._on_learned()
        return learned

    async def round(self, timeout: float | None = None) -> list[str]:
        """Ask every connected peer at once; returns the peers learned."""
        learned: list[str] = []

        async def ask(peer_id: str) -> None:
            learned.extend(await self.exchange_with(peer_id, timeout))

        async with trio.open_nursery() as nursery:
            for record in self._table.in_state(PeerState.CONNECTED):
                if record.serves_rpc is not False:  # a peer that does not serve our protocol cannot answer
                    nursery.start_soon(ask, record.peer_id)
        return learned

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[str](64)
        self._soon = send
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_soon, receive)
            task_status.started()
            while True:
                await trio.sleep(self._interval)
                await self.round()

    async def _serve_soon(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async with trio.open_nursery() as nursery:
            async for peer_id in receive:
                nursery.start_soon(self.exchange_with, peer_id)
