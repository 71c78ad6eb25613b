"""Uvicorn as the gateway runs it: its own listening sockets, exit code 0 on a requested stop, readiness.

``GatewayServer`` is uvicorn's ``Server`` with three changes:

* it serves sockets bound beforehand (``gateway/listeners.py``), accepted by
  ``Acceptor`` rather than uvloop's one-connection-per-iteration accept; each
  listener may carry its own ASGI ``state`` (how a worker tells requests
  relayed by another worker from the public ones, ``gateway/worker_links.py``),
  and the public ones may wait for ``before_public`` (a worker joins the port
  once its bridge is up, so the others answer meanwhile);
* a requested stop (SIGTERM/SIGINT) ends in exit code 0: uvicorn re-raises the
  captured signal after its graceful shutdown, so the process would die "by
  SIGTERM", which supervisors and systemd read as a failure.  ``on_exit`` runs
  first, so readiness drops the moment the signal arrives;
* it says when it is serving: to systemd (``READY=1``, ``Type=notify``) when it
  is the gateway's main process, or to the parent process of a worker pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from gateway.listeners import Acceptor, describe
from shared_schema import sd_notify

log = logging.getLogger(__name__)


@dataclass
class Listener:
    """A bound, listening socket, and what the ASGI scope's ``state`` of its requests starts with."""

    sock: socket.socket
    state: dict[str, Any] = field(default_factory=dict)


class GatewayServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        listeners: list[Listener],
        *,
        on_exit: Callable[[], None],
        on_serving: Callable[[], None] | None = None,
        before_public: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(config)
        self._listeners = listeners
        self._on_exit = on_exit
        self._on_serving = on_serving
        self._before_public = before_public

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def factory(state: dict[str, Any]) -> Callable[[], asyncio.Protocol]:
            def create_protocol() -> asyncio.Protocol:
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=state
                )

            return create_protocol

        acceptors = [
            Acceptor(listener.sock, factory({**self.lifespan.state, **listener.state})) for listener in self._listeners
        ]
        self.servers = acceptors  # type: ignore[assignment]  # uvicorn only calls close() and wait_closed()
        private = [acceptor for acceptor, listener in zip(acceptors, self._listeners, strict=True) if listener.state]
        for acceptor in private:
            acceptor.start()
        if self._before_public is not None:  # connections for the public port wait in its backlog meanwhile
            await self._before_public()
        for acceptor in acceptors:
            if acceptor not in private:
                acceptor.start()
        public = [describe(listener.sock) for listener in self._listeners if not listener.state]
        log.info("serving HTTP on %s", ", ".join(public))
        self.started = True
        if self._on_serving is not None:
            self._on_serving()
        else:  # listening, lifespan done: tell systemd (Type=notify) we are up
            sd_notify.notify("READY=1", f"STATUS=serving HTTP on {', '.join(public)}")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._on_serving is None:
            sd_notify.notify("STOPPING=1", "STATUS=draining")
        await super().shutdown(sockets=sockets)
