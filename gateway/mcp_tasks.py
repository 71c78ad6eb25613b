"""The MCP Tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663) served from the sidecar's task queue.

A client that declares the extension on a 2026-07-28 ``tools/call`` of a tool
that supports tasks gets a task handle at once; the call itself becomes a
durable task of type ``tool`` in the sidecar's queue (``task_submit`` over the
bridge, answered after the queue committed it to SQLite, so ``tasks/get``
finds it from the first poll).  The queue runs it on whichever capable node
claims it; it survives ``kill -9`` of this gateway and of the sidecar; and
any gateway attached to the owning sidecar answers ``tasks/get`` for it,
because nothing about the task lives in a gateway.

Mapping, in one place:

* **ids**: the MCP ``taskId`` *is* the queue's ``task_id`` (a random 128-bit
  id the queue mints), so ``task_status`` / ``task_list`` show MCP tasks like
  any other (tagged ``mcp``), and ``tasks/get`` answers for any ``tool`` task,
  however it was submitted.
* **status**: queued and running -> ``working``; completed -> ``completed``
  with the tool's ``CallToolResult``; failed -> ``completed`` with an
  ``isError`` result when the blocking call would have returned one (the tool
  raised, timed out, got bad arguments), ``failed`` with the JSON-RPC error
  when it would have been a protocol error (unknown tool); cancelled ->
  ``cancelled``.
* **progress**: the queue's ``progress`` field on a task view (message,
  done/total, from the worker that runs it, on any peer) becomes
  ``statusMessage``; ``lastUpdatedAt`` is the latest of its timestamps.

Which tools: ``ToolMetadata.task_support`` when the tool declares it, else
``optional`` for tools whose timeout is at least
``GATEWAY_MCP_TASK_MIN_TIMEOUT`` and for ``p2p_remote_call_tool``, and
``forbidden`` for the queue's own tools and everything else.  A client that
does not declare the extension gets the blocking call, or ``-32021`` (missing
required client capability) for a ``required`` tool.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding, compose_tool_call_handler
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict

from gateway.errors import (
    JSONRPC_INTERNAL_ERROR,
    JSONRPC_INVALID_PARAMS,
    JSONRPC_METHOD_NOT_FOUND,
    JSONRPC_MISSING_REQUIRED_CLIENT_CAPABILITY,
    MCP_PROTOCOL_ERRORS,
)
from gateway.registry import ToolRegistry
from shared_schema import BridgeError, ErrorCode, ErrorInfo, ToolSpec
from shared_schema.tool_metadata import TaskSupport

log = logging.getLogger(__name__)

EXTENSION_ID = "io.modelcontextprotocol/tasks"
MCP_TAG = "mcp"
QUEUE_TOOL_PREFIXES = ("task_", "queue_", "workflow_")
ALWAYS_OPTIONAL = frozenset({"p2p_remote_call_tool"})
UNAVAILABLE_POLL_FACTOR = 5
"""While the sidecar cannot be reached, clients are asked to poll this many times less often."""

QueueCall = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Calls one of the sidecar queue's tools (``task_submit``, ``task_status``, ...) and returns its result."""


def task_support(spec: ToolSpec, min_timeout: float) -> TaskSupport:
    """Whether ``spec`` may, must or must not run as a task (see the module docstring)."""
    declared = spec.metadata.task_support
    if declared is not None:
        return declared
    if spec.name.startswith(QUEUE_TOOL_PREFIXES):
        return "forbidden"
    if spec.name in ALWAYS_OPTIONAL or spec.metadata.timeout_seconds >= min_timeout:
        return "optional"
    return "forbidden"


class TaskIdParams(types.RequestParams):
    """Params of tasks/get, tasks/cancel and tasks/update: the task's id (and for update, input responses)."""

    model_config = ConfigDict(extra="allow")
    task_id: str


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _principal(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """Who is asking, when the request was authenticated with a token that names someone (OAuth)."""
    request = ctx.request
    user = request.scope.get("user") if request is not None and hasattr(request, "scope") else None
    if not isinstance(user, AuthenticatedUser):
        return None
    identity = json.dumps(authorization_context(user), sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    extensions = capabilities.extensions if capabilities is not None else None
    return extensions is not None and EXTENSION_ID in extensions


def _missing_capability(what: str) -> MCPError:
    data: dict[str, Any] = {"requiredCapabilities": {"extensions": {EXTENSION_ID: {}}}}
    return MCPError(
        code=JSONRPC_MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"Missing required client capability: {what} needs the {EXTENSION_ID} extension",
        data=data,
    )


class QueueTasksExtension(Extension):
    """The Tasks extension through the SDK's extension interface (SEP-2133): three methods and a call interceptor."""

    identifier = EXTENSION_ID

    def __init__(
        self,
        registry: ToolRegistry,
        queue: QueueCall,
        *,
        to_result: Callable[[Any], types.CallToolResult],
        error_result: Callable[[BridgeError], types.CallToolResult],
        poll_interval: float,
        min_timeout: float,
    ) -> None:
        self._registry = registry
        self._queue = queue
        self._to_result = to_result
        self._error_result = error_result
        self._poll_ms = max(1, round(poll_interval * 1000))
        self._min_timeout = min_timeout

    def methods(self) -> Sequence[MethodBinding]:
        modern = frozenset(MODERN_PROTOCOL_VERSIONS)
        return [
            MethodBinding("tasks/get", TaskIdParams, self._get, protocol_versions=modern),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel, protocol_versions=modern),
            MethodBinding("tasks/update", TaskIdParams, self._update, protocol_versions=modern),
        ]

    def support_of(self, name: str) -> TaskSupport:
        route = self._registry.route(name)
        return task_support(route.spec, self._min_timeout) if route is not None else "forbidden"

    # -- tools/call ---------------------------------------------------------------------------------
    async def intercept_tool_call(
        self, params: types.CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        await self._registry.resolve(params.name)
        support = self.support_of(params.name)
        if support == "forbidden":
            return await call_next(ctx)
        if not _declared(ctx):
            if support == "required":
                raise _missing_capability(f"tool {params.name!r} runs only as a task and")
            return await call_next(ctx)
        try:
            return await self._create(params, ctx)
        except BridgeError as exc:
            if support == "required":  # no queue to take it: say so as the blocking call would (isError)
                return self._dump(self._error_result(exc))
            log.info("tools/call %s runs as a plain call: the task queue did not take it (%s)", params.name, exc)
            return await call_next(ctx)

    async def _create(self, params: types.CallToolRequestParams, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        route = self._registry.route(params.name)
        assert route is not None
        metadata: dict[str, Any] = {"mcp": {"tool": params.name}}
        owner = _principal(ctx)
        if owner is not None:
            metadata["mcp"]["owner"] = owner
        submit = {
            "task_type": "tool",
            "payload": {"tool": params.name, "arguments": params.arguments or {}},
            "tags": [MCP_TAG],
            "timeout": route.spec.metadata.timeout_seconds,
            "metadata": metadata,
        }
        view = await self._queue("task_submit", submit)
        log.info("tools/call %s became task %s", params.name, view.get("task_id"))
        return {"resultType": "task", **self._task(view)}

    # -- tasks/get, tasks/cancel, tasks/update ------------------------------------------------------
    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        self._require(ctx, "tasks/get")
        try:
            view = await self._view(params.task_id, ctx)
        except BridgeError as exc:
            if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.BUSY, ErrorCode.TIMEOUT, ErrorCode.TOOL_UNAVAILABLE):
                return self._unreachable(params.task_id, exc)
            raise
        return self._task(view, detailed=True)

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        self._require(ctx, "tasks/cancel")
        await self._view(params.task_id, ctx)  # unknown ids and other callers' tasks are refused first
        try:
            await self._queue("task_cancel", {"task_id": params.task_id, "reason": "cancelled by the MCP client"})
        except BridgeError as exc:
            if exc.code is not ErrorCode.CONFLICT:  # already ended: cancellation is cooperative, still acknowledged
                raise self._protocol_error(exc) from None
        return {}

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """No task here ever asks for input, so every input response is for a key that is not outstanding."""
        self._require(ctx, "tasks/update")
        await self._view(params.task_id, ctx)
        return {}

    def _require(self, ctx: ServerRequestContext[Any, Any], method: str) -> None:
        if not _declared(ctx):
            raise _missing_capability(method)

    async def _view(self, task_id: str, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """The queue's view of an MCP-visible task, or the extension's -32602 for one that is not."""
        try:
            view: dict[str, Any] = await self._queue("task_status", {"task_id": task_id})
        except BridgeError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise MCPError(code=JSONRPC_INVALID_PARAMS, message="Failed to retrieve task: Task not found") from None
            raise
        owner = ((view.get("metadata") or {}).get("mcp") or {}).get("owner")
        if view.get("task_type") != "tool" or (owner is not None and owner != _principal(ctx)):
            raise MCPError(code=JSONRPC_INVALID_PARAMS, message="Failed to retrieve task: Task not found")
        if view.get("status") in ("completed", "failed", "cancelled"):
            outcome = await self._queue("task_result", {"task_id": task_id})
            view = {**view, **{k: outcome[k] for k in ("result", "error") if k in outcome}}
        return view

    # -- the mapping ----------------------------------------------------------------------------------
    def _task(self, view: dict[str, Any], *, detailed: bool = False) -> dict[str, Any]:
        status = view.get("status")
        progress = view.get("progress") if isinstance(view.get("progress"), dict) else None
        stamps = [view.get(key) for key in ("created_at", "started_at", "finished_at")]
        stamps.append(progress.get("at") if progress else None)
        created = view.get("created_at")
        task: dict[str, Any] = {
            "taskId": view["task_id"],
            "status": "working",
            "createdAt": _iso(created),
            "lastUpdatedAt": _iso(max((s for s in stamps if isinstance(s, int | float)), default=created)),
            "ttlMs": None,
            "pollIntervalMs": self._poll_ms,
        }
        message = _status_message(view, progress)
        if status == "completed":
            task["status"] = "completed"
            if detailed:
                task["result"] = self._dump(self._to_result(view.get("result")))
        elif status == "failed":
            info = ErrorInfo.from_wire(_error_of(view))
            protocol_code = MCP_PROTOCOL_ERRORS.get(info.code)
            if protocol_code is not None:
                task["status"] = "failed"
                if detailed:
                    task["error"] = {"code": protocol_code, "message": info.message}
            else:
                task["status"] = "completed"
                if detailed:
                    task["result"] = self._dump(self._error_result(BridgeError.from_info(info)))
        elif status == "cancelled":
            task["status"] = "cancelled"
        if message:
            task["statusMessage"] = message
        return task

    def _unreachable(self, task_id: str, exc: BridgeError) -> dict[str, Any]:
        """``tasks/get`` while the queue cannot be asked: the task is kept there, so it is still working."""
        now = _iso(datetime.now(UTC).timestamp())
        return {
            "taskId": task_id,
            "status": "working",
            "statusMessage": f"the task queue cannot be reached right now ({exc.message}); the task is kept there",
            "createdAt": now,
            "lastUpdatedAt": now,
            "ttlMs": None,
            "pollIntervalMs": self._poll_ms * UNAVAILABLE_POLL_FACTOR,
        }

    @staticmethod
    def _dump(result: types.CallToolResult) -> dict[str, Any]:
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    @staticmethod
    def _protocol_error(exc: BridgeError) -> MCPError:
        if exc.code is ErrorCode.NOT_FOUND:
            return MCPError(code=JSONRPC_INVALID_PARAMS, message=f"Failed to retrieve task: {exc.message}")
        return MCPError(code=JSONRPC_INTERNAL_ERROR, message=f"{exc.code.value}: {exc.message}")


def _error_of(view: dict[str, Any]) -> dict[str, Any]:
    """The queue's error record as an ``ErrorInfo`` wire map (its code is the tool's error code when it has one)."""
    raw = view.get("error")
    if not isinstance(raw, dict):
        return {"code": ErrorCode.INTERNAL.value, "message": str(raw or "the task failed")}
    message = str(raw.get("message") or "the task failed")
    prefix = f"gateway tool {((view.get('metadata') or {}).get('mcp') or {}).get('tool')!r}: "
    return {"code": raw.get("code") or ErrorCode.TOOL_ERROR.value, "message": message.removeprefix(prefix)}


def _status_message(view: dict[str, Any], progress: dict[str, Any] | None) -> str | None:
    status = view.get("status")
    text: str | None = None
    if progress:
        text = progress.get("message") if isinstance(progress.get("message"), str) else None
        done, total = progress.get("done"), progress.get("total")
        if isinstance(done, int | float) and isinstance(total, int | float) and total:
            counted = f"{done:g} of {total:g}"
            text = f"{text} ({counted})" if text else counted
    if text:
        return text
    if status == "queued":
        return "queued: waiting for a worker"
    if status == "running":
        return f"running on {view.get('executed_by') or view.get('worker') or 'a worker'}"
    if status == "cancelled":
        error = view.get("error")
        return str(error.get("message")) if isinstance(error, dict) and error.get("message") else "cancelled"
    if status == "failed":
        return str(_error_of(view)["message"])
    return None


def apply_extension(server: Server[Any], extension: Extension, call_tool: Callable[..., Awaitable[Any]]) -> None:
    """Install an SDK extension on the low-level server, as ``MCPServer(extensions=[...])`` does for its own.

    The SDK applies extensions only in its high-level ``MCPServer``; this gateway
    uses the low-level ``Server`` (its catalog is dynamic), so the same public
    pieces are put together here: the extension's methods (gated to their
    protocol versions), its advertisement under ``capabilities.extensions``,
    and its ``tools/call`` interceptor around the gateway's handler.
    """
    for binding in extension.methods():
        if server.get_request_handler(binding.method) is not None:
            raise ValueError(f"{binding.method} is already served")
        server.add_request_handler(binding.method, binding.params_type, _gated(binding))
    server.extensions[extension.identifier] = extension.settings()
    server.add_request_handler(
        "tools/call", types.CallToolRequestParams, compose_tool_call_handler([extension], call_tool)
    )


def _gated(binding: MethodBinding) -> Callable[..., Awaitable[HandlerResult]]:
    versions = binding.protocol_versions

    async def handler(ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
        if versions is not None and ctx.protocol_version not in versions:
            raise MCPError(code=JSONRPC_METHOD_NOT_FOUND, message="Method not found", data=binding.method)
        return await binding.handler(ctx, params)

    return handler
