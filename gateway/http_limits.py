"""HTTP-level limits: what one connection or one request may cost the gateway.

Two layers, because uvicorn leaves two gaps:

* ``guarded_http_protocol`` wraps uvicorn's HTTP protocol.  Uvicorn has no
  timeout for a request's *headers* (a slowloris client that dribbles a header
  byte now and then holds its connection forever), no bound on their size with
  the httptools parser, and no per-client connection cap.  The wrapper closes a
  connection whose next request head is not complete within
  ``GATEWAY_HEADER_TIMEOUT`` (408) or grows past ``GATEWAY_MAX_HEADER_BYTES``
  (431), and answers a client's connection past
  ``GATEWAY_MAX_CONNECTIONS_PER_CLIENT`` with 429 before closing it.
* ``BodyLimit`` is ASGI middleware in front of every path: a declared
  ``Content-Length`` over ``GATEWAY_MAX_BODY_BYTES`` is refused (413) without
  reading a byte; a chunked body is read up to the limit; the whole body must
  arrive within ``GATEWAY_BODY_TIMEOUT`` (408).  The handlers downstream then
  never see more than the limit, so memory per request is bounded.

Total connections are bounded by uvicorn's own ``limit_concurrency``
(``GATEWAY_MAX_CONNECTIONS``), idle keep-alive by ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

RejectCounter = Callable[[str], None]


def _raw_response(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response written straight to the transport, for refusals before any ASGI app runs."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


def guarded_http_protocol(
    base: type[asyncio.Protocol],
    *,
    header_timeout: float,
    max_header_bytes: int,
    max_connections_per_client: int,
    on_reject: RejectCounter,
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol class ``base`` (httptools or h11) with the guards above.

    Both uvicorn protocols keep the current request in ``self.cycle``; a new
    cycle object means a request head was parsed completely.  The guard arms a
    timer whenever the connection is between requests and bytes arrive (and at
    connect), and disarms it when a new cycle appears.
    """
    per_client: dict[str, int] = {}

    class GuardedHTTPProtocol(base):  # type: ignore[valid-type,misc]
        _guard_timer: asyncio.TimerHandle | None = None
        _guard_cycle: Any = None
        _guard_bytes = 0
        _guard_client: str | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            client = getattr(self, "client", None)
            host = client[0] if client else None
            if host is not None:
                count = per_client.get(host, 0)
                if count >= max_connections_per_client:
                    on_reject("connections_per_client")
                    message = f"too many connections from {host} (limit {max_connections_per_client})"
                    self._refuse(429, "Too Many Requests", message, b"retry-after: 1\r\n")
                    return
                per_client[host] = count + 1
                self._guard_client = host
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            host, self._guard_client = self._guard_client, None
            if host is not None:
                remaining = per_client.get(host, 1) - 1
                if remaining > 0:
                    per_client[host] = remaining
                else:
                    per_client.pop(host, None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():  # refused already: ignore whatever was still in flight
                return
            if self._guard_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()
            super().data_received(data)
            if self._guard_timer is None:
                return
            if self.cycle is not self._guard_cycle:  # the awaited request head is complete
                self._disarm()
                return
            self._guard_bytes += len(data)
            if self._guard_bytes > max_header_bytes:
                on_reject("header_bytes")
                message = f"request head larger than {max_header_bytes} bytes"
                self._refuse(431, "Request Header Fields Too Large", message)

        def _arm(self) -> None:
            self._disarm()
            self._guard_cycle = self.cycle
            self._guard_bytes = 0
            self._guard_timer = asyncio.get_running_loop().call_later(header_timeout, self._header_timed_out)

        def _disarm(self) -> None:
            if self._guard_timer is not None:
                self._guard_timer.cancel()
                self._guard_timer = None

        def _header_timed_out(self) -> None:
            self._guard_timer = None
            if self.cycle is self._guard_cycle and not self.transport.is_closing():
                on_reject("header_timeout")
                self._refuse(408, "Request Timeout", f"request head not received within {header_timeout:g}s")

        def _refuse(self, status: int, reason: str, message: str, extra: bytes = b"") -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, reason, message, extra))
                self.transport.close()

    return GuardedHTTPProtocol


class BodyLimit:
    """Bound every request body in size (413) and in the time it may take to arrive (408)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float, on_reject: RejectCounter) -> None:
        self.app = app
        self._max = max_bytes
        self._timeout = timeout
        self._on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked = False
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "invalid Content-Length", "bad_length")
                    return
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if declared is not None and declared > self._max:
            await self._reject(send, 413, f"request body of {declared} bytes exceeds {self._max}", "body_bytes")
            return
        if not declared and not chunked:  # no body: nothing to bound
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive, send)
        if body is None:
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect, which streaming responses watch for

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413/408 (or when the client went away)."""
        chunks: list[bytes] = []
        total = 0
        with anyio.move_on_after(self._timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > self._max:
                    await self._reject(send, 413, f"request body exceeds {self._max} bytes", "body_bytes")
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        await self._reject(send, 408, f"request body not received within {self._timeout:g}s", "body_timeout")
        return None

    async def _reject(self, send: Send, status: int, message: str, limit: str) -> None:
        self._on_reject(limit)
        log.debug("request refused (%s): %s", limit, message)
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
