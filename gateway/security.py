"""Who may talk to the gateway: bearer token, and Host/Origin checks on /mcp.

Both are plain ASGI middleware assembled once in ``app.py``.  The health
endpoints stay open so probes need no secret; everything else (``/mcp``, the
REST face, ``/metrics``) needs the token when ``GATEWAY_AUTH_TOKEN`` is set.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/health", "/health/ready"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


async def _reject(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BearerAuth:
    """Require ``Authorization: Bearer <token>``; compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = (_header(scope, b"authorization") or "").encode("latin-1")
        if not hmac.compare_digest(presented, self._expected):
            challenge = b'Bearer realm="mcp-p2p-gateway"'
            if presented:
                challenge += b', error="invalid_token"'
            await _reject(send, 401, "missing or invalid bearer token", [(b"www-authenticate", challenge)])
            return
        await self.app(scope, receive, send)


def _matches(value: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or value == pattern:
            return True
        if pattern.endswith(":*") and value.startswith(pattern[:-1]):
            return True
    return False


class HostOriginGuard:
    """DNS-rebinding protection for /mcp, as the MCP specification asks of HTTP servers.

    ``Host`` must be one of the allowed hosts (loopback names on any port,
    plus ``GATEWAY_ALLOWED_HOSTS``; ``*`` allows any).  ``Origin``, when a
    browser sends one, must be an allowed origin (loopback origins plus
    ``GATEWAY_ALLOWED_ORIGINS``).  Failures answer 421 and 403.
    """

    def __init__(self, app: ASGIApp, *, path: str, hosts: list[str], origins: list[str]) -> None:
        self.app = app
        self._path = path
        self._hosts = [*(f"{host}:*" for host in LOOPBACK_HOSTS), *LOOPBACK_HOSTS, *hosts]
        self._origins = [
            *(f"{scheme}://{host}:*" for scheme in ("http", "https") for host in LOOPBACK_HOSTS),
            *(f"{scheme}://{host}" for scheme in ("http", "https") for host in LOOPBACK_HOSTS),
            *origins,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self._path:
            host = _header(scope, b"host")
            if host is None or not _matches(host, self._hosts):
                await _reject(send, 421, f"Host {host!r} is not allowed; add it to GATEWAY_ALLOWED_HOSTS")
                return
            origin = _header(scope, b"origin")
            if origin is not None and not _matches(origin, self._origins):
                await _reject(send, 403, f"Origin {origin!r} is not allowed; add it to GATEWAY_ALLOWED_ORIGINS")
                return
        await self.app(scope, receive, send)
