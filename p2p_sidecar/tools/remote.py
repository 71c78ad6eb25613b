"""``p2p_remote_call_tool``: run a tool of another node's gateway, over our libp2p protocol.

A -> B: this sidecar sends ``call_tool`` to node B; B checks its
``SIDECAR_REMOTE_TOOLS_ALLOW`` and hands the call to B's gateway over B's
bridge; the result comes back the same way.  The target is named by peer id
(a peer this node knows) or by multiaddr (dialled first), or both.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import Field

from p2p_sidecar.node.addresses import parse_peer_addr
from p2p_sidecar.node.host import Node
from p2p_sidecar.node.peers import LIVE_STATES
from p2p_sidecar.node.remote_tools import RemoteToolServer
from p2p_sidecar.tools.catalog import ToolCatalog
from p2p_sidecar.tools.peers import MAX_TOOL_SECONDS, connect_peer, valid_peer_id
from shared_schema import BridgeError, ErrorCode


def register_remote_tools(catalog: ToolCatalog, node: Node) -> None:
    async def p2p_remote_call_tool(
        tool_name: str,
        args: dict[str, Any] | None = None,
        remote_multiaddr: str | None = None,
        remote_peer_id: str | None = None,
        timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0,
    ) -> dict[str, Any]:
        """Run a tool of another node's gateway and return its result.

        Name the node by remote_peer_id (a known peer), remote_multiaddr (/ip4/.../tcp/.../p2p/<id>), or both.
        The other node must allow the tool in its SIDECAR_REMOTE_TOOLS_ALLOW.
        """
        started = time.perf_counter()
        peer_id = _target(node, remote_multiaddr, remote_peer_id)
        if remote_multiaddr:
            record = node.table.get(peer_id)
            if record is None or record.state not in LIVE_STATES:
                address = parse_peer_addr(remote_multiaddr, peer_id=peer_id).addr
                await connect_peer(node, peer_id, address, timeout=timeout_s, attempts=1, source="manual")
        remaining = max(0.001, timeout_s - (time.perf_counter() - started))
        try:
            result = await node.call(
                peer_id, RemoteToolServer.OP, {"tool": tool_name, "args": args or {}}, timeout=remaining
            )
        except BridgeError as exc:
            code = ErrorCode.FORBIDDEN if exc.code is ErrorCode.UNKNOWN_TOOL else exc.code
            data = {"remote_peer_id": peer_id, "tool": tool_name}
            if isinstance(exc.data, dict):
                data.update(exc.data)
            raise BridgeError(code, f"remote call of {tool_name!r} on {peer_id}: {exc.message}", data) from None
        return {
            "status": "success",
            "tool": tool_name,
            "remote_peer_id": peer_id,
            "result": result,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    catalog.add(
        p2p_remote_call_tool, category="p2p", timeout_seconds=MAX_TOOL_SECONDS, annotations={"openWorldHint": True}
    )


def _target(node: Node, remote_multiaddr: str | None, remote_peer_id: str | None) -> str:
    if not remote_multiaddr and not remote_peer_id:
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "name the remote node: remote_peer_id or remote_multiaddr")
    peer_id = remote_peer_id
    if peer_id is not None and node.table.get(peer_id) is None:  # a known peer's id was checked when it was added
        peer_id = valid_peer_id(peer_id)
    if remote_multiaddr:
        try:
            return parse_peer_addr(remote_multiaddr, peer_id=peer_id).peer_id
        except ValueError as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"remote_multiaddr: {exc}") from None
    assert peer_id is not None
    if peer_id == node.peer_id:
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "remote_peer_id is this node's own id")
    return peer_id
