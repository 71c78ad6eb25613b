"""MCP over Streamable HTTP at /mcp, through the official SDK's low-level ``Server``.

The SDK does the protocol (both eras: ``initialize`` handshakes up to
2025-11-25 and stateless 2026-07-28 requests); this module only answers
``tools/list`` and ``tools/call`` from the registry and the router, and tells
clients when the catalog changes:

* handshake-era sessions that listed tools get ``notifications/tools/list_changed``
  on their standalone stream;
* 2026-07-28 clients that opened ``subscriptions/listen`` get the event there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import METHOD_NOT_FOUND
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from gateway import __version__
from gateway.errors import MCP_PROTOCOL_ERRORS
from gateway.mcp_http import McpFrontDoor
from gateway.mcp_tasks import QueueTasksExtension, apply_extension
from gateway.registry import ToolRegistry
from gateway.results import encode_json, is_call_tool_result
from gateway.router import RuntimeRouter
from gateway.worker_links import SessionTags, WorkerLinks
from shared_schema import BridgeError, Progress, ToolSpec
from shared_schema.function_tool import call_notes

log = logging.getLogger(__name__)

META_PREFIX = "io.github.mcp-p2p/"


def _client_address(ctx: ServerRequestContext[Any]) -> str | None:
    """The HTTP caller's address, for the per-client bound on calls in flight."""
    client = getattr(ctx.request, "client", None)
    return getattr(client, "host", None)


def _session_id(ctx: ServerRequestContext[Any]) -> str | None:
    request = ctx.request
    headers = getattr(request, "headers", None)
    return headers.get("mcp-session-id") if headers is not None else None


def spec_to_mcp(spec: ToolSpec, task_support: str = "forbidden") -> types.Tool:
    meta: dict[str, Any] = {
        f"{META_PREFIX}runtime": "p2p" if spec.metadata.runs_on_p2p else "local",
        f"{META_PREFIX}category": spec.metadata.category,
    }
    if spec.metadata.deprecated:
        meta[f"{META_PREFIX}deprecated"] = spec.metadata.deprecation_message or True
    wire: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "inputSchema": spec.input_schema,
        "_meta": meta,
    }
    if spec.annotations:
        wire["annotations"] = spec.annotations
    if task_support != "forbidden":
        # Whether a 2026-07-28 client declaring the Tasks extension gets a task handle.  Not as
        # execution.taskSupport: 2026-07-28 has no such field (the SDK drops it), and in the handshake
        # era it would invite 2025-11-25 task-augmented calls this server does not serve.
        meta[f"{META_PREFIX}taskSupport"] = task_support
    return types.Tool.model_validate(wire)


def result_to_mcp(result: Any) -> types.CallToolResult:
    """A tool's result as MCP sees it: its own content blocks, or its JSON as text plus structured content."""
    if is_call_tool_result(result):
        try:
            return types.CallToolResult.model_validate(result)
        except ValidationError:
            pass  # shaped like content but not valid content: it is data
    try:
        text = encode_json(result)
    except BridgeError as exc:
        return error_to_mcp(exc)
    # Parsed back so the structured content holds exactly what the text says (no object JSON cannot carry).
    decoded = json.loads(text) if not isinstance(result, str | int | float | bool) else result
    structured = decoded if isinstance(decoded, dict) else {"result": decoded}
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)


def _error_result(exc: BridgeError) -> types.CallToolResult:
    """``error_to_mcp`` for a failure that already happened: always a result, even for protocol-level codes."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{exc.code.value}: {exc.message}")],
        structured_content={"error": exc.info.to_wire()},
        is_error=True,
    )


def error_to_mcp(exc: BridgeError) -> types.CallToolResult:
    """A tool-level failure the model should read; protocol-level ones are raised as MCPError instead."""
    protocol_code = MCP_PROTOCOL_ERRORS.get(exc.code)
    if protocol_code is not None:
        raise MCPError(code=protocol_code, message=exc.message, data=exc.info.to_wire())
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{exc.code.value}: {exc.message}")],
        structured_content={"error": exc.info.to_wire()},
        is_error=True,
    )


REMOVED_IN_MODERN_ERA: dict[str, str] = {
    "ping": "send server/discover to check that the server answers",
    "logging/setLevel": "set io.modelcontextprotocol/logLevel in a request's _meta instead",
}
"""Methods 2026-07-28 removed (SEP-2575), and what to do instead."""


async def explain_removed_methods(ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
    """A 2026-07-28 request for a method that version removed gets the spec's 404 / -32601, and says why.

    The spec is explicit: ``ping`` is not part of 2026-07-28, and a method the
    server does not implement answers HTTP 404 with JSON-RPC -32601.  A client
    that still sends it (fastmcp's ``Client.ping()`` does) learns what to send.
    """
    try:
        return await call_next(ctx)
    except MCPError as exc:
        hint = REMOVED_IN_MODERN_ERA.get(ctx.method)
        if exc.code != METHOD_NOT_FOUND or hint is None or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            raise
        message = f"Method not found: {ctx.method} is not part of protocol version {ctx.protocol_version}; {hint}"
        raise MCPError(code=METHOD_NOT_FOUND, message=message, data=ctx.method) from None


class ProgressRelay:
    """Sends a call's progress to its MCP client as ``notifications/progress``, in order, never piling up.

    Updates arrive on the event loop (from the tool, or from the sidecar over
    the bridge); one sender task at a time delivers them, and updates that
    arrive while it is sending are coalesced to the newest.  They reach the
    client on the call's own response stream, so only when that answer streams
    (``GATEWAY_MCP_JSON_RESPONSE=false``, or a 2026-07-28 request that carries
    a ``progressToken``); with one JSON body per answer they have no wire.
    """

    def __init__(self, ctx: ServerRequestContext[Any], token: str | int) -> None:
        self._ctx = ctx
        self._token = token
        self._next: Progress | None = None
        self._sender: asyncio.Task[None] | None = None

    def put(self, update: Progress) -> None:
        self._next = update
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="mcp-progress")

    async def _send(self) -> None:
        while self._next is not None:
            update, self._next = self._next, None
            try:
                await self._ctx.session.send_progress_notification(
                    self._token,
                    update.done,
                    update.total,
                    update.message,
                    # the SDK annotates str but forwards it as a RequestId (int | str); str() of an
                    # integer id would no longer match the request, and the update would miss its stream
                    related_request_id=self._ctx.request_id,  # type: ignore[arg-type]
                )
            except Exception as exc:  # noqa: BLE001 - the client went away: progress is best effort
                log.debug("progress for request %s not delivered: %r", self._ctx.request_id, exc)
                return

    async def flush(self) -> None:
        """Wait until the updates so far are sent (before the call's answer goes out)."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


class _GatewayServer(Server[Any]):
    """Advertises ``tools.listChanged`` to handshake-era clients (the SDK defaults it off).

    Extensions (MCP Tasks) are served in the 2026-07-28 era only, so ``initialize`` does not advertise them.
    """

    def create_initialization_options(self, *args: Any, **kwargs: Any) -> InitializationOptions:
        if not args and "notification_options" not in kwargs:
            kwargs["notification_options"] = NotificationOptions(tools_changed=True)
        kwargs.setdefault("extensions", {})
        return super().create_initialization_options(*args, **kwargs)


class GatewayMCP:
    """Owns the SDK server, its session manager, and change notification."""

    def __init__(
        self,
        registry: ToolRegistry,
        router: RuntimeRouter,
        *,
        max_body_bytes: int,
        json_response: bool = True,
        max_sessions: int = 10_000,
        session_idle_timeout: float = 1800.0,
        on_reject: Callable[[str], None] = lambda _limit: None,
        tasks: bool = True,
        task_poll_interval: float = 1.0,
        task_min_timeout: float = 60.0,
        workers: tuple[SessionTags, WorkerLinks] | None = None,
    ) -> None:
        self._registry = registry
        self._router = router
        self._bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self._bus)
        # Handshake-era sessions to tell about catalog changes, by Mcp-Session-Id.  The SDK's
        # per-request ServerSession keeps its connection's standalone channel, so the newest one
        # per session is kept; the map is bounded like the session manager's own session table.
        self._sessions: OrderedDict[str, ServerSession] = OrderedDict()
        self._listing: tuple[int, types.ListToolsResult] | None = None
        self._schemas: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Event()
        self.server = _GatewayServer(
            "mcp-p2p-gateway",
            version=__version__,
            instructions="Local and peer-to-peer tools. P2P tools run in the sidecar's libp2p node.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=self._listen,
            get_tool_input_schema=self._input_schema,
        )
        self.server.middleware.append(explain_removed_methods)
        # MCP Tasks from the sidecar's durable queue (gateway/mcp_tasks.py); only with a sidecar to hold them.
        self.tasks: QueueTasksExtension | None = None
        if tasks and router.bridge is not None:
            self.tasks = QueueTasksExtension(
                registry,
                self._queue_call,
                to_result=result_to_mcp,
                error_result=_error_result,
                poll_interval=task_poll_interval,
                min_timeout=task_min_timeout,
            )
            apply_extension(self.server, self.tasks, self._call_tool)
        # Host/Origin checks are done by gateway.security.HostOriginGuard, which
        # knows the configured hosts; the SDK still checks Content-Type.
        # One JSON body per answer unless configured otherwise: handshake-era answers sent as an SSE
        # stream took twice as long at p50 and stalled ~40 ms on 1-2% of calls (docs/benchmarks.md);
        # the stream is only needed for notifications sent during a call, which no tool here sends.
        # subscriptions/listen and the GET stream stay SSE either way.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self._max_sessions = max_sessions
        self.session_manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=json_response,
            stateless=False,
            security_settings=security,
            max_request_body_size=max_body_bytes,
            max_sessions=max_sessions,
            session_idle_timeout=session_idle_timeout,
        )
        # A 2026-07-28 call that asks for progress is answered as a stream even when answers are JSON
        # bodies (it holds no session, so a second manager can serve it); see gateway/mcp_http.py.
        self.streaming_manager: StreamableHTTPSessionManager | None = None
        if json_response:
            self.streaming_manager = StreamableHTTPSessionManager(
                app=self.server,
                json_response=False,
                stateless=True,
                security_settings=security,
                max_request_body_size=max_body_bytes,
            )
        self.asgi_app = McpFrontDoor(
            self.session_manager, streaming=self.streaming_manager, on_reject=on_reject, workers=workers
        )
        registry.on_change(self._changed.set)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.session_manager.run())
            if self.streaming_manager is not None:
                await stack.enter_async_context(self.streaming_manager.run())
            notifier = asyncio.create_task(self._notify_changes(), name="mcp-tools-changed")
            try:
                yield
            finally:
                self._listen.close()
                notifier.cancel()
                await asyncio.gather(notifier, return_exceptions=True)

    # -- handlers -------------------------------------------------------------
    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        session_id = _session_id(ctx)
        if session_id is not None and ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            self._sessions[session_id] = ctx.session
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        await self._registry.prepare_listing()
        return self.listing()

    def listing(self) -> types.ListToolsResult:
        revision = self._registry.revision
        if self._listing is None or self._listing[0] != revision:
            specs = self._registry.specs()
            tasks = self.tasks
            tools = [spec_to_mcp(spec, tasks.support_of(spec.name) if tasks else "forbidden") for spec in specs]
            self._listing = (revision, types.ListToolsResult(tools=tools))
            self._schemas = {spec.name: spec.input_schema for spec in specs}
        return self._listing[1]

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        self.listing()
        return self._schemas.get(name)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        token = (ctx.meta or {}).get("progress_token")
        relay = ProgressRelay(ctx, token) if token is not None else None
        try:
            with call_notes() as notes:  # what the tool's machinery noted (arguments a lenient tool ignored)
                result = await self._router.call(
                    params.name, params.arguments, client=_client_address(ctx), progress=relay.put if relay else None
                )
        except BridgeError as exc:
            return error_to_mcp(exc)
        finally:
            if relay is not None:
                await relay.flush()
        answer = result_to_mcp(result)
        if notes:
            answer.meta = {**(answer.meta or {}), **notes}
        return answer

    async def _queue_call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """One of the sidecar queue's tools, called over the bridge like any P2P tool."""
        return await self._router.call(tool, arguments)

    # -- change notification -----------------------------------------------------
    async def _notify_changes(self) -> None:
        notified = self._registry.listing_revision
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._registry.listing_revision == notified:
                continue  # e.g. a collection module imported with the specs its cache already showed
            notified = self._registry.listing_revision
            await self._bus.publish(ToolsListChanged())
            for session_id, session in list(self._sessions.items()):
                try:
                    with anyio.fail_after(1.0):
                        await session.send_tool_list_changed()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError, TimeoutError, RuntimeError) as exc:
                    log.debug("MCP session %s no longer takes notifications: %r", session_id, exc)
                    self._sessions.pop(session_id, None)
