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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway import __version__
from gateway.errors import MCP_PROTOCOL_ERRORS
from gateway.registry import ToolRegistry
from gateway.router import RuntimeRouter
from shared_schema import BridgeError, ToolSpec

log = logging.getLogger(__name__)

META_PREFIX = "io.github.mcp-p2p/"
MAX_NOTIFIED_SESSIONS = 10_000


def _client_address(ctx: ServerRequestContext[Any]) -> str | None:
    """The HTTP caller's address, for the per-client bound on calls in flight."""
    client = getattr(ctx.request, "client", None)
    return getattr(client, "host", None)


def _session_id(ctx: ServerRequestContext[Any]) -> str | None:
    request = ctx.request
    headers = getattr(request, "headers", None)
    return headers.get("mcp-session-id") if headers is not None else None


def spec_to_mcp(spec: ToolSpec) -> types.Tool:
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
    return types.Tool.model_validate(wire)


def result_to_mcp(result: Any) -> types.CallToolResult:
    structured = result if isinstance(result, dict) else {"result": result}
    text = json.dumps(result, separators=(",", ":"), ensure_ascii=False, default=str)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)


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


class _GatewayServer(Server[Any]):
    """Advertises ``tools.listChanged`` to handshake-era clients (the SDK defaults it off)."""

    def create_initialization_options(self, *args: Any, **kwargs: Any) -> InitializationOptions:
        if not args and "notification_options" not in kwargs:
            kwargs["notification_options"] = NotificationOptions(tools_changed=True)
        return super().create_initialization_options(*args, **kwargs)


class GatewayMCP:
    """Owns the SDK server, its session manager, and change notification."""

    def __init__(
        self, registry: ToolRegistry, router: RuntimeRouter, *, max_body_bytes: int, json_response: bool = True
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
        # Host/Origin checks are done by gateway.security.HostOriginGuard, which
        # knows the configured hosts; the SDK still checks Content-Type.
        # One JSON body per answer unless configured otherwise: handshake-era answers sent as an SSE
        # stream took twice as long at p50 and stalled ~40 ms on 1-2% of calls (docs/benchmarks.md);
        # the stream is only needed for notifications sent during a call, which no tool here sends.
        # subscriptions/listen and the GET stream stay SSE either way.
        self.session_manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=json_response,
            stateless=False,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=max_body_bytes,
        )
        self.asgi_app = StreamableHTTPASGIApp(self.session_manager)
        registry.on_change(self._changed.set)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.session_manager.run():
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
            while len(self._sessions) > MAX_NOTIFIED_SESSIONS:
                self._sessions.popitem(last=False)
        await self._registry.prepare_listing()
        return self.listing()

    def listing(self) -> types.ListToolsResult:
        revision = self._registry.revision
        if self._listing is None or self._listing[0] != revision:
            specs = self._registry.specs()
            self._listing = (revision, types.ListToolsResult(tools=[spec_to_mcp(spec) for spec in specs]))
            self._schemas = {spec.name: spec.input_schema for spec in specs}
        return self._listing[1]

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        self.listing()
        return self._schemas.get(name)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            result = await self._router.call(params.name, params.arguments, client=_client_address(ctx))
        except BridgeError as exc:
            return error_to_mcp(exc)
        return result_to_mcp(result)

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
