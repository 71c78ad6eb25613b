"""Assemble the gateway: registry, bridge, router, MCP server, REST face, health, metrics.

``create_app`` is the composition root; nothing is built at import time.  The
lifespan nests what must outlive what: the bridge is up before MCP sessions
start and is closed after they end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.routing import Route

from gateway import __version__
from gateway.bridge_client import BridgeClient
from gateway.collection import build_collection
from gateway.http_limits import BodyLimit
from gateway.lifecycle import end_event_streams
from gateway.mcp_server import GatewayMCP
from gateway.metrics import GatewayMetrics, merge_worker_metrics
from gateway.oauth import install_oauth
from gateway.registry import ToolRegistry
from gateway.rest import build_rest_router
from gateway.rest_models import BODY_REFUSALS, Health
from gateway.router import RuntimeRouter
from gateway.security import BearerAuth, HostOriginGuard
from gateway.settings import GatewaySettings
from gateway.tools import register_builtin_tools, register_meta_tools
from gateway.trace_context import TraceContextPassThrough
from gateway.worker_links import (
    METRICS_HEADER,
    BelieveRelayedClient,
    SessionTags,
    WorkerLinks,
    WorkerPlace,
    is_relayed,
)
from shared_schema import tracing

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"


class Gateway:
    """The parts of one gateway, reachable from tests and the app's handlers.

    ``place`` says which worker this process is when the gateway runs as
    several (``GATEWAY_WORKERS``); the workers then reach each other for MCP
    sessions and metrics (``gateway/worker_links.py``).
    """

    def __init__(self, settings: GatewaySettings, place: WorkerPlace | None = None) -> None:
        self.settings = settings
        self.place = place
        self.metrics = GatewayMetrics()
        self.links: WorkerLinks | None = None
        if place is not None and place.count > 1:
            self.links = WorkerLinks(
                place,
                keep_alive_timeout=settings.keep_alive_timeout,
                on_relay=lambda outcome: self.metrics.relayed_requests.labels(outcome).inc(),
            )
        self.registry = ToolRegistry()
        self.bridge: BridgeClient | None = None
        if settings.bridge_enabled:
            self.bridge = BridgeClient(
                settings,
                self.metrics,
                on_catalog=self.registry.replace_remote,
                on_inbound_call=lambda envelope: self.router.serve_inbound(envelope),
                hello_body=self._hello_body,
            )
        self.router = RuntimeRouter(
            self.registry,
            self.bridge,
            self.metrics,
            timeout_cap=settings.call_timeout_cap,
            max_argument_depth=settings.max_argument_depth,
            max_calls_per_client=settings.max_calls_per_client,
        )
        register_builtin_tools(self.registry)
        register_meta_tools(self.registry, self.router)
        collection = build_collection(settings)
        if collection is not None:
            self.registry.mount(collection)
        self.mcp = GatewayMCP(
            self.registry,
            self.router,
            max_body_bytes=settings.max_body_bytes,
            json_response=settings.mcp_json_response,
            max_sessions=settings.mcp_max_sessions,
            session_idle_timeout=settings.mcp_session_idle_timeout,
            on_reject=self.count_rejection,
            tasks=settings.mcp_tasks,
            task_poll_interval=settings.mcp_task_poll_interval,
            task_min_timeout=settings.mcp_task_min_timeout,
            workers=(SessionTags(self.links.place), self.links) if self.links is not None else None,
        )
        self.stopping = False
        self._background: set[asyncio.Task[None]] = set()
        self.registry.on_change(self._count_tools)
        self._count_tools()

    def count_rejection(self, limit: str) -> None:
        self.metrics.limit_rejections.labels(limit).inc()

    def _hello_body(self) -> dict[str, Any]:
        local = sorted(spec.name for spec in self.registry.specs() if self.registry.local_tool(spec.name))
        body: dict[str, Any] = {"role": "gateway", "version": __version__, "pid": os.getpid(), "local_tools": local}
        if self.place is not None:
            body["worker"] = self.place.index
        return body

    def _count_tools(self) -> None:
        specs = self.registry.specs()
        p2p = sum(1 for spec in specs if self.registry.local_tool(spec.name) is None)
        self.metrics.catalog_tools.labels("p2p").set(p2p)
        self.metrics.catalog_tools.labels("local").set(len(specs) - p2p)

    @property
    def ready(self) -> bool:
        return not self.stopping and (self.bridge is None or self.bridge.available)

    def begin_shutdown(self) -> None:
        """SIGTERM arrived (called from the signal handler): report unready, and drain on the loop.

        Uvicorn stops accepting connections and waits for open ones to finish;
        readiness drops at once so load balancers stop sending.  Responses that
        stream over SSE (every MCP call's answer, and the long-lived standalone
        and listen streams) are ended only after ``drain`` has seen the calls
        in flight finish, so no accepted call loses its answer.
        """
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: no longer ready; draining %d calls in flight", self.router.in_flight)
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(lambda: self._background.add(loop.create_task(self.drain(), name="drain")))

    async def drain(self) -> None:
        """Wait for calls in flight (up to the grace period), then end the SSE streams uvicorn waits on."""
        grace = self.settings.graceful_shutdown_seconds
        with anyio.move_on_after(grace) as scope:
            await self.router.wait_idle()
        if scope.cancelled_caught:
            log.warning("grace period of %.1fs over with %d calls in flight", grace, self.router.in_flight)
        else:
            log.info("calls drained; closing event streams")
        end_event_streams()

    def health(self) -> dict[str, Any]:
        bridge: dict[str, Any] = {"enabled": self.bridge is not None}
        if self.bridge is not None:
            bridge.update(
                state=self.bridge.state.value,
                reason=self.bridge.state_reason,
                endpoint=self.settings.bridge_endpoint,
                sidecar=self.bridge.sidecar_info,
            )
        report = {
            "status": "stopping" if self.stopping else "ok",
            "version": __version__,
            "ready": self.ready,
            "tools": len(self.registry),
            "bridge": bridge,
            "collection": self.registry.collection_status(),
        }
        if self.place is not None:
            report["worker"] = {"index": self.place.index, "workers": self.place.count, "pid": os.getpid()}
        return report

    async def metrics_text(self, request: Request) -> bytes:
        """This process's metrics; with several workers, every worker's, labelled (unless one asked for its own)."""
        own = self.metrics.render()
        if self.links is None:
            return own
        if is_relayed(request.scope) and request.headers.get(METRICS_HEADER.decode()) == "this-worker":
            return own
        authorization = request.headers.get("authorization")
        others = await self.links.metrics_of_others(authorization.encode("latin-1") if authorization else None)
        return merge_worker_metrics({self.links.place.index: own.decode(), **others})

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if self.bridge is not None:
                await stack.enter_async_context(self.bridge.running())
            await stack.enter_async_context(self.mcp.running())
            if self.links is not None:
                stack.push_async_callback(self.links.aclose)
            # Everything built so far (modules, the app, schemas) lives as long as the process: moved out
            # of the collector's reach, a full collection no longer rescans it (61 ms each under load,
            # about a tenth of the gateway's CPU at 64 clients; docs/benchmarks.md).
            gc.freeze()
            log.info("gateway ready to serve (%d tools)", len(self.registry))
            yield


def _telemetry(settings: GatewaySettings) -> TelemetryConfig | None:
    """FastAPI's native OpenTelemetry: all of it on request; only the HTTP span when this gateway exports traces.

    The HTTP span is what reads the caller's ``traceparent`` header, so the
    MCP SDK's ``tools/call`` span and the router's spans join the caller's trace.
    """
    if settings.opentelemetry:
        return None
    if tracing.enabled():
        return {"tracing": True, "metrics": False, "logs": False, "operation_spans": False}
    return {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: GatewaySettings, gateway: Gateway | None = None) -> FastAPI:
    gateway = gateway or Gateway(settings)
    app = FastAPI(
        title="mcp-p2p gateway",
        version=__version__,
        lifespan=gateway.lifespan,
        description="MCP tool server: local tools plus P2P tools served by the libp2p sidecar.",
        # FastAPI's native OpenTelemetry looks up the global providers on every request; the gateway's
        # own metrics are Prometheus (/metrics), so it runs only when asked for.
        telemetry=_telemetry(settings),
    )
    app.state.gateway = gateway

    @app.get("/health", tags=["health"], summary="Liveness: the process answers", responses={200: {"model": Health}})
    async def health() -> Response:
        return Response(json.dumps(gateway.health()), media_type="application/json")

    @app.get(
        "/health/ready",
        tags=["health"],
        summary="Readiness: the bridge has a live sidecar (or none is configured), and no SIGTERM yet",
        responses={200: {"model": Health}, 503: {"model": Health, "description": "not ready"}},
    )
    async def ready() -> Response:
        status = 200 if gateway.ready else 503
        return Response(json.dumps(gateway.health()), status_code=status, media_type="application/json")

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: BODY_REFUSALS[401]},
    )
    async def metrics(request: Request) -> Response:
        return Response(await gateway.metrics_text(request), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_rest_router(gateway.registry, gateway.router))
    app.router.routes.append(Route(MCP_PATH, endpoint=gateway.mcp.asgi_app, methods=["GET", "POST", "DELETE"]))

    # Middleware runs outermost-last-added: authentication, then Host/Origin, then the body bound,
    # so an unauthenticated or rebinding request is refused before its body is read.
    reject = gateway.count_rejection
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, on_reject=reject)
    app.add_middleware(HostOriginGuard, path=MCP_PATH, hosts=settings.allowed_hosts, origins=settings.allowed_origins)
    if not tracing.enabled() and not settings.opentelemetry:
        app.add_middleware(TraceContextPassThrough)  # export on: FastAPI's HTTP span reads the header instead
    if settings.auth_token is not None:
        app.add_middleware(BearerAuth, token=settings.auth_token.get_secret_value())
    if settings.oauth_enabled:
        install_oauth(app, settings)
    if gateway.links is not None:  # outermost: a relayed request's client address is known before any limit
        app.add_middleware(BelieveRelayedClient)
    return app
