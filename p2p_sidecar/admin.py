"""The sidecar's admin HTTP server (:8002): ``/health`` and ``/metrics``.

A tiny Starlette app served by Hypercorn's Trio worker, so it shares the
sidecar's event loop instead of needing a thread.  It is read-only; tools are
reached through the gateway, never here.
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
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.settings import SidecarSettings

log = logging.getLogger(__name__)


class AdminServer:
    def __init__(
        self, settings: SidecarSettings, metrics: SidecarMetrics, health: Callable[[], tuple[bool, dict[str, Any]]]
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self.bound: list[str] = []

    def app(self) -> Starlette:
        async def health(_request: Request) -> Response:
            healthy, body = self._health()
            return Response(json.dumps(body), status_code=200 if healthy else 503, media_type="application/json")

        async def metrics(_request: Request) -> Response:
            return Response(self._metrics.render(), media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/health", health), Route("/metrics", metrics)])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = [f"{self._settings.admin_host}:{self._settings.admin_port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("p2p_sidecar.admin.hypercorn")
        config.graceful_timeout = 1.0
        config.h11_max_incomplete_size = 16 * 1024
        config.read_timeout = 10

        async def serving(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
            await serve(self.app(), config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            self.bound = await nursery.start(serving)
            log.info("admin HTTP on %s", ", ".join(self.bound))
            task_status.started()
