"""Bootstrap tools: join a network from given addresses, the configured file, or the environment.

Every bootstrap peer added here joins the node's bootstrap set: dialled now,
and re-dialled with backoff whenever it drops.  Reading a file or the
environment never echoes what it read back to the caller beyond the peer
multiaddrs it accepted; bad entries are reported by line or position only,
so the tools cannot be used to read arbitrary files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import trio
from pydantic import Field

from p2p_sidecar.node.addresses import PeerAddr, parse_peer_addr
from p2p_sidecar.node.host import Node, NodeStartupError, read_bootstrap_file
from p2p_sidecar.node.peers import LIVE_STATES, PeerState
from p2p_sidecar.tools.catalog import ToolCatalog
from p2p_sidecar.tools.peers import MAX_TOOL_SECONDS, Seconds, connect_peer
from shared_schema import BridgeError, ErrorCode
from shared_schema.settings_types import split_list

BOOTSTRAP_ENV = "SIDECAR_BOOTSTRAP_PEERS"


async def dial_all(node: Node, peers: list[PeerAddr], origin: str, timeout: float) -> list[dict[str, Any]]:
    """Add each as a bootstrap peer and dial them all at once; one result per peer."""
    results: list[dict[str, Any]] = []

    async def one(peer: PeerAddr) -> None:
        entry: dict[str, Any] = {"peer_id": peer.peer_id, "multiaddr": peer.full}
        if peer.peer_id == node.peer_id:
            results.append({**entry, "status": "self"})
            return
        node.add_bootstrap(peer, origin)
        try:
            await connect_peer(node, peer.peer_id, peer.addr, timeout=timeout, attempts=1, source="bootstrap")
        except BridgeError as exc:
            results.append({**entry, "status": "failed", "error": exc.message, "code": exc.code.value})
        else:
            results.append({**entry, "status": "connected"})

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(one, peer)
    return results


def connected_count(node: Node) -> int:
    return len(node.table.in_state(PeerState.CONNECTED))


def register_bootstrap_tools(catalog: ToolCatalog, node: Node) -> None:
    async def bootstrap_network(
        bootstrap_nodes: list[str] | None = None,
        timeout: Seconds = 60,
        min_connections: Annotated[int, Field(ge=0, le=1000)] = 3,
        max_connections: Annotated[int, Field(ge=1, le=1000)] = 10,
    ) -> dict[str, Any]:
        """Join the network: dial bootstrap nodes (given, or the configured ones), then peers they know.

        Stops once min_connections peers are connected, nothing new is learned, or timeout passes;
        dials at most max_connections peers in this call.
        """
        started = trio.current_time()
        if bootstrap_nodes:
            peers, bad = _parse_all(bootstrap_nodes)
            if bad:
                raise BridgeError(
                    ErrorCode.INVALID_ARGUMENTS, f"bootstrap_nodes[{', '.join(map(str, bad))}] are not peer multiaddrs"
                )
            origin = "tool"
        else:
            peers = [peer for peer, _ in node.bootstrap.values()]
            origin = "configured"
        results: list[dict[str, Any]] = []
        learned: list[str] = []
        with trio.move_on_after(timeout):
            results = await dial_all(node, peers[:max_connections], origin, timeout)
            dialled = {peer.peer_id for peer in peers[:max_connections]}
            while connected_count(node) < min_connections and len(dialled) < max_connections:
                fresh = await node.exchange.round(timeout=min(timeout, node.settings.p2p_request_timeout))
                learned.extend(fresh)
                candidates = [
                    record
                    for record in node.table
                    if record.state not in LIVE_STATES and record.addrs and record.peer_id not in dialled
                ][: max_connections - len(dialled)]
                if not candidates:
                    break
                async with trio.open_nursery() as nursery:
                    for record in candidates:
                        dialled.add(record.peer_id)
                        nursery.start_soon(_try_dial, node, record.peer_id)
        connected = connected_count(node)
        return {
            "status": "success" if connected >= min_connections else "partial",
            "connected": connected,
            "min_connections": min_connections,
            "peers": sorted(record.peer_id for record in node.table.in_state(PeerState.CONNECTED)),
            "bootstrap": results,
            "learned": learned,
            "elapsed_s": round(trio.current_time() - started, 3),
        }

    async def p2p_bootstrap_from_file(path: str | None = None, timeout: Seconds = 30) -> dict[str, Any]:
        """Dial the bootstrap peers listed in a file (one multiaddr per line, # comments).

        Without path, the file named by SIDECAR_BOOTSTRAP_FILE.
        """
        chosen = path or (str(node.settings.bootstrap_file) if node.settings.bootstrap_file else None)
        if not chosen:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "no path given and SIDECAR_BOOTSTRAP_FILE is not set")
        try:
            peers, bad = await trio.to_thread.run_sync(lambda: read_bootstrap_file(Path(chosen).expanduser()))
        except NodeStartupError as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, str(exc)) from None
        results = await dial_all(node, peers, "file", timeout)
        return {
            "status": "success" if peers else "empty",
            "path": chosen,
            "entries": len(peers),
            "invalid_lines": bad,
            "results": results,
            "connected": sum(1 for result in results if result["status"] == "connected"),
        }

    async def p2p_bootstrap_from_env(timeout: Seconds = 30) -> dict[str, Any]:
        """Dial the bootstrap peers in this sidecar's SIDECAR_BOOTSTRAP_PEERS environment variable, read now."""
        raw = os.environ.get(BOOTSTRAP_ENV, "")
        try:
            entries = split_list(raw)
        except ValueError as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"{BOOTSTRAP_ENV}: {exc}") from None
        peers, bad = _parse_all([str(entry) for entry in entries] if isinstance(entries, list) else [])
        results = await dial_all(node, peers, "env", timeout)
        return {
            "status": "success" if peers else "empty",
            "variable": BOOTSTRAP_ENV,
            "entries": len(peers),
            "invalid_positions": bad,
            "results": results,
            "connected": sum(1 for result in results if result["status"] == "connected"),
        }

    async def p2p_bootstrap_list() -> dict[str, Any]:
        """The bootstrap peers this node keeps connected, where each came from, and its state."""
        now = trio.current_time()
        entries = []
        for peer_id, (peer, origin) in sorted(node.bootstrap.items()):
            record = node.table.get(peer_id)
            entries.append(
                {
                    "peer_id": peer_id,
                    "multiaddr": peer.full,
                    "origin": origin,
                    "status": record.state.value if record else PeerState.KNOWN.value,
                    "last_seen": record.last_seen if record else None,
                    "dial_failures": record.dial_failures if record else 0,
                    "next_dial_in_s": round(max(0.0, record.next_dial_mono - now), 3) if record else 0.0,
                }
            )
        for addr, origin in sorted(node.unresolved_bootstrap.items()):
            entries.append(
                {
                    "peer_id": None,
                    "multiaddr": addr,
                    "origin": origin,
                    "status": "resolving",  # given without /p2p/<id>: the id is learned at the first handshake
                    "last_seen": None,
                    "dial_failures": 0,
                    "next_dial_in_s": 0.0,
                }
            )
        return {"bootstrap": entries, "count": len(entries), "checked_at": time.time()}

    catalog.add(bootstrap_network, category="bootstrap", timeout_seconds=MAX_TOOL_SECONDS)
    catalog.add(p2p_bootstrap_from_file, category="bootstrap", timeout_seconds=MAX_TOOL_SECONDS)
    catalog.add(p2p_bootstrap_from_env, category="bootstrap", timeout_seconds=MAX_TOOL_SECONDS)
    catalog.add(
        p2p_bootstrap_list,
        category="bootstrap",
        timeout_seconds=10.0,
        annotations={"readOnlyHint": True, "openWorldHint": False},
    )


def _parse_all(entries: list[str]) -> tuple[list[PeerAddr], list[int]]:
    peers: list[PeerAddr] = []
    bad: list[int] = []
    for index, entry in enumerate(entries):
        try:
            peers.append(parse_peer_addr(entry))
        except ValueError:
            bad.append(index)
    return peers, bad


async def _try_dial(node: Node, peer_id: str) -> None:
    record = node.table.get(peer_id)
    if record is None:
        return
    try:
        await node.dial(record)
    except BridgeError as exc:
        node.connections.record_failure(record, exc.message)
