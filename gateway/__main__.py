"""``python -m gateway``: run the gateway alone (``make run`` starts it beside the sidecar).

One process serves the port, or with ``GATEWAY_WORKERS`` (``--workers``) above
1 this process becomes the parent of that many worker processes
(``gateway/workers.py``), each started as ``python -m gateway`` again with the
hidden options that hand it its sockets.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from gateway.listeners import ListenError, bind_tcp
from gateway.settings import GatewaySettings
from shared_schema import tracing
from shared_schema.settings_types import describe_settings_error

LISTEN_BACKLOG = 2048
WORKER_JOIN_WAIT = 5.0
"""Seconds a gateway worker waits for its bridge before it takes connections from the port all the same."""
"""Connections the kernel queues for the gateway to accept (uvicorn's default; capped by net.core.somaxconn)."""


@dataclass(frozen=True)
class WorkerArgs:
    """What the parent of a worker pool (gateway/workers.py) tells each worker it starts."""

    index: int
    directory: Path
    listen_fds: list[int]
    private_fd: int
    ready_fd: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="MCP tool gateway: /mcp (Streamable HTTP), the REST face, and the bridge to the P2P sidecar. "
        "Every option also has a GATEWAY_* environment variable (see the README); options win.",
    )
    parser.add_argument("--host", help="bind address (GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (GATEWAY_PORT, default 8000)")
    parser.add_argument("--workers", type=int, help="gateway processes on the port (GATEWAY_WORKERS, default 1)")
    parser.add_argument("--bridge-endpoint", help="sidecar endpoint, tcp:// or ipc:// (GATEWAY_BRIDGE_ENDPOINT)")
    parser.add_argument("--no-bridge", action="store_true", help="run without a sidecar (GATEWAY_BRIDGE_ENABLED=false)")
    parser.add_argument("--tool-dirs", help="comma-separated tool directories (GATEWAY_TOOL_DIRS)")
    parser.add_argument("--log-level", help="critical, error, warning, info or debug (GATEWAY_LOG_LEVEL)")
    # Set by the parent of a worker pool for the workers it starts; not for people.
    for option in ("--worker-index", "--worker-dir", "--listen-fds", "--private-fd", "--ready-fd"):
        parser.add_argument(option, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    return _overrides(_parser().parse_args(argv))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "bridge_endpoint": args.bridge_endpoint,
        "tool_dirs": args.tool_dirs,
        "log_level": args.log_level,
    }
    if args.no_bridge:
        overrides["bridge_enabled"] = False
    return {key: value for key, value in overrides.items() if value is not None}


def _worker_args(args: argparse.Namespace) -> WorkerArgs | None:
    if args.worker_index is None:
        return None
    return WorkerArgs(
        index=int(args.worker_index),
        directory=Path(args.worker_dir),
        listen_fds=[int(fd) for fd in args.listen_fds.split(",")],
        private_fd=int(args.private_fd),
        ready_fd=int(args.ready_fd),
    )


def load_settings(argv: list[str] | None = None) -> GatewaySettings:
    return _settings(parse_args(argv))


def _settings(overrides: dict[str, Any]) -> GatewaySettings:
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        print(describe_settings_error(exc, "GATEWAY_"), file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    settings = _settings(_overrides(args))
    worker = _worker_args(args)
    tracing.install_log_context("gateway" if worker is None else f"gateway[{worker.index}]", settings.log_level)
    if settings.log_level != "debug":
        # The MCP SDK logs every session it opens and closes at INFO: one line per agent connection.
        logging.getLogger("mcp.server").setLevel(logging.WARNING)
    if worker is None and settings.workers > 1:
        from gateway.workers import run_pool

        raise SystemExit(run_pool(settings, argv, backlog=LISTEN_BACKLOG))
    if worker is None:
        try:  # before the slow part: a port in use says so at once
            sockets = bind_tcp(settings.host, settings.port, backlog=LISTEN_BACKLOG)
        except ListenError as exc:
            print(f"gateway cannot start: {exc} (GATEWAY_HOST, GATEWAY_PORT)", file=sys.stderr)
            raise SystemExit(1) from None
    else:
        sockets = [socket.socket(fileno=fd) for fd in worker.listen_fds]
    flush_traces = tracing.configure(
        settings.otlp_service_name,
        settings.otlp_endpoint,
        instance_id=f"{socket.gethostname()}:{os.getpid()}",
        sample_ratio=settings.otlp_sample_ratio,
    )
    try:
        serve(settings, sockets, worker)
    finally:
        flush_traces()


def serve(settings: GatewaySettings, sockets: list[socket.socket], worker: WorkerArgs | None) -> None:
    """Build the app and serve it on ``sockets`` (plus, for a worker, its private socket) until stopped."""
    # importing the app is the slow part
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from gateway.app import Gateway, create_app
    from gateway.bridge_client import SidecarState
    from gateway.http_limits import guarded_http_protocol
    from gateway.lifecycle import hold_event_streams
    from gateway.oauth import OAuthConfigError
    from gateway.server import GatewayServer, Listener
    from gateway.uvicorn_internals import UvicornMismatch, check_uvicorn
    from gateway.worker_links import RELAYED, WorkerPlace
    from shared_schema.curve import CurveKeyError

    place = None if worker is None else WorkerPlace(worker.index, settings.workers, worker.directory)
    try:
        check_uvicorn()
        gateway = Gateway(settings, place)
        app = create_app(settings, gateway)
    except (OAuthConfigError, CurveKeyError, UvicornMismatch) as exc:
        print(f"gateway cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    protocol = guarded_http_protocol(
        AutoHTTPProtocol,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_header_bytes=settings.max_header_bytes,
        max_connections_per_client=settings.max_connections_per_client,
        on_reject=gateway.count_rejection,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,  # type: ignore[arg-type]  # asyncio.wait_for
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # call_later takes a float
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        backlog=LISTEN_BACKLOG,
        log_config=None,
    )
    listeners = [Listener(sock) for sock in sockets]
    on_serving = None
    if worker is not None:
        listeners.append(Listener(socket.socket(fileno=worker.private_fd), {RELAYED: True}))
        ready_fd = worker.ready_fd

        def on_serving() -> None:  # tell the pool's parent; it tells systemd once every worker serves
            os.write(ready_fd, f"{worker.index}\n".encode())

    before_public = None
    bridge = gateway.bridge
    if worker is not None and bridge is not None:

        async def before_public() -> None:
            # A worker (re)started beside others takes connections from the shared port only once it can serve
            # P2P tools, or after a short wait: without a sidecar it serves its local tools, as one process does.
            await bridge.wait_until(SidecarState.UP, WORKER_JOIN_WAIT)

    hold_event_streams()  # SIGTERM drains calls first; Gateway.drain ends the event streams after
    server = GatewayServer(
        config, listeners, on_exit=gateway.begin_shutdown, on_serving=on_serving, before_public=before_public
    )
    server.run()
    if not server.started:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
