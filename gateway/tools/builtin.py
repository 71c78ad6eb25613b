"""Content tools that need nothing but the gateway.

``hash_content`` does exactly the work of the sidecar's ``p2p_hash_content``
(both call ``shared_schema.content.hash_payload``), so the benchmarks compare
the bridge's cost and nothing else.
"""

from __future__ import annotations

from typing import Any

from gateway.registry import ToolRegistry
from shared_schema import ToolMetadata
from shared_schema.content import HashAlgorithm, PayloadEncoding, cid_v1_raw, hash_payload, payload_bytes

_READ_ONLY = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}


async def echo(message: str, repeat: int = 1) -> dict[str, Any]:
    """Return the message, repeated ``repeat`` times (1-100): a liveness probe for agents."""
    repeat = max(1, min(repeat, 100))
    return {"message": message, "echo": " ".join([message] * repeat)}


async def hash_content(
    data: str, algorithm: HashAlgorithm = "sha256", encoding: PayloadEncoding = "utf-8"
) -> dict[str, Any]:
    """Hash a payload (UTF-8 text or base64 bytes): digest, size and its CIDv1 (raw, sha2-256)."""
    return hash_payload(data, algorithm, encoding)


async def content_cid(data: str, encoding: PayloadEncoding = "utf-8") -> dict[str, Any]:
    """The IPFS CIDv1 (raw codec, sha2-256, base32) of a payload that fits in one block.

    The same CID ``ipfs add --cid-version 1 --raw-leaves`` prints for it.
    """
    raw = payload_bytes(data, encoding)
    return {"cid": cid_v1_raw(raw), "size": len(raw)}


def register_builtin_tools(registry: ToolRegistry) -> None:
    content = ToolMetadata(category="content", runtime="fastapi", timeout_seconds=10.0)
    registry.add_function(echo, metadata=ToolMetadata(category="general", runtime="fastapi"), annotations=_READ_ONLY)
    registry.add_function(hash_content, metadata=content, annotations=_READ_ONLY)
    registry.add_function(content_cid, metadata=content, annotations=_READ_ONLY)
