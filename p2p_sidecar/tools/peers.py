"""Peer tools: discover, connect, disconnect, list, metrics, ping, and this node's own identity.

Names and arguments are the ones agents already use (see the P2P tool
surface); every tool returns a JSON object.  A malformed peer id or
multiaddr is ``invalid_arguments``; a peer that cannot be reached is
``unavailable`` or ``timeout``; a well-formed id this node has never heard
of is an ordinary answer (``known: false``), not an error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import trio
from pydantic import Field

from p2p_sidecar.node.addresses import check_peer_id, parse_peer_addr
from p2p_sidecar.node.host import Node
from p2p_sidecar.node.peers import LIVE_STATES, PeerState
from p2p_sidecar.node.wire import PROTOCOL_ID
from p2p_sidecar.tools.catalog import ToolCatalog
from shared_schema import BridgeError, ErrorCode

PeerStatus = Literal["known", "connected", "unreachable", "gone", "disconnected"]
SortKey = Literal["last_seen", "latency", "peer_id", "first_seen"]
Seconds = Annotated[float, Field(gt=0, le=300)]
MAX_TOOL_SECONDS = 310.0
"""Catalog timeout of tools that take a ``timeout`` argument: above its upper bound, so theirs fires first."""


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def valid_peer_id(peer_id: str) -> str:
    try:
        return check_peer_id(peer_id.strip())
    except ValueError as exc:
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"peer_id: {exc}") from None


async def connect_peer(
    node: Node, peer_id: str, addr: str | None, *, timeout: float, attempts: int, source: str, persist: bool = False
) -> dict[str, Any]:
    """Dial a peer (up to ``attempts`` times, 0.5 s, 1 s, 2 s... apart) and report how it went."""
    if peer_id == node.peer_id:
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "that is this node's own peer id")
    record = node.table.ensure(peer_id, now=time.time(), source=source, addrs=[addr] if addr else ())
    if record is None:
        raise BridgeError(ErrorCode.BUSY, "this node's peer table is full of live and bootstrap peers")
    if not record.addrs:
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"no address known for {peer_id}: give a multiaddr")
    if addr and addr in record.addrs:  # the address given now is tried first
        record.addrs.remove(addr)
        record.addrs.insert(0, addr)
    record.persist = record.persist or persist
    if record.state is PeerState.DISCONNECTED:
        record.state = PeerState.KNOWN
    deadline = trio.current_time() + timeout
    error: BridgeError | None = None
    attempt = 0
    for attempt in range(1, max(1, attempts) + 1):
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            break
        try:
            await node.dial(record, timeout=remaining)
        except BridgeError as exc:
            error = exc
            if attempt < attempts:
                await trio.sleep(min(0.5 * 2 ** (attempt - 1), max(0.0, deadline - trio.current_time())))
            continue
        return {
            "status": "connected",
            "peer_id": peer_id,
            "addrs": record.addrs,
            "attempts": attempt,
            "persist": record.persist,
            "capabilities": record.capabilities,
            "version": record.version,
            "rpc": None if record.rpc_role is None else record.rpc_role.value,
        }
    assert error is not None or attempt == 0
    if error is None:
        raise BridgeError(ErrorCode.TIMEOUT, f"no time left to connect to {peer_id}")
    raise BridgeError(error.code, f"{error.message} (after {attempt} attempt(s))", {"peer_id": peer_id})


def register_peer_tools(catalog: ToolCatalog, node: Node) -> None:
    async def peer_discover(
        capability_filter: str | list[str] | None = None,
        max_peers: Annotated[int, Field(ge=1, le=1000)] = 10,
        timeout: Seconds = 30,
        include_metrics: bool = False,
    ) -> dict[str, Any]:
        """Ask connected peers whom they know (peer exchange) and list the peers found.

        capability_filter keeps only peers offering every item: "tool:NAME" (a tool they serve remotely),
        "task:TYPE" (a task type they run), or a bare name for either. Connected peers come first, then by latency.
        """
        learned: list[str] = []
        with trio.move_on_after(timeout):
            learned = await node.exchange.round(timeout=min(timeout, node.settings.p2p_request_timeout))
        node.connections.wake()
        needs = as_list(capability_filter)
        records = node.table.select(capability_filter=needs, sort_by="latency")
        records.sort(key=lambda r: r.state not in LIVE_STATES)
        peers = [
            {**record.summary(include_metrics=include_metrics), "member": node.membership.admits(record.peer_id)}
            for record in records[:max_peers]
        ]
        return {"status": "success", "peers": peers, "count": len(peers), "learned": learned, "known": len(node.table)}

    async def peer_connect(
        peer_id: str,
        multiaddr: str,
        timeout: Seconds | None = None,
        retry_count: Annotated[int, Field(ge=0, le=10)] = 3,
        persist: bool = False,
    ) -> dict[str, Any]:
        """Connect to a peer at a multiaddr (with or without /p2p/<peer_id>), trying up to retry_count times.

        persist=true keeps it connected: re-dialled with backoff whenever it drops, across restarts.
        """
        peer_id = valid_peer_id(peer_id)
        try:
            addr = parse_peer_addr(multiaddr, peer_id=peer_id)
        except ValueError as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"multiaddr: {exc}") from None
        return await connect_peer(
            node,
            peer_id,
            addr.addr,
            timeout=timeout or node.settings.p2p_request_timeout,
            attempts=max(1, retry_count),
            source="manual",
            persist=persist,
        )

    async def peer_disconnect(peer_id: str, reason: str | None = None, graceful: bool = True) -> dict[str, Any]:
        """Hang up on a peer; it is not re-dialled until peer_connect (or it dials us).

        graceful waits up to 2 s for this node's requests to it to finish first.
        """
        peer_id = valid_peer_id(peer_id)
        record = node.table.get(peer_id)
        if record is None:
            return {"status": "unknown_peer", "peer_id": peer_id, "known": False}
        previous = record.state.value
        if graceful:
            with trio.move_on_after(2.0):
                await node.client.wait_idle(peer_id)
        await node.disconnect(peer_id)
        return {"status": "disconnected", "peer_id": peer_id, "previous_status": previous, "reason": reason}

    async def peer_list(
        status_filter: PeerStatus | list[PeerStatus] | None = None,
        capability_filter: str | list[str] | None = None,
        sort_by: SortKey = "last_seen",
        limit: Annotated[int, Field(ge=1, le=10_000)] | None = None,
        offset: Annotated[int, Field(ge=0)] | None = None,
    ) -> dict[str, Any]:
        """List the peers this node knows, with status, addresses, latency and capabilities.

        capability_filter: "tool:NAME", "task:TYPE" or a bare name for either; every item must match.
        """
        records = node.table.select(
            statuses=as_list(status_filter), capability_filter=as_list(capability_filter), sort_by=sort_by
        )
        start = offset or 0
        page = records[start : start + limit] if limit is not None else records[start:]
        return {
            "peers": [{**record.summary(), "member": node.membership.admits(record.peer_id)} for record in page],
            "count": len(page),
            "total": len(records),
            "offset": start,
            "limit": limit,
            "node": {"peer_id": node.peer_id},
        }

    async def peer_metrics(
        peer_id: str, include_history: bool = False, history_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 24
    ) -> dict[str, Any]:
        """Latency and traffic figures for one peer; include_history adds stored latency samples."""
        peer_id = valid_peer_id(peer_id)
        record = node.table.get(peer_id)
        if record is None:
            return {"peer_id": peer_id, "known": False}
        report: dict[str, Any] = {"peer_id": peer_id, "known": True, "status": record.state.value, **record.metrics()}
        if include_history:
            samples = node.history(peer_id, history_hours)
            report["history"] = [{"at": at, "rtt_ms": round(rtt, 3)} for at, rtt in samples]
            report["history_hours"] = history_hours
        return report

    async def peer_ping(
        peer_id: str, count: Annotated[int, Field(ge=1, le=20)] = 3, timeout: Seconds = 10
    ) -> dict[str, Any]:
        """Round-trip time to a peer over this node's protocol (through both event loops), in ms."""
        peer_id = valid_peer_id(peer_id)
        rtts = await node.ping(peer_id, count=count, timeout=timeout)
        return {
            "peer_id": peer_id,
            "protocol": PROTOCOL_ID,
            "count": len(rtts),
            "rtt_ms": [round(rtt, 3) for rtt in rtts],
            "min_ms": round(min(rtts), 3),
            "avg_ms": round(sum(rtts) / len(rtts), 3),
            "max_ms": round(max(rtts), 3),
        }

    async def node_info() -> dict[str, Any]:
        """This node's peer id, listen and announce addresses, protocols, versions and capabilities."""
        return node.info()

    read_only = {"readOnlyHint": True, "openWorldHint": True}
    catalog.add(peer_discover, category="peers", timeout_seconds=MAX_TOOL_SECONDS, annotations=read_only)
    catalog.add(peer_connect, category="peers", timeout_seconds=MAX_TOOL_SECONDS, annotations={"openWorldHint": True})
    catalog.add(peer_disconnect, category="peers", timeout_seconds=30.0, annotations={"openWorldHint": True})
    catalog.add(peer_list, category="peers", timeout_seconds=10.0, annotations=read_only)
    catalog.add(peer_metrics, category="peers", timeout_seconds=10.0, annotations=read_only)
    catalog.add(peer_ping, category="peers", timeout_seconds=MAX_TOOL_SECONDS, annotations=read_only)
    catalog.add(node_info, category="p2p", timeout_seconds=10.0, annotations=read_only)
