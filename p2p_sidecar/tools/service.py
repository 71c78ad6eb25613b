"""The sidecar's first P2P tools: what it knows about itself, and a hashing twin for benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from p2p_sidecar.tools.catalog import ToolCatalog
from shared_schema.content import HashAlgorithm, PayloadEncoding, hash_payload

PeersProvider = Callable[[int], list[dict[str, Any]]]
StatusProvider = Callable[[], dict[str, Any]]


def register_service_tools(catalog: ToolCatalog, *, status: StatusProvider, peers: PeersProvider) -> None:
    started = time.time()

    async def p2p_service_status(include_peers: bool = False, peers_limit: int = 50) -> dict[str, Any]:
        """Report the P2P sidecar's state: uptime, bridge clients, calls handled, its libp2p node, optionally peers."""
        report: dict[str, Any] = {"status": "running", "uptime_s": round(time.time() - started, 3), **status()}
        if include_peers:
            report["peers"] = peers(max(0, min(peers_limit, 1000)))
        return report

    async def p2p_hash_content(
        data: str, algorithm: HashAlgorithm = "sha256", encoding: PayloadEncoding = "utf-8"
    ) -> dict[str, Any]:
        """Hash a payload inside the P2P sidecar: the same work and answer as the gateway's hash_content."""
        return hash_payload(data, algorithm, encoding)

    async def p2p_echo(message: str, delay_ms: int = 0) -> dict[str, Any]:
        """Echo a message from inside the P2P sidecar after an optional delay (0-60000 ms).

        A probe for the bridge and its deadlines.
        """
        await trio.sleep(max(0, min(delay_ms, 60_000)) / 1000)
        return {"message": message, "delay_ms": delay_ms}

    read_only = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
    catalog.add(p2p_service_status, category="p2p", timeout_seconds=10.0, annotations=read_only)
    catalog.add(p2p_echo, category="p2p", timeout_seconds=70.0, annotations=read_only)
    catalog.add(p2p_hash_content, category="content", timeout_seconds=10.0, annotations=read_only)
