"""``SIDECAR_ADMIN_TOKEN``: the admin server's bearer token, and the cookie a browser holds instead.

API clients and Prometheus send ``Authorization: Bearer <token>``.  A browser
cannot put a header on a page load or on an ``EventSource``, so the page's
login form trades the token for an HttpOnly, SameSite=Strict cookie whose
value is derived from the token (the token itself is never stored in the
browser).  ``/health`` stays open for probes, and the static assets hold no
data.  Without a token (loopback only, enforced by the settings) nothing is
checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "mcp_p2p_admin"
OPEN_PATHS = ("/health", "/login")
OPEN_PREFIXES = ("/static/",)
MAX_LOGIN_BODY = 4096


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"mcp-p2p dashboard session v1", hashlib.sha256).hexdigest()


class AdminAuth:
    def __init__(self, app: ASGIApp, *, token: str, login_page: str) -> None:
        self.app = app
        self._bearer = f"Bearer {token}".encode()
        self._token = token.encode()
        self._session = session_value(token).encode()
        self._login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/login" and scope["method"] == "POST":
            await self._login(receive, send)
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if path == "/":
            await self._page(send, 401, self._login_page.replace("{error}", ""))
        else:
            body = json.dumps({"error": "unauthorized", "message": "send Authorization: Bearer <SIDECAR_ADMIN_TOKEN>"})
            await _respond(
                send, 401, body.encode(), b"application/json", [(b"www-authenticate", b'Bearer realm="mcp-p2p admin"')]
            )

    def _authorized(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization" and hmac.compare_digest(value, self._bearer):
                return True
            if key == b"cookie":
                for part in value.split(b";"):
                    name, _, cookie = part.strip().partition(b"=")
                    if name == COOKIE.encode() and hmac.compare_digest(cookie, self._session):
                        return True
        return False

    async def _login(self, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_LOGIN_BODY:
                await _respond(send, 413, b"login form too large", b"text/plain")
                return
            if not message.get("more_body"):
                break
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip().encode()
        if not hmac.compare_digest(given, self._token):
            await self._page(send, 401, self._login_page.replace("{error}", "That token is not this node's."))
            return
        cookie = f"{COOKIE}={self._session.decode()}; Path=/; HttpOnly; SameSite=Strict"
        await _respond(send, 303, b"", b"text/plain", [(b"location", b"/"), (b"set-cookie", cookie.encode())])

    async def _page(self, send: Send, status: int, html: str) -> None:
        await _respond(send, status, html.encode(), b"text/html; charset=utf-8", SECURITY_HEADERS)


SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
"""On every page: the page loads only its own assets, so text a peer sent can never run as script."""


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
