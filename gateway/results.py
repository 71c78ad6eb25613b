"""A tool's result as JSON: the one encoder both faces use, and the MCP content a tool may return.

A result that cannot be JSON (a circular structure, NaN or infinity, nesting
past the recursion limit) is the tool's failure, reported like any other
(``tool_error``: an ``isError`` result on MCP, 500 on REST), never a crash of
the request.  Objects JSON has no form for (datetimes, bytes, ...) are written
as their ``str()``, as before.

A tool may answer with MCP content rather than data: a result shaped exactly
like a ``CallToolResult`` (only the keys ``content``, ``structuredContent``,
``isError`` and ``_meta``, and ``content`` a list of content blocks with a
known ``type``) is passed to MCP clients as it is, so a tool can return
images, audio, embedded resources or several blocks, from the gateway or from
a sidecar across the bridge.  Any other result is data: one text block with
its JSON plus ``structuredContent``.
"""

from __future__ import annotations

import json
from typing import Any

from shared_schema import BridgeError, ErrorCode

CONTENT_TYPES = frozenset({"text", "image", "audio", "resource", "resource_link"})
_RESULT_KEYS = frozenset({"content", "structuredContent", "isError", "_meta"})


def encode_json(value: Any) -> str:
    """Compact JSON text of ``value``, or ``BridgeError(TOOL_ERROR)`` saying why it has none."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BridgeError(ErrorCode.TOOL_ERROR, f"the tool's result cannot be encoded as JSON: {reason}") from None


def is_call_tool_result(value: Any) -> bool:
    """Whether ``value`` is MCP content (a ``CallToolResult`` in its wire shape) rather than data."""
    if not isinstance(value, dict) or "content" not in value or not value.keys() <= _RESULT_KEYS:
        return False
    content = value["content"]
    return isinstance(content, list) and all(
        isinstance(block, dict) and block.get("type") in CONTENT_TYPES for block in content
    )
