"""The response shapes of the REST face and health endpoints, for the OpenAPI document only.

The handlers keep writing their JSON by hand (``rest._json``): building these
models per response would cost more than the responses themselves.  These
classes exist so ``/openapi.json`` states every status each path can answer
and what its body looks like, and the schemathesis run in ``make test``
(``tests/test_openapi_fuzz.py``) holds the handlers to it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    code: str = Field(description="One of shared_schema.ErrorCode: unknown_tool, invalid_arguments, busy, ...")
    message: str
    data: Any = None


def _call_meta() -> Any:
    return Field(
        default=None,
        alias="_meta",
        description="Notes on the call, e.g. io.github.mcp-p2p/ignored_arguments: argument names a collection tool "
        "does not take, dropped rather than refused.",
    )


class ToolSuccess(BaseModel):
    tool: str
    status: Literal["success"]
    result: Any
    meta: dict[str, Any] | None = _call_meta()


class ToolFailure(BaseModel):
    tool: str
    status: Literal["error"]
    error: ErrorBody


class Refusal(BaseModel):
    """A request refused before any handler ran: authentication, body size or time, Host/Origin."""

    error: str


class ParseFailure(BaseModel):
    """FastAPI's answer to a body that is not JSON at all."""

    detail: Any


class Unprocessable(RootModel[ToolFailure | ParseFailure]):
    """422: arguments the tool's schema rejects, or a body that is not a JSON object."""


class TooLarge(RootModel[ToolFailure | Refusal]):
    """413: a request body over GATEWAY_MAX_BODY_BYTES, or a result over the bridge frame limit."""


class RestTool(_Open):
    name: str
    description: str
    category: str
    runtime: Literal["local", "p2p"]
    inputSchema: dict[str, Any]
    deprecated: bool | None = None
    deprecation_message: str | None = None


class ToolList(BaseModel):
    tools: list[RestTool]
    count: int
    categories: dict[str, list[str]]


class BridgeHealth(_Open):
    enabled: bool
    state: str | None = None
    reason: str | None = None
    endpoint: str | None = None
    sidecar: dict[str, Any] | None = None


class Health(_Open):
    status: Literal["ok", "stopping"]
    version: str
    ready: bool
    tools: int
    bridge: BridgeHealth


class JsonRpcErrorObject(BaseModel):
    code: int
    message: str
    data: Any = None


class JsonRpcError(BaseModel):
    jsonrpc: Literal["2.0"]
    id: Any = None
    error: JsonRpcErrorObject


class McpTool(_Open):
    name: str
    description: str
    inputSchema: dict[str, Any]


class McpToolList(BaseModel):
    tools: list[McpTool]


class McpToolsListResponse(BaseModel):
    jsonrpc: Literal["2.0"]
    id: Any = None
    result: McpToolList


class CallResult(BaseModel):
    content: list[dict[str, Any]]
    structuredContent: dict[str, Any]
    isError: bool
    meta: dict[str, Any] | None = _call_meta()


class McpCallResult(BaseModel):
    jsonrpc: Literal["2.0"]
    id: Any = None
    result: CallResult


class McpCallAnswer(RootModel[McpCallResult | JsonRpcError]):
    """A tools/call result (isError tells a tool failure), or a JSON-RPC error for a call not accepted."""


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}

BODY_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Refusal, "description": "missing or invalid bearer token (when authentication is on)"},
    408: {"model": Refusal, "description": "the body did not arrive within GATEWAY_BODY_TIMEOUT"},
    413: {"model": Refusal, "description": "body larger than GATEWAY_MAX_BODY_BYTES"},
}
"""Answers any path taking a body can give before its handler runs."""

TOOL_FAILURES: dict[int | str, dict[str, Any]] = {
    **BODY_REFUSALS,
    400: {"model": ParseFailure, "description": "the body could not be parsed"},
    404: {"model": ToolFailure, "description": "unknown tool"},
    413: {"model": TooLarge, "description": "body over GATEWAY_MAX_BODY_BYTES, or result over the frame limit"},
    422: {"model": Unprocessable, "description": "arguments do not fit the tool's schema, or nest too deep"},
    429: {"model": ToolFailure, "description": "too many calls in flight from this client", "headers": RETRY_AFTER},
    499: {"model": ToolFailure, "description": "the call was cancelled"},
    500: {"model": ToolFailure, "description": "the tool itself raised"},
    502: {"model": ToolFailure, "description": "the sidecar answered with a frame that could not be used"},
    503: {"model": ToolFailure, "description": "P2P sidecar unavailable or busy", "headers": RETRY_AFTER},
    504: {"model": ToolFailure, "description": "the tool did not finish before its deadline"},
}
"""Every status ``POST /tools/execute/{tool_name}`` can answer (gateway/errors.py has the table)."""

JSONRPC_FAILURES: dict[int | str, dict[str, Any]] = {
    **BODY_REFUSALS,
    400: {"model": JsonRpcError, "description": "not JSON (-32700) or not a valid request for this path (-32600)"},
    429: {"model": JsonRpcError, "description": "too many calls in flight from this client", "headers": RETRY_AFTER},
}
