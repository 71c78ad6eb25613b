"""The sidecar's admin HTTP server (:8002): the dashboard at ``/`` with its ``/api``, ``/health`` and ``/metrics``.

A small Starlette app served by Hypercorn's Trio worker, so it shares the
sidecar's event loop instead of needing a thread.  It only reads; tools are
reached through the gateway, never here.  With ``SIDECAR_ADMIN_TOKEN`` set
(required off loopback) everything but ``/health`` needs the token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from p2p_sidecar.dashboard.auth import AdminAuth
from p2p_sidecar.dashboard.web import dashboard_routes, login_page
from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.settings import SidecarSettings

log = logging.getLogger(__name__)


class AdminServer:
    def __init__(
        self,
        settings: SidecarSettings,
        metrics: SidecarMetrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        snapshot: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._snapshot = snapshot
        self.bound: list[str] = []

    def app(self) -> Starlette:
        async def health(_request: Request) -> Response:
            healthy, body = self._health()
            return Response(json.dumps(body), status_code=200 if healthy else 503, media_type="application/json")

        async def metrics(_request: Request) -> Response:
            return Response(self._metrics.render(), media_type=CONTENT_TYPE_LATEST)

        routes: list[BaseRoute] = [Route("/health", health), Route("/metrics", metrics)]
        if self._snapshot is not None:
            routes.extend(dashboard_routes(self._snapshot, interval=self._settings.dashboard_interval))
        middleware = []
        if self._settings.admin_token is not None:
            token = self._settings.admin_token.get_secret_value()
            middleware.append(Middleware(AdminAuth, token=token, login_page=login_page()))
        return Starlette(routes=routes, middleware=middleware)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = [f"{self._settings.admin_host}:{self._settings.admin_port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("p2p_sidecar.admin.hypercorn")
        config.graceful_timeout = 1.0
        config.h11_max_incomplete_size = 16 * 1024
        config.read_timeout = 10

        async def serving(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
            # Starlette types ASGI messages as plain mappings, hypercorn as TypedDicts: the same protocol
            await serve(self.app(), config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            self.bound = await nursery.start(serving)
            log.info("admin HTTP on %s", ", ".join(self.bound))
            task_status.started()
