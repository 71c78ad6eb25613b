"""``python -m gateway``: run the gateway alone (``make run`` starts it beside the sidecar)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from shared_schema import sd_notify, tracing
from shared_schema.settings_types import describe_settings_error


class _Server(uvicorn.Server):
    """Uvicorn, except that a requested stop (SIGTERM/SIGINT) ends in exit code 0.

    Uvicorn re-raises the captured signal after its graceful shutdown, so the
    process would die "by SIGTERM"; supervisors and systemd read that as a
    failure.  Here the same handlers run, and the signal is not re-raised.
    ``on_exit`` runs first, so readiness drops the moment the signal arrives.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

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
        await super().startup(sockets=sockets)
        if self.started:  # listening, lifespan done: tell systemd (Type=notify) we are up
            sd_notify.notify("READY=1", f"STATUS=serving HTTP on {self.config.host}:{self.config.port}")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        sd_notify.notify("STOPPING=1", "STATUS=draining")
        await super().shutdown(sockets=sockets)


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="MCP tool gateway: /mcp (Streamable HTTP), the REST face, and the bridge to the P2P sidecar. "
        "Every option also has a GATEWAY_* environment variable (see the README); options win.",
    )
    parser.add_argument("--host", help="bind address (GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (GATEWAY_PORT, default 8000)")
    parser.add_argument("--bridge-endpoint", help="sidecar endpoint, tcp:// or ipc:// (GATEWAY_BRIDGE_ENDPOINT)")
    parser.add_argument("--no-bridge", action="store_true", help="run without a sidecar (GATEWAY_BRIDGE_ENABLED=false)")
    parser.add_argument("--tool-dirs", help="comma-separated tool directories (GATEWAY_TOOL_DIRS)")
    parser.add_argument("--log-level", help="critical, error, warning, info or debug (GATEWAY_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "bridge_endpoint": args.bridge_endpoint,
        "tool_dirs": args.tool_dirs,
        "log_level": args.log_level,
    }
    if args.no_bridge:
        overrides["bridge_enabled"] = False
    return {key: value for key, value in overrides.items() if value is not None}


def load_settings(argv: list[str] | None = None) -> GatewaySettings:
    overrides = parse_args(argv)
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        print(describe_settings_error(exc, "GATEWAY_"), file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)
    tracing.install_log_context("gateway", settings.log_level)
    flush_traces = tracing.configure(
        settings.otlp_service_name,
        settings.otlp_endpoint,
        instance_id=f"{socket.gethostname()}:{os.getpid()}",
        sample_ratio=settings.otlp_sample_ratio,
    )
    if settings.log_level != "debug":
        # The MCP SDK logs every session it opens and closes at INFO: one line per agent connection.
        logging.getLogger("mcp.server").setLevel(logging.WARNING)
    # after logging is set up: importing the app is the slow part
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from gateway.app import Gateway, create_app
    from gateway.http_limits import guarded_http_protocol
    from gateway.lifecycle import hold_event_streams
    from gateway.oauth import OAuthConfigError
    from gateway.uvicorn_internals import UvicornMismatch, check_uvicorn
    from shared_schema.curve import CurveKeyError

    try:
        check_uvicorn()
        gateway = Gateway(settings)
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
        log_config=None,
    )
    hold_event_streams()  # SIGTERM drains calls first; Gateway.drain ends the event streams after
    server = _Server(config, on_exit=gateway.begin_shutdown)
    try:
        server.run()
    finally:
        flush_traces()
    if not server.started:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
