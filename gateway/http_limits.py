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
  The same timer then gives the request's body ``GATEWAY_BODY_TIMEOUT`` to
  arrive (408).
* ``BodyLimit`` is ASGI middleware in front of every path: a declared
  ``Content-Length`` over ``GATEWAY_MAX_BODY_BYTES`` is refused (413) without
  reading a byte; a chunked body is read up to the limit.  The handlers
  downstream never see more than the limit, so memory per request is bounded.

Both cost a few microseconds per request: a deadline stored (swept once per interval), one scan
of the headers; the common body (declared length within the limit) is not
copied.

Total connections are bounded by uvicorn's own ``limit_concurrency``
(``GATEWAY_MAX_CONNECTIONS``), idle keep-alive by ``timeout_keep_alive``.

The protocol wrapper reads uvicorn internals; ``gateway/uvicorn_internals.py`` stops the gateway at start-up
on a uvicorn they were not checked against.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

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
    body_timeout: float,
    max_header_bytes: int,
    max_connections_per_client: int,
    on_reject: RejectCounter,
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol class ``base`` (httptools or h11) with the guards above.

    Both uvicorn protocols keep the current request in ``self.cycle`` (a new
    object once a request head is parsed) with ``more_body`` true until its
    body is complete.  Each connection holds one deadline for whichever phase
    it is in: the head of the next request (set at connect and whenever bytes
    arrive between requests), then that request's body.  Setting a deadline
    is a float store; one sweep per ``SWEEP`` seconds over the open
    connections enforces them, instead of a timer armed and cancelled per
    request (which, at thousands of requests a second, costs the event loop
    more than the check itself).
    """
    per_client: dict[str, int] = {}
    guarded: set[GuardedHTTPProtocol] = set()
    sweep_interval = max(0.05, min(1.0, header_timeout / 4, body_timeout / 4))
    sweeper: list[asyncio.TimerHandle] = []

    def sweep() -> None:
        sweeper.clear()
        if not guarded:
            return  # restarted by the next connection
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(guarded):
            deadline = connection._guard_deadline
            if deadline is not None and deadline <= now:
                connection._timed_out()
        sweeper.append(loop.call_later(sweep_interval, sweep))

    # a class on a base chosen at run time (httptools or h11) cannot be checked statically
    class GuardedHTTPProtocol(base):  # type: ignore[valid-type,misc]
        _guard_deadline: float | None = None
        _guard_cycle: Any = None
        _guard_body = False
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
            guarded.add(self)
            if not sweeper:
                sweeper.append(asyncio.get_running_loop().call_later(sweep_interval, sweep))
            self._arm(header_timeout, body=False)

        def connection_lost(self, exc: Exception | None) -> None:
            self._guard_deadline = None
            guarded.discard(self)
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
            if self._guard_deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm(header_timeout, body=False)
            super().data_received(data)
            if self._guard_deadline is None:
                return
            cycle = self.cycle
            if self._guard_body:
                if not cycle.more_body:  # the body is complete
                    self._guard_deadline = None
            elif cycle is not self._guard_cycle:  # the awaited request head is complete
                if cycle.more_body:
                    self._arm(body_timeout, body=True)
                else:
                    self._guard_deadline = None
            else:
                self._guard_bytes += len(data)
                if self._guard_bytes > max_header_bytes:
                    on_reject("header_bytes")
                    message = f"request head larger than {max_header_bytes} bytes"
                    self._refuse(431, "Request Header Fields Too Large", message)

        def _arm(self, delay: float, *, body: bool) -> None:
            self._guard_deadline = self.loop.time() + delay
            self._guard_cycle = self.cycle
            self._guard_body = body
            self._guard_bytes = 0

        def _timed_out(self) -> None:
            self._guard_deadline = None
            cycle = self.cycle
            if cycle is not self._guard_cycle or self.transport.is_closing():
                return
            if not self._guard_body:
                on_reject("header_timeout")
                self._refuse(408, "Request Timeout", f"request head not received within {header_timeout:g}s")
            elif cycle.more_body:
                on_reject("body_timeout")
                if cycle.response_started:  # the app answered early: just stop waiting for the rest
                    self.transport.close()
                else:
                    self._refuse(408, "Request Timeout", f"request body not received within {body_timeout:g}s")

        def _refuse(self, status: int, reason: str, message: str, extra: bytes = b"") -> None:
            self._guard_deadline = None
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, reason, message, extra))
                self.transport.close()

    return GuardedHTTPProtocol


class BodyLimit:
    """Bound every request body in size (413), without reading a byte when the declared length says so.

    A body with a ``Content-Length`` within the limit passes straight through
    (the HTTP parser holds the client to its declared length, and the
    protocol's body timer to ``GATEWAY_BODY_TIMEOUT``).  A chunked body has no
    declared length, so it is read here, up to the limit, and replayed.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, on_reject: RejectCounter) -> None:
        self.app = app
        self._max = max_bytes
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
        if not chunked:
            await self.app(scope, receive, send)
            return
        body = await self._read_chunked(receive, send)
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

    async def _read_chunked(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (or when the client went away)."""
        chunks: list[bytes] = []
        total = 0
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
