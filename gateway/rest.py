"""The REST face the seed's users already call, with the seed's response shapes.

    GET  /tools/list                 -> {tools, count, categories}
    POST /tools/execute/{tool_name}  -> {tool, status: "success", result}
    GET|POST /mcp/tools/list         -> {"jsonrpc": "2.0", "result": {"tools": [...]}}
    POST /mcp/tools/call             -> {"jsonrpc": "2.0", "result": {content, structuredContent, isError}}

Errors use the one table in ``gateway/errors.py``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from gateway.errors import (
    HTTP_STATUS,
    JSONRPC_INVALID_REQUEST,
    JSONRPC_PARSE_ERROR,
    REST_JSONRPC_ERRORS,
    RETRYABLE,
)
from gateway.registry import ToolRegistry
from gateway.router import RuntimeRouter
from shared_schema import BridgeError, ErrorCode, ToolSpec

_CALL_BODY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "arguments": {"type": "object"},
        "jsonrpc": {"type": "string"},
        "id": {"type": ["string", "integer", "null"]},
        "params": {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}}},
    },
}


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _rest_tool(spec: ToolSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "category": spec.metadata.category,
        "runtime": "p2p" if spec.metadata.runs_on_p2p else "local",
        "inputSchema": spec.input_schema,
    }
    if spec.metadata.deprecated:
        entry["deprecated"] = True
        entry["deprecation_message"] = spec.metadata.deprecation_message
    return entry


def _jsonrpc_error(
    request_id: Any, code: int, message: str, data: Any = None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _json({"jsonrpc": "2.0", "id": request_id, "error": error}, status, headers)


def build_rest_router(registry: ToolRegistry, router: RuntimeRouter) -> APIRouter:
    api = APIRouter()

    @api.get("/tools/list", tags=["tools"], summary="List every tool (local and P2P)")
    async def tools_list() -> Response:
        specs = registry.specs()
        return _json(
            {"tools": [_rest_tool(s) for s in specs], "count": len(specs), "categories": registry.categories()}
        )

    @api.post(
        "/tools/execute/{tool_name}",
        tags=["tools"],
        summary="Run a tool with a JSON object of parameters",
        responses={404: {"description": "unknown tool"}, 422: {"description": "invalid arguments"}},
    )
    async def tools_execute(
        tool_name: str, request: Request, parameters: dict[str, Any] = Body(default_factory=dict)
    ) -> Response:
        try:
            result = await router.call(tool_name, parameters, client=_client(request))
        except BridgeError as exc:
            headers = {"Retry-After": "1"} if exc.code in RETRYABLE else None
            body = {"tool": tool_name, "status": "error", "error": exc.info.to_wire()}
            return _json(body, HTTP_STATUS.get(exc.code, 500), headers)
        return _json({"tool": tool_name, "status": "success", "result": result})

    async def mcp_tools_list(request: Request) -> Response:
        request_id = None
        if request.method == "POST":
            try:
                payload = json.loads(await request.body() or b"{}")
            except json.JSONDecodeError as exc:
                return _jsonrpc_error(None, JSONRPC_PARSE_ERROR, f"Parse error: {exc.msg}", status=400)
            request_id = payload.get("id") if isinstance(payload, dict) else None
        tools = [
            {"name": s.name, "description": s.description, "inputSchema": s.input_schema} for s in registry.specs()
        ]
        return _json({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})

    api.add_api_route("/mcp/tools/list", mcp_tools_list, methods=["GET", "POST"], tags=["mcp-rest"])

    @api.post(
        "/mcp/tools/call",
        tags=["mcp-rest"],
        summary="Call a tool with {name, arguments} (or a JSON-RPC tools/call request)",
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": _CALL_BODY_SCHEMA}}}},
    )
    async def mcp_tools_call(request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _jsonrpc_error(None, JSONRPC_PARSE_ERROR, f"Parse error: {exc}", status=400)
        if not isinstance(payload, dict):
            return _jsonrpc_error(None, JSONRPC_INVALID_REQUEST, "Invalid Request: body must be a JSON object")
        request_id = payload.get("id")
        params = payload.get("params") if isinstance(payload.get("params"), dict) else payload
        name, arguments = params.get("name"), params.get("arguments", {})
        if not isinstance(name, str) or not name:
            return _jsonrpc_error(request_id, JSONRPC_INVALID_REQUEST, "Invalid Request: 'name' must be a string")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _jsonrpc_error(
                request_id,
                REST_JSONRPC_ERRORS[ErrorCode.INVALID_ARGUMENTS],
                "Invalid params: 'arguments' must be an object",
            )
        try:
            result = await router.call(name, arguments, client=_client(request))
        except BridgeError as exc:
            code = REST_JSONRPC_ERRORS.get(exc.code)
            if exc.code is ErrorCode.RATE_LIMITED:  # not accepted at all: say so in HTTP terms too
                return _jsonrpc_error(
                    request_id, code or 0, exc.message, exc.info.to_wire(), status=429, headers={"Retry-After": "1"}
                )
            if code is not None:
                return _jsonrpc_error(request_id, code, exc.message, exc.info.to_wire())
            content = [{"type": "text", "text": f"{exc.code.value}: {exc.message}"}]
            error_result = {"content": content, "structuredContent": {"error": exc.info.to_wire()}, "isError": True}
            return _json({"jsonrpc": "2.0", "id": request_id, "result": error_result})
        text = json.dumps(result, separators=(",", ":"), ensure_ascii=False, default=str)
        structured = result if isinstance(result, dict) else {"result": result}
        call_result = {"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": False}
        return _json({"jsonrpc": "2.0", "id": request_id, "result": call_result})

    return api
