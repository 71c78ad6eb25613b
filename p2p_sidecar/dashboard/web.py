"""The dashboard's HTTP surface on the admin server.

    GET /                       the page (static/index.html)
    GET /static/...             its CSS, JS and icon (package data)
    GET /api/dashboard          one snapshot, JSON
    GET /api/dashboard/events   server-sent events: a ``snapshot`` event every SIDECAR_DASHBOARD_INTERVAL seconds

The page needs nothing else: no CDN, no font or script from anywhere, so it
works offline and on a phone.  Open event streams are bounded; past the bound
a page falls back to polling the snapshot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from p2p_sidecar.dashboard.auth import SECURITY_HEADERS

log = logging.getLogger(__name__)

MAX_STREAMS = 32
"""Pages open at once with a live stream; more get 503 and poll instead."""

_STATIC = resources.files("p2p_sidecar.dashboard") / "static"


def static_text(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class DashboardStreams:
    def __init__(self, snapshot: Callable[[], dict[str, Any]], interval: float) -> None:
        self._snapshot = snapshot
        self._interval = interval
        self.open = 0

    async def events(self, request: Request) -> Response:
        if self.open >= MAX_STREAMS:
            return Response(
                _json({"error": "busy", "message": f"{MAX_STREAMS} dashboard streams are open; poll /api/dashboard"}),
                status_code=503,
                media_type="application/json",
            )
        return StreamingResponse(
            self._stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _stream(self) -> AsyncIterator[str]:
        self.open += 1
        try:
            yield f"retry: {int(self._interval * 2000)}\n\n"
            while True:
                yield f"event: snapshot\ndata: {_json(self._snapshot())}\n\n"
                await trio.sleep(self._interval)
        finally:
            self.open -= 1


def dashboard_routes(snapshot: Callable[[], dict[str, Any]], *, interval: float) -> list[BaseRoute]:
    index = static_text("index.html").replace("{interval_ms}", str(int(interval * 1000)))
    streams = DashboardStreams(snapshot, interval)

    async def page(_request: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=dict(_headers()))

    async def api(_request: Request) -> Response:
        return Response(_json(snapshot()), media_type="application/json", headers={"cache-control": "no-store"})

    return [
        Route("/", page),
        Route("/api/dashboard", api),
        Route("/api/dashboard/events", streams.events),
        Mount("/static", StaticFiles(packages=[("p2p_sidecar.dashboard", "static")]), name="static"),
    ]


def login_page() -> str:
    return static_text("login.html")


def _headers() -> list[tuple[str, str]]:
    return [(key.decode(), value.decode()) for key, value in SECURITY_HEADERS]
