"""The REST face the seed's users already call, with the seed's response shapes.

    GET  /tools/list                 -> {tools, count, categories}
    POST /tools/execute/{tool_name}  -> {tool, status: "success", result}
    GET|POST /mcp/tools/list         -> {"jsonrpc": "2.0", "result": {"tools": [...]}}
    POST /mcp/tools/call             -> {"jsonrpc": "2.0", "result": {content, structuredContent, isError}}

Errors use the one table in ``gateway/errors.py``.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import (
    HTTP_STATUS,
    JSONRPC_INVALID_REQUEST,
    JSONRPC_PARSE_ERROR,
    REST_JSONRPC_ERRORS,
    RETRYABLE,
)
from gateway.registry import ToolRegistry
from gateway.rest_models import (
    BODY_REFUSALS,
    JSONRPC_FAILURES,
    TOOL_FAILURES,
    McpCallAnswer,
    McpToolsListResponse,
    ToolList,
    ToolSuccess,
)
from gateway.results import encode_json
from gateway.router import RuntimeRouter
from shared_schema import BridgeError, ErrorCode, ToolSpec
from shared_schema.function_tool import call_notes

_ID_SCHEMA = {"type": ["string", "number", "null"]}
_ARGUMENTS_SCHEMA = {"type": ["object", "null"]}
_ENVELOPE_PROPERTIES: dict[str, Any] = {
    "jsonrpc": {"type": "string", "enum": ["2.0"]},
    "id": _ID_SCHEMA,
    "method": {"type": "string"},
}
_LIST_BODY_SCHEMA = {"type": "object", "properties": _ENVELOPE_PROPERTIES}
_CALL_BODY_SCHEMA = {
    "type": "object",
    "properties": {
        **_ENVELOPE_PROPERTIES,
        "name": {"type": "string", "minLength": 1},
        "arguments": _ARGUMENTS_SCHEMA,
        "params": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1}, "arguments": _ARGUMENTS_SCHEMA},
            "required": ["name"],
        },
    },
    "anyOf": [{"required": ["name"]}, {"required": ["params"]}],
}
"""What ``/mcp/tools/call`` accepts: the seed's ``{name, arguments}`` or a JSON-RPC ``tools/call`` request.

``_check_call`` enforces exactly this, so the document and the handler cannot disagree."""


class _BadRequest(ValueError):
    """A body that does not match the documented request schema; carries the JSON-RPC code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; JSON does not


def _parse(raw: bytes) -> Any:
    """JSON, strictly: raises ValueError (incl. nesting past the recursion limit) for anything else."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _check_envelope(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise _BadRequest(JSONRPC_INVALID_REQUEST, "Invalid Request: body must be a JSON object")
    if "jsonrpc" in payload and payload["jsonrpc"] != "2.0":
        raise _BadRequest(JSONRPC_INVALID_REQUEST, "Invalid Request: 'jsonrpc' must be \"2.0\"")
    request_id = payload.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, str | int | float)):
        raise _BadRequest(JSONRPC_INVALID_REQUEST, "Invalid Request: 'id' must be a string, a number or null")
    if "method" in payload and not isinstance(payload["method"], str):
        raise _BadRequest(JSONRPC_INVALID_REQUEST, "Invalid Request: 'method' must be a string")
    return payload


def _check_target(holder: dict[str, Any], required: bool) -> tuple[str | None, dict[str, Any]]:
    name, arguments = holder.get("name"), holder.get("arguments")
    if (required or "name" in holder) and (not isinstance(name, str) or not name):
        raise _BadRequest(JSONRPC_INVALID_REQUEST, "Invalid Request: 'name' must be a non-empty string")
    if arguments is not None and not isinstance(arguments, dict):
        raise _BadRequest(
            REST_JSONRPC_ERRORS[ErrorCode.INVALID_ARGUMENTS], "Invalid params: 'arguments' must be an object"
        )
    return name, arguments or {}


def _check_call(payload: Any) -> tuple[str, dict[str, Any]]:
    """The tool name and arguments of a call body, or ``_BadRequest``."""
    payload = _check_envelope(payload)
    if "params" in payload:
        params = payload["params"]
        if not isinstance(params, dict):
            raise _BadRequest(JSONRPC_INVALID_REQUEST, "Invalid Request: 'params' must be an object")
        _check_target(payload, required=False)  # top-level fields, if any, must still be well-formed
        name, arguments = _check_target(params, required=True)
    else:
        name, arguments = _check_target(payload, required=True)
    assert name is not None
    return name, arguments


def _json_text(content: Any) -> str:
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False, default=str)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json_text(content).encode(), status_code=status, media_type="application/json", headers=headers)


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

    @api.get(
        "/tools/list",
        tags=["tools"],
        summary="List every tool (local and P2P)",
        responses={200: {"model": ToolList}, 401: BODY_REFUSALS[401]},
    )
    async def tools_list() -> Response:
        await registry.prepare_listing()
        specs = registry.specs()
        return _json(
            {"tools": [_rest_tool(s) for s in specs], "count": len(specs), "categories": registry.categories()}
        )

    @api.post(
        "/tools/execute/{tool_name}",
        tags=["tools"],
        summary="Run a tool with a JSON object of parameters",
        responses={200: {"model": ToolSuccess}, **TOOL_FAILURES},
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
            }
        },
    )
    async def tools_execute(tool_name: str, request: Request) -> Response:
        # The body is parsed here rather than by a FastAPI Body() parameter: dependency solving and
        # pydantic validation of a free-form object cost more than the tool call itself on the hot path.
        raw = await request.body()
        try:
            parameters = _parse(raw) if raw else {}
        except (ValueError, UnicodeDecodeError) as exc:
            parameters = exc
        if not isinstance(parameters, dict):
            reason = f"not JSON: {parameters}" if isinstance(parameters, Exception) else "not a JSON object"
            error = {"code": ErrorCode.INVALID_ARGUMENTS.value, "message": f"the request body is {reason}"}
            return _json({"tool": tool_name, "status": "error", "error": error}, 422)
        try:
            with call_notes() as notes:
                result = await router.call(tool_name, parameters, client=_client(request))
                encoded = encode_json(result)
        except BridgeError as exc:
            headers = {"Retry-After": "1"} if exc.code in RETRYABLE else None
            body = {"tool": tool_name, "status": "error", "error": exc.info.to_wire()}
            return _json(body, HTTP_STATUS.get(exc.code, 500), headers)
        # The result is encoded once (above) and spliced into the envelope.
        head: dict[str, Any] = {"tool": tool_name, "status": "success"}
        if notes:
            head["_meta"] = notes
        return Response(f'{_json_text(head)[:-1]},"result":{encoded}}}'.encode(), media_type="application/json")

    async def tools_listing(request_id: Any) -> Response:
        await registry.prepare_listing()
        tools = [
            {"name": s.name, "description": s.description, "inputSchema": s.input_schema} for s in registry.specs()
        ]
        return _json({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})

    async def mcp_tools_list(request: Request) -> Response:
        if request.method != "POST":
            return await tools_listing(None)
        try:
            payload = _parse(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            return _jsonrpc_error(None, JSONRPC_PARSE_ERROR, f"Parse error: {exc}", status=400)
        try:
            payload = _check_envelope(payload)
        except _BadRequest as exc:
            return _jsonrpc_error(None, exc.code, str(exc), status=400)
        return await tools_listing(payload.get("id"))

    # One route answers both methods (so a 405 lists both in Allow); the two after it are never reached and
    # exist so the OpenAPI document has one operation per method, each with its own id and request body.
    api.add_api_route("/mcp/tools/list", mcp_tools_list, methods=["GET", "POST"], include_in_schema=False)
    api.add_api_route(
        "/mcp/tools/list",
        mcp_tools_list,
        methods=["GET"],
        tags=["mcp-rest"],
        summary="Every tool, as a JSON-RPC tools/list result",
        operation_id="mcp_tools_list_get",
        responses={200: {"model": McpToolsListResponse}, 401: BODY_REFUSALS[401]},
    )
    api.add_api_route(
        "/mcp/tools/list",
        mcp_tools_list,
        methods=["POST"],
        tags=["mcp-rest"],
        summary="Every tool, answering a JSON-RPC tools/list request (its id is echoed)",
        operation_id="mcp_tools_list_post",
        openapi_extra={
            "requestBody": {"required": False, "content": {"application/json": {"schema": _LIST_BODY_SCHEMA}}}
        },
        responses={200: {"model": McpToolsListResponse}, **JSONRPC_FAILURES},
    )

    @api.post(
        "/mcp/tools/call",
        tags=["mcp-rest"],
        summary="Call a tool with {name, arguments} (or a JSON-RPC tools/call request)",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _CALL_BODY_SCHEMA}}}
        },
        responses={200: {"model": McpCallAnswer}, **JSONRPC_FAILURES},
    )
    async def mcp_tools_call(request: Request) -> Response:
        try:
            payload = _parse(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return _jsonrpc_error(None, JSONRPC_PARSE_ERROR, f"Parse error: {exc}", status=400)
        try:
            name, arguments = _check_call(payload)
        except _BadRequest as exc:
            request_id = payload.get("id") if isinstance(payload, dict) else None
            valid_id = request_id is None or (
                isinstance(request_id, str | int | float) and not isinstance(request_id, bool)
            )
            return _jsonrpc_error(request_id if valid_id else None, exc.code, str(exc), status=400)
        request_id = payload.get("id")
        try:
            with call_notes() as notes:
                result = await router.call(name, arguments, client=_client(request))
                text = encode_json(result)
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
        decoded = json.loads(text)
        structured = decoded if isinstance(decoded, dict) else {"result": decoded}
        call_result = {"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": False}
        if notes:
            call_result["_meta"] = notes
        return _json({"jsonrpc": "2.0", "id": request_id, "result": call_result})

    return api
