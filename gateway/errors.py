"""The one table that turns a ``BridgeError`` into each face's error shape.

    code               REST status   JSON-RPC (/mcp and /mcp/tools/call)
    unknown_tool       404           -32602 on /mcp (the MCP spec), -32601 on the seed's REST face
    invalid_arguments  422           a tool result with isError: true on /mcp (since 2025-11-25, SEP-1303:
                                     the model reads why and corrects its call); -32602 on /mcp/tools/call
    tool_unavailable   503           a tool result with isError: true (no Retry-After: retrying will not help)
    rate_limited       429           -32000 (the call was not accepted: too many in flight from this client)
    everything else    see below     a tool result with isError: true

A tool that ran and failed, timed out, could not reach the sidecar, or was
called with arguments that do not fit its schema is an error *result* in MCP
terms, so the model sees the message; only requests the server could not even
accept (no such tool, too many calls in flight) are JSON-RPC protocol errors.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

from shared_schema import ErrorCode

JSONRPC_PARSE_ERROR = -32700
JSONRPC_INVALID_REQUEST = -32600
JSONRPC_METHOD_NOT_FOUND = -32601
JSONRPC_INVALID_PARAMS = -32602
JSONRPC_INTERNAL_ERROR = -32603
JSONRPC_SERVER_ERROR = -32000
JSONRPC_MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
JSONRPC_UNSUPPORTED_PROTOCOL_VERSION = -32022

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN_TOOL: 404,
    ErrorCode.INVALID_ARGUMENTS: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.BUSY: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.TOOL_ERROR: 500,
    ErrorCode.BAD_FRAME: 502,
    ErrorCode.VERSION_MISMATCH: 502,
    ErrorCode.INTERNAL: 500,
    ErrorCode.TOOL_UNAVAILABLE: 503,  # not retryable: no Retry-After until the module or sidecar is fixed
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.RATE_LIMITED: 429,
}

RETRYABLE: frozenset[ErrorCode] = frozenset({ErrorCode.BUSY, ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED})
"""Codes a client may retry after a short wait; the REST face adds ``Retry-After``."""

MCP_PROTOCOL_ERRORS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN_TOOL: JSONRPC_INVALID_PARAMS,
    ErrorCode.RATE_LIMITED: JSONRPC_SERVER_ERROR,
}
"""On /mcp these become JSON-RPC errors; every other code is an ``isError`` tool result."""

REST_JSONRPC_ERRORS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN_TOOL: JSONRPC_METHOD_NOT_FOUND,
    ErrorCode.INVALID_ARGUMENTS: JSONRPC_INVALID_PARAMS,
    ErrorCode.RATE_LIMITED: JSONRPC_SERVER_ERROR,
}
"""The seed's ``/mcp/tools/call`` answered unknown tools with -32601; kept for its users."""
