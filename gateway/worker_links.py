"""How the processes of one gateway (``GATEWAY_WORKERS`` > 1) reach each other.

Each worker has, besides its share of the public port, a private Unix socket in
a directory only the gateway's user can enter (``WorkerPlace.directory``).
Over it, another worker sends this one the requests that belong here:

* **MCP sessions.**  A handshake-era session (protocol 2025-*) lives in the
  memory of the worker that answered its ``initialize``.  Its ``Mcp-Session-Id``
  names that worker (``w<index>-<the SDK's id>``, see ``SessionTags``); a request
  carrying it that lands on another worker (the kernel spreads connections over
  the workers, ``SO_REUSEPORT``) is relayed there unchanged, response streamed
  back, and cut off when the client goes away.  A client's requests usually
  come back on the connection that opened the session, so relaying is the
  exception.  2026-07-28 requests hold no session and are never relayed.
* **Metrics.**  ``/metrics`` on any worker answers for all of them, each
  sample labelled ``worker``: it asks the others for their own.

A relayed request passes through the receiving worker's whole stack again
(authentication, Host/Origin, limits); the client address it arrived from is
carried in ``x-mcp-p2p-client``, which is believed only on the private socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

RELAYED = "mcp_p2p.relayed"
"""Key of the ASGI scope ``state`` that marks a request which arrived on a worker's private socket."""
CLIENT_HEADER = b"x-mcp-p2p-client"
"""The address the relayed request came from, ``host:port``; only believed on the private socket."""
METRICS_HEADER = b"x-mcp-p2p-metrics"
"""``this-worker`` on a relayed ``GET /metrics``: answer with this worker's own metrics only."""
METRICS_TIMEOUT = 2.0
"""Seconds a worker's metrics may take before a scrape goes on without them."""
_NOT_RELAYED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        CLIENT_HEADER,
    }
)
"""Hop-by-hop headers (RFC 9110 7.6.1), framing that the relay redoes, and our own header."""
_NOT_RETURNED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
"""Response headers the public side's server writes itself."""


@dataclass(frozen=True)
class WorkerPlace:
    """Which worker of how many this process is, and where the workers' private sockets are."""

    index: int
    count: int
    directory: Path

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"


class SessionTags:
    """Session ids that name their worker: ``w<index>-<id>``, where ``<id>`` is what the MCP SDK made."""

    def __init__(self, place: WorkerPlace) -> None:
        self._place = place
        self._prefix = f"w{place.index}-"

    @property
    def index(self) -> int:
        return self._place.index

    def public(self, sdk_id: str) -> str:
        return self._prefix + sdk_id

    def owner(self, public_id: str) -> tuple[int, str] | None:
        """(worker index, the SDK's id) for an id this gateway made, None for anything else."""
        head, dash, rest = public_id.partition("-")
        if not dash or not rest or head[:1] != "w" or not head[1:].isdigit() or len(head) > 4:
            return None
        index = int(head[1:])
        return (index, rest) if index < self._place.count else None


def _error_body(message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": message}}).encode()


class WorkerLinks:
    """HTTP over the other workers' private sockets: relaying requests, collecting metrics."""

    def __init__(
        self, place: WorkerPlace, *, keep_alive_timeout: float, on_relay: Callable[[str], None] = lambda _outcome: None
    ) -> None:
        self.place = place
        self._on_relay = on_relay
        # Idle connections are dropped before the other worker would close them (GATEWAY_KEEP_ALIVE_TIMEOUT),
        # so a relayed POST is never written to a connection the other end is closing.
        limits = httpx2.Limits(
            max_connections=None, max_keepalive_connections=64, keepalive_expiry=keep_alive_timeout / 2
        )
        self._transports = {
            index: httpx2.AsyncHTTPTransport(uds=str(place.socket_path(index)), limits=limits, trust_env=False)
            for index in range(place.count)
            if index != place.index
        }

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()

    # -- relaying ------------------------------------------------------------------------------
    async def relay(self, index: int, scope: Scope, body: bytes | None, receive: Receive, send: Send) -> None:
        """Send this request to worker ``index`` and stream its answer back, until done or the client leaves."""
        headers = [(key, value) for key, value in scope["headers"] if key not in _NOT_RELAYED]
        client = scope.get("client")
        if client:
            headers.append((CLIENT_HEADER, f"{client[0]}:{client[1]}".encode()))
        query = scope.get("query_string", b"")
        url = f"http://worker{index}{scope['path']}" + (f"?{query.decode('latin-1')}" if query else "")
        request = httpx2.Request(
            scope["method"],
            url,
            headers=headers,
            content=body,
            extensions={"timeout": {"connect": 5.0, "read": None, "write": 30.0, "pool": 30.0}},
        )
        async with anyio.create_task_group() as group:
            group.start_soon(self._until_disconnect, receive, group.cancel_scope)
            await self._exchange(index, request, send)
            group.cancel_scope.cancel()

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _exchange(self, index: int, request: httpx2.Request, send: Send) -> None:
        started = False
        try:
            response = await self._transports[index].handle_async_request(request)
            try:
                headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _NOT_RETURNED]
                await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
                started = True
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()
            self._on_relay("answered")
        except httpx2.TransportError as exc:
            log.warning("relay to gateway worker %d failed: %r", index, exc)
            if started:
                self._on_relay("cut_short")
                raise  # the answer is cut short: the server closes the connection
            self._on_relay("unreachable")
            body = _error_body(f"the gateway worker holding this session is not answering ({type(exc).__name__})")
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    # -- metrics -------------------------------------------------------------------------------
    async def metrics_of_others(self, authorization: bytes | None) -> dict[int, str | None]:
        """Each other worker's own metrics (Prometheus text), None for one that did not answer in time."""

        async def one(index: int) -> tuple[int, str | None]:
            headers = [(METRICS_HEADER, b"this-worker")]
            if authorization is not None:
                headers.append((b"authorization", authorization))
            timeout = {"connect": METRICS_TIMEOUT, "read": METRICS_TIMEOUT, "write": METRICS_TIMEOUT, "pool": 1.0}
            request = httpx2.Request(
                "GET", f"http://worker{index}/metrics", headers=headers, extensions={"timeout": timeout}
            )
            try:
                with anyio.fail_after(METRICS_TIMEOUT):
                    response = await self._transports[index].handle_async_request(request)
                    try:
                        text = (await response.aread()).decode()
                    finally:
                        await response.aclose()
            except (httpx2.TransportError, TimeoutError) as exc:
                log.warning("gateway worker %d sent no metrics: %r", index, exc)
                return index, None
            if response.status_code != 200:
                log.warning("gateway worker %d answered /metrics with %d", index, response.status_code)
                return index, None
            return index, text

        return dict(await asyncio.gather(*(one(index) for index in self._transports)))


class BelieveRelayedClient:
    """ASGI middleware: a request relayed by another worker gets the client address it arrived from.

    Only requests that came in on the private socket (their scope ``state``
    says so) are believed; on the public port the header means nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("state", {}).get(RELAYED):
            for key, value in scope["headers"]:
                if key == CLIENT_HEADER:
                    host, _, port = value.decode("latin-1").rpartition(":")
                    if host and port.isdigit():
                        scope["client"] = (host, int(port))
                    break
        await self.app(scope, receive, send)


def is_relayed(scope: Scope) -> bool:
    state: dict[str, Any] = scope.get("state") or {}
    return bool(state.get(RELAYED))
