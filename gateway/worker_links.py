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
import collections
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httptools
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
        digits = head[1:]
        if not dash or not rest or head[:1] != "w" or not (digits.isascii() and digits.isdigit()) or len(head) > 4:
            return None
        index = int(head[1:])
        return (index, rest) if index < self._place.count else None


def _error_body(message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": message}}).encode()


class _Upstream(asyncio.Protocol):
    """One HTTP/1.1 connection to another worker's private socket, one exchange at a time.

    The response is parsed by httptools (uvicorn's parser): its head resolves
    ``head``, its body chunks go to ``chunks`` as they arrive, so a stream
    (an MCP session's GET stream) is relayed as it is written.  Reading pauses
    while the relay has not passed the chunks on.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.complete = False
        self.keep_alive = False
        self._paused = False
        self._begin()

    def _begin(self) -> None:
        self.head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = asyncio.get_running_loop().create_future()
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: collections.deque[bytes | BaseException | None] = collections.deque()
        self._more = asyncio.Event()
        self.complete = False
        self._parser = httptools.HttpResponseParser(self)

    def send(self, request: bytes) -> None:
        """Start an exchange on this (idle) connection."""
        self._begin()
        assert self.transport is not None
        self.transport.write(request)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while not self._body:
                self._more.clear()
                await self._more.wait()
            item = self._body.popleft()
            if self._paused and len(self._body) <= _RESUME_AT and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _push(self, item: bytes | BaseException | None) -> None:
        self._body.append(item)
        self._more.set()
        if len(self._body) >= _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the other worker closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: an idle connection that closes has no one waiting on it
        elif not self.complete:
            self._push(exc)

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.head.set_result((self._parser.get_status_code(), self._headers))

    def on_body(self, body: bytes) -> None:
        self._push(bytes(body))

    def on_message_complete(self) -> None:
        self.complete = True
        self._push(None)


_PAUSE_AT, _RESUME_AT = 32, 8
"""Body chunks a relay may hold before it stops reading from the other worker, and when it starts again."""
_MAX_IDLE = 64
"""Idle connections kept to each other worker."""


class WorkerLinks:
    """HTTP over the other workers' private sockets: relaying requests, collecting metrics.

    A small client of its own rather than httpx2's: per relayed request,
    httpcore's pool checked every pooled connection and h11 parsed in Python,
    which cost 1.1 ms more at p50 and about 1.9 ms of CPU per relayed call in
    ``bench/workers.py``; here a request is written as it came, and the
    response parsed by httptools.
    """

    def __init__(
        self, place: WorkerPlace, *, keep_alive_timeout: float, on_relay: Callable[[str], None] = lambda _outcome: None
    ) -> None:
        self.place = place
        self._on_relay = on_relay
        # Idle connections are dropped before the other worker would close them (GATEWAY_KEEP_ALIVE_TIMEOUT),
        # so a relayed POST is never written to a connection the other end is closing.
        self._expiry = keep_alive_timeout / 2
        self._idle: dict[int, list[_Upstream]] = {index: [] for index in range(place.count) if index != place.index}

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                connection = idle.pop()
                if connection.transport is not None:
                    connection.transport.close()

    async def _connect(self, index: int) -> _Upstream:
        loop = asyncio.get_running_loop()
        idle = self._idle[index]
        now = loop.time()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._expiry:
                return connection
            if connection.transport is not None:
                connection.transport.close()
        _, connection = await loop.create_unix_connection(_Upstream, str(self.place.socket_path(index)))
        return connection

    def _release(self, index: int, connection: _Upstream, *, finished: bool) -> None:
        idle = self._idle[index]
        if (
            finished
            and connection.complete
            and connection.keep_alive
            and not connection.closed
            and len(idle) < _MAX_IDLE
        ):
            connection.idle_since = asyncio.get_running_loop().time()
            idle.append(connection)
        elif connection.transport is not None:
            connection.transport.close()  # the other worker sees the client leave (a relayed stream ends there)

    # -- relaying ------------------------------------------------------------------------------
    async def relay(self, index: int, scope: Scope, body: bytes | None, receive: Receive, send: Send) -> None:
        """Send this request to worker ``index`` and stream its answer back, until done or the client leaves."""
        head = [f"{scope['method']} ".encode(), scope.get("raw_path") or scope["path"].encode()]
        if scope.get("query_string"):
            head += [b"?", scope["query_string"]]
        head.append(b" HTTP/1.1\r\n")
        for key, value in scope["headers"]:
            if key not in _NOT_RELAYED:
                head += [key, b": ", value, b"\r\n"]
        client = scope.get("client")
        if client:
            head += [CLIENT_HEADER, f": {client[0]}:{client[1]}\r\n".encode()]
        if body is not None:
            head.append(f"content-length: {len(body)}\r\n".encode())
        head.append(b"\r\n")
        request = b"".join(head) + (body or b"")
        async with anyio.create_task_group() as group:
            group.start_soon(self._until_disconnect, receive, group.cancel_scope)
            await self._exchange(index, request, send)
            group.cancel_scope.cancel()

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _exchange(self, index: int, request: bytes, send: Send) -> None:
        started = finished = False
        connection: _Upstream | None = None
        try:
            connection = await self._connect(index)
            connection.send(request)
            status, headers = await connection.head
            returned = [(key, value) for key, value in headers if key not in _NOT_RETURNED]
            await send({"type": "http.response.start", "status": status, "headers": returned})
            started = True
            async for chunk in connection.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = True
            self._on_relay("answered")
        except (OSError, httptools.HttpParserError) as exc:
            log.warning("relay to gateway worker %d failed: %r", index, exc)
            if started:
                self._on_relay("cut_short")
                raise  # the answer is cut short: the server closes the connection
            self._on_relay("unreachable")
            answer = _error_body(f"the gateway worker holding this session is not answering ({type(exc).__name__})")
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
        finally:
            if connection is not None:
                self._release(index, connection, finished=finished)

    # -- metrics -------------------------------------------------------------------------------
    async def metrics_of_others(self, authorization: bytes | None) -> dict[int, str | None]:
        """Each other worker's own metrics (Prometheus text), None for one that did not answer in time."""
        request = b"GET /metrics HTTP/1.1\r\nhost: gateway-worker\r\n" + METRICS_HEADER + b": this-worker\r\n"
        if authorization is not None:
            request += b"authorization: " + authorization + b"\r\n"
        request += b"\r\n"

        async def one(index: int) -> tuple[int, str | None]:
            connection: _Upstream | None = None
            finished = False
            try:
                with anyio.fail_after(METRICS_TIMEOUT):
                    connection = await self._connect(index)
                    connection.send(request)
                    status, _ = await connection.head
                    text = b"".join([chunk async for chunk in connection.chunks()]).decode()
                    finished = True
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                log.warning("gateway worker %d sent no metrics: %r", index, exc)
                return index, None
            finally:
                if connection is not None:
                    self._release(index, connection, finished=finished)
            if status != 200:
                log.warning("gateway worker %d answered /metrics with %d", index, status)
                return index, None
            return index, text

        return dict(await asyncio.gather(*(one(index) for index in self._idle)))


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
