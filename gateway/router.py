"""RuntimeRouter: the one place that decides where a tool call runs.

Local tools run in this process (sync ones in a worker thread so the event
loop stays free); every P2P tool is forwarded unchanged over the bridge.  All
failures leave here as ``BridgeError`` with an ``ErrorCode``, and the HTTP and
MCP faces turn those into their own error shapes (``gateway/errors.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

from opentelemetry.trace import StatusCode

from gateway.bridge_client import BridgeClient
from gateway.limits import ClientCallLimiter
from gateway.metrics import GatewayMetrics
from gateway.registry import ToolRegistry
from shared_schema import BridgeError, Envelope, ErrorCode, ErrorInfo, tracing
from shared_schema.function_tool import note_ignored_arguments
from shared_schema.limits import DEFAULT_MAX_ARGUMENT_DEPTH, check_argument_depth
from shared_schema.progress import Progress, Sink
from shared_schema.tracing import CALL_ID

log = logging.getLogger(__name__)


class RuntimeRouter:
    def __init__(
        self,
        registry: ToolRegistry,
        bridge: BridgeClient | None,
        metrics: GatewayMetrics,
        *,
        timeout_cap: float,
        max_argument_depth: int = DEFAULT_MAX_ARGUMENT_DEPTH,
        max_calls_per_client: int = 1_000_000,
    ) -> None:
        self.registry = registry
        self.bridge = bridge
        self._metrics = metrics
        self._timeout_cap = timeout_cap
        self._max_depth = max_argument_depth
        self.clients = ClientCallLimiter(max_calls_per_client)
        self.in_flight = 0
        """Calls accepted and not yet answered, on every face: what a graceful shutdown waits for."""
        self._drained: asyncio.Event | None = None
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex() + "-"

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        trace_id: str | None = None,
        client: str | None = None,
        progress: Sink | None = None,
    ) -> Any:
        """Run tool ``name``; returns its JSON-able result or raises ``BridgeError``.

        ``client`` is the caller's address, for the per-client bound on calls in
        flight; the checks that reject a call (unknown tool, arguments that are
        not an object or nest too deep, the client's bound) all run before it
        is dispatched anywhere.  ``progress`` receives what the tool reports
        while it runs, locally or from the sidecar.  One coroutine, no context managers: this is
        every call's hot path.
        """
        await self.registry.resolve(name)
        route = self.registry.route(name)
        if route is None:
            self._metrics.tool_calls.labels("none", ErrorCode.UNKNOWN_TOOL.value).inc()
            raise BridgeError(ErrorCode.UNKNOWN_TOOL, f"unknown tool: {name}")
        try:
            if arguments is None:
                arguments = {}
            elif not isinstance(arguments, dict):
                raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "arguments must be an object")
            elif arguments:
                check_argument_depth(name, arguments, self._max_depth)
            self.clients.acquire(client)
        except BridgeError as exc:
            if isinstance(exc.data, dict) and "limit" in exc.data:
                self._metrics.limit_rejections.labels(exc.data["limit"]).inc()
            raise
        self.in_flight += 1
        runtime = "p2p" if route.local is None else "local"
        timeout = min(route.spec.metadata.timeout_seconds, self._timeout_cap)
        started = time.perf_counter()
        outcome = "ok"
        call_id = f"{self._id_prefix}{next(self._ids):x}"
        call_token = CALL_ID.set(call_id)  # on every log line about this call, and the envelope's id for a P2P one
        try:
            if route.local is not None:
                if tracing.enabled():
                    return await self._traced_local(route.local, name, call_id, arguments, timeout, progress)
                return await route.local.invoke(arguments, timeout, progress)
            if route.screen is not None and route.screen.signature.lenient:  # as the sidecar's copy will judge them
                ignored = route.screen.signature.ignored(arguments)
                if ignored:
                    note_ignored_arguments(ignored)
                    arguments = {key: value for key, value in arguments.items() if key not in ignored}
            if self.bridge is None:
                raise BridgeError(ErrorCode.UNAVAILABLE, "P2P sidecar unavailable (the gateway runs without a bridge)")
            if self.bridge.available and not self.registry.announced(name):
                raise BridgeError(
                    ErrorCode.TOOL_UNAVAILABLE,
                    f"{name} runs on the P2P runtime but the connected sidecar does not serve it "
                    "(load its module there: SIDECAR_TOOL_DIRS)",
                )
            return await self.bridge.call(
                name, arguments, timeout=timeout, trace_id=trace_id, progress=progress, call_id=call_id
            )
        except BridgeError as exc:
            outcome = exc.code.value
            log.debug("call of %s failed: %s", name, exc)  # debug only: callers choose how often calls fail
            raise
        finally:
            CALL_ID.reset(call_token)
            self._metrics.tool_calls.labels(runtime, outcome).inc()
            self._metrics.tool_latency.labels(runtime).observe(time.perf_counter() - started)
            self.clients.release(client)
            self.in_flight -= 1
            if not self.in_flight and self._drained is not None:
                self._drained.set()

    @staticmethod
    async def _traced_local(
        tool: Any, name: str, call_id: str, arguments: dict[str, Any], timeout: float, progress: Sink | None
    ) -> Any:
        """A local tool call as a span of the caller's trace (only when this gateway exports traces)."""
        attributes = {"mcp.tool": name, "mcp_p2p.call_id": call_id, "mcp_p2p.runtime": "local"}
        with tracing.tracer().start_as_current_span(f"tool {name}", attributes=attributes):
            return await tool.invoke(arguments, timeout, progress)

    async def wait_idle(self) -> None:
        """Return once no call is in flight (used on SIGTERM)."""
        if self.in_flight:
            self._drained = asyncio.Event()
            await self._drained.wait()

    async def serve_inbound(self, envelope: Envelope) -> Envelope:
        """A call that came over the bridge (a remote peer's, or a ``tool`` task's): only local tools answer."""
        name = envelope.tool or ""
        await self.registry.resolve(name)
        tool = self.registry.local_tool(name)
        if tool is None:
            return envelope.fail(ErrorInfo(ErrorCode.UNKNOWN_TOOL, f"no local tool {name!r} on this gateway"))
        remaining = (envelope.deadline - time.time()) if envelope.deadline else tool.metadata.timeout_seconds
        if remaining <= 0:
            return envelope.fail(ErrorInfo(ErrorCode.TIMEOUT, "deadline passed before the call started"))
        timeout = min(remaining, tool.metadata.timeout_seconds, self._timeout_cap)
        bridge = self.bridge

        def forward(update: Progress) -> None:  # the tool's progress goes back to the sidecar that called
            if bridge is not None:
                bridge.send_progress(envelope.id, update)

        attributes = {"mcp.tool": name, "mcp_p2p.call_id": envelope.id, "mcp_p2p.runtime": "local"}
        with tracing.served(
            f"tool {name}", traceparent=envelope.traceparent, call_id=envelope.id, attributes=attributes
        ) as span:
            try:
                check_argument_depth(name, envelope.arguments, self._max_depth)
                result = await tool.invoke(envelope.arguments or {}, timeout, forward)
            except BridgeError as exc:
                log.info("inbound call to %s over the bridge failed: %s", name, exc)
                if span is not None:
                    span.set_status(StatusCode.ERROR, exc.code.value)
                return envelope.fail(exc.info)
        return envelope.reply(result)
