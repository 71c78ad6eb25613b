"""RuntimeRouter: the one place that decides where a tool call runs.

Local tools run in this process (sync ones in a worker thread so the event
loop stays free); every P2P tool is forwarded unchanged over the bridge.  All
failures leave here as ``BridgeError`` with an ``ErrorCode``, and the HTTP and
MCP faces turn those into their own error shapes (``gateway/errors.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.bridge_client import BridgeClient
from gateway.metrics import GatewayMetrics
from gateway.registry import ToolRegistry
from shared_schema import BridgeError, Envelope, ErrorCode, ErrorInfo

log = logging.getLogger(__name__)


class RuntimeRouter:
    def __init__(
        self, registry: ToolRegistry, bridge: BridgeClient | None, metrics: GatewayMetrics, *, timeout_cap: float
    ) -> None:
        self.registry = registry
        self.bridge = bridge
        self._metrics = metrics
        self._timeout_cap = timeout_cap

    async def call(self, name: str, arguments: dict[str, Any] | None, *, trace_id: str | None = None) -> Any:
        """Run tool ``name``; returns its JSON-able result or raises ``BridgeError``."""
        await self.registry.resolve(name)
        route = self.registry.route(name)
        if route is None:
            self._metrics.tool_calls.labels("none", ErrorCode.UNKNOWN_TOOL.value).inc()
            raise BridgeError(ErrorCode.UNKNOWN_TOOL, f"unknown tool: {name}")
        if arguments is not None and not isinstance(arguments, dict):
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "arguments must be an object")
        runtime = "p2p" if route.is_p2p else "local"
        timeout = min(route.spec.metadata.timeout_seconds, self._timeout_cap)
        started = time.perf_counter()
        outcome = "ok"
        try:
            if route.local is not None:
                return await route.local.invoke(arguments or {}, timeout)
            if self.bridge is None:
                raise BridgeError(ErrorCode.UNAVAILABLE, "P2P sidecar unavailable (the gateway runs without a bridge)")
            if self.bridge.available and not self.registry.announced(name):
                raise BridgeError(
                    ErrorCode.TOOL_UNAVAILABLE,
                    f"{name} runs on the P2P runtime but the connected sidecar does not serve it "
                    "(load its module there: SIDECAR_TOOL_DIRS)",
                )
            return await self.bridge.call(name, arguments or {}, timeout=timeout, trace_id=trace_id)
        except BridgeError as exc:
            outcome = exc.code.value
            raise
        finally:
            self._metrics.tool_calls.labels(runtime, outcome).inc()
            self._metrics.tool_latency.labels(runtime).observe(time.perf_counter() - started)

    async def serve_inbound(self, envelope: Envelope) -> Envelope:
        """A call that came over the bridge from a remote peer: only this gateway's local tools answer."""
        name = envelope.tool or ""
        await self.registry.resolve(name)
        tool = self.registry.local_tool(name)
        if tool is None:
            return envelope.fail(ErrorInfo(ErrorCode.UNKNOWN_TOOL, f"no local tool {name!r} on this gateway"))
        remaining = (envelope.deadline - time.time()) if envelope.deadline else tool.metadata.timeout_seconds
        if remaining <= 0:
            return envelope.fail(ErrorInfo(ErrorCode.TIMEOUT, "deadline passed before the call started"))
        timeout = min(remaining, tool.metadata.timeout_seconds, self._timeout_cap)
        try:
            result = await tool.invoke(envelope.arguments or {}, timeout)
        except BridgeError as exc:
            log.info("inbound call %s to %s failed: %s", envelope.id, name, exc)
            return envelope.fail(exc.info)
        return envelope.reply(result)
