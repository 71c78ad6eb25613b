"""The HTTP front door of /mcp: what the SDK's Streamable HTTP manager is handed, and what it is spared.

The SDK serves both eras; a few answers it gives at the HTTP layer are not the
ones the spec (or a client) expects, and those are settled here, before the
manager sees the request, without touching the SDK:

* An ``MCP-Protocol-Version`` header naming a version this server does not
  speak gets ``400`` with ``-32022`` (``UnsupportedProtocolVersionError``)
  listing every version it does speak, both eras, on every method.  The SDK
  routes unknown versions to its 2026-07-28 entry, which answers GET and
  DELETE ``405`` (so a DELETE that meant to end a session silently left it
  open) and a handshake-shaped POST with a message about the ``_meta``
  envelope.
* A handshake-era POST whose body is JSON but not one JSON-RPC message (an
  object that is not a request, notification or response; a batch) gets
  ``400`` with ``-32600`` and one short sentence, instead of ``-32602`` with
  a pydantic dump.  Batches are refused in every version: the SDK's transport
  takes one message per POST, and 2025-06-18 removed batching from the spec.
* A refused request that opened no session (400, 406, ...) carries no
  ``Mcp-Session-Id``: the SDK names the session it created for it and
  discarded at once.
* A new session refused because ``GATEWAY_MCP_MAX_SESSIONS`` are open gets
  ``Retry-After`` beside the SDK's ``503``, and is counted.
* A 2026-07-28 request that asks for progress (``_meta.progressToken``) is
  answered through a second, streaming manager when answers are otherwise one
  JSON body, so its ``notifications/progress`` reach the client.
* With several gateway workers (``GATEWAY_WORKERS``), session ids name the
  worker that holds the session (``gateway/worker_links.py``): a request for
  another worker's session is relayed there, the manager here only ever sees
  its own sessions' ids, and ids it hands out are tagged on the way out.

The body of a POST is read once here (``GATEWAY_MAX_BODY_BYTES`` bounds it
already) and replayed to the manager.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import JSONRPC_INVALID_REQUEST, JSONRPC_UNSUPPORTED_PROTOCOL_VERSION
from gateway.worker_links import SessionTags, WorkerLinks

SUPPORTED_VERSIONS: tuple[str, ...] = (*MODERN_PROTOCOL_VERSIONS, *reversed(HANDSHAKE_PROTOCOL_VERSIONS))
"""Every protocol version /mcp speaks, newest first."""

_VERSION_HEADER = b"mcp-protocol-version"
_SESSION_HEADER = b"mcp-session-id"
SESSION_RETRY_AFTER_SECONDS = 5


def _error_body(code: int, message: str, data: Any = None, request_id: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")).encode()


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: http.disconnect, which streaming answers watch for

    return replay


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def not_jsonrpc_reason(message: Any) -> str | None:
    """Why a decoded body is not one JSON-RPC 2.0 message, or None when it is one.

    Mirrors what the SDK's transport accepts (a request, a notification, a
    response or an error response), in a sentence a person can act on.
    """
    if isinstance(message, list):
        return "batches are not supported: send one JSON-RPC message per POST"
    if not isinstance(message, dict):
        return "the body must be a JSON-RPC 2.0 message object"
    if not message.keys() & {"method", "result", "error"}:
        return "not a JSON-RPC request, notification or response (no 'method', 'result' or 'error')"
    if message.get("jsonrpc") != "2.0":
        return "'jsonrpc' must be \"2.0\""
    if "method" in message:
        if not isinstance(message["method"], str):
            return "'method' must be a string"
        if "id" in message and not _is_id(message["id"]):
            return "'id' must be a string or an integer"
        if "params" in message and not isinstance(message["params"], dict):
            return "'params' must be an object"
        return None
    if "result" in message and not isinstance(message["result"], dict):
        return "'result' must be an object"
    error = message.get("error")
    if "error" in message and not (
        isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("message"), str)
    ):
        return "'error' must be an object with an integer 'code' and a string 'message'"
    if not _is_id(message.get("id")) and "error" not in message:
        return "a response needs the 'id' of the request it answers"
    return None


class McpFrontDoor:
    """ASGI app for /mcp: the checks above, then the SDK's session manager."""

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        *,
        streaming: StreamableHTTPSessionManager | None = None,
        on_reject: Callable[[str], None] = lambda _limit: None,
        workers: tuple[SessionTags, WorkerLinks] | None = None,
    ) -> None:
        self._manager = manager
        self._streaming = streaming
        """Answers 2026-07-28 requests that want progress, when ``manager`` answers with one JSON body."""
        self._on_reject = on_reject
        self._tags: SessionTags | None = workers[0] if workers is not None else None
        self._links: WorkerLinks | None = workers[1] if workers is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version: str | None = None
        session: bytes | None = None
        for key, value in scope["headers"]:
            if key == _VERSION_HEADER:
                version = value.decode("latin-1")
            elif key == _SESSION_HEADER:
                session = value
        if version is not None and version not in SUPPORTED_VERSIONS:
            spoken = ", ".join(SUPPORTED_VERSIONS)
            message = f"Unsupported protocol version {version[:64]!r}: this server speaks {spoken}"
            data = {"supported": list(SUPPORTED_VERSIONS), "requested": version[:64]}
            await _answer(send, 400, _error_body(JSONRPC_UNSUPPORTED_PROTOCOL_VERSION, message, data))
            return
        manager = self._manager
        body: bytes | None = None
        if scope["method"] == "POST":
            body = await _read_body(receive)
            if body is None:
                return
            modern = version in MODERN_PROTOCOL_VERSIONS
            if not modern:
                reason = self._handshake_body_problem(body)
                if reason is not None:
                    await _answer(send, 400, _error_body(JSONRPC_INVALID_REQUEST, f"Invalid Request: {reason}"))
                    return
            elif self._streaming is not None and b'"progressToken"' in body:
                manager = self._streaming
        if self._tags is not None:
            if session is not None:
                owner = self._tags.owner(session.decode("latin-1"))
                if owner is not None and owner[0] != self._tags.index:
                    assert self._links is not None
                    await self._links.relay(owner[0], scope, body, receive, send)
                    return
                if owner is not None:  # ours: the manager knows it by the SDK's own id
                    sdk_id = owner[1].encode("latin-1")
                    headers = [(k, sdk_id if k == _SESSION_HEADER else v) for k, v in scope["headers"]]
                    scope = {**scope, "headers": headers}
            send = self._tagging(send, self._tags)
        if body is not None:
            receive = _replaying(body, receive)
        if session is not None:
            await manager.handle_request(scope, receive, send)
        else:
            await manager.handle_request(scope, receive, self._sessionless(send))

    @staticmethod
    def _tagging(send: Send, tags: SessionTags) -> Send:
        """``send`` that names this worker in the session id of any answer that carries one."""

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if any(key.lower() == _SESSION_HEADER for key, _ in headers):
                    retagged = [
                        (key, tags.public(value.decode("latin-1")).encode("latin-1"))
                        if key.lower() == _SESSION_HEADER
                        else (key, value)
                        for key, value in headers
                    ]
                    message = {**message, "headers": retagged}
            await send(message)

        return tagged

    @staticmethod
    def _handshake_body_problem(body: bytes) -> str | None:
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            return None  # not JSON: the SDK answers -32700 Parse error
        return not_jsonrpc_reason(message)

    def _sessionless(self, send: Send) -> Send:
        """``send`` for a request that named no session: a refusal names none either."""

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _SESSION_HEADER]
                if message["status"] == 503:
                    self._on_reject("mcp_sessions")
                    headers.append((b"retry-after", str(SESSION_RETRY_AFTER_SECONDS).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return guarded
