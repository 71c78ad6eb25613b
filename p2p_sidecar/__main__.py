"""``python -m p2p_sidecar``: run the sidecar alone (``make run`` starts it beside the gateway)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

import trio
from pydantic import ValidationError

from p2p_sidecar.settings import SidecarSettings
from shared_schema import tracing
from shared_schema.settings_types import describe_settings_error


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m p2p_sidecar",
        description="P2P sidecar: a Trio process owning the libp2p node, serving P2P tools to gateways over the "
        "ZeroMQ bridge. Every option also has a SIDECAR_* environment variable (see the README); options win. "
        "`python -m p2p_sidecar join [--data-dir DIR] [--env-file FILE]` prints what another node needs to join "
        "this node's network.",
    )
    parser.add_argument("--bridge-endpoint", help="endpoint to bind, tcp:// or ipc:// (SIDECAR_BRIDGE_ENDPOINT)")
    parser.add_argument("--admin-host", help="admin HTTP bind address (SIDECAR_ADMIN_HOST, default 127.0.0.1)")
    parser.add_argument("--admin-port", type=int, help="admin HTTP port (SIDECAR_ADMIN_PORT, default 8002)")
    parser.add_argument("--data-dir", help="state directory (SIDECAR_DATA_DIR)")
    parser.add_argument("--tool-dirs", help="comma-separated tool directories with P2P tools (SIDECAR_TOOL_DIRS)")
    parser.add_argument("--log-level", help="critical, error, warning, info or debug (SIDECAR_LOG_LEVEL)")
    parser.add_argument(
        "--env-file", help="also read SIDECAR_* settings from this KEY=VALUE file (the environment wins)"
    )
    args = parser.parse_args(argv)
    overrides = {
        "bridge_endpoint": args.bridge_endpoint,
        "admin_host": args.admin_host,
        "admin_port": args.admin_port,
        "data_dir": args.data_dir,
        "tool_dirs": args.tool_dirs,
        "log_level": args.log_level,
        "_env_file": args.env_file,
    }
    return {key: value for key, value in overrides.items() if value is not None}


def load_settings(argv: list[str] | None = None) -> SidecarSettings:
    overrides = parse_args(argv)
    try:
        return SidecarSettings(**overrides)
    except ValidationError as exc:
        print(describe_settings_error(exc, "SIDECAR_"), file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["join"]:
        # Print what another node needs to join this node's network (the secret and a bootstrap address).
        from p2p_sidecar import join

        raise SystemExit(join.main(load_settings(argv[1:])))
    settings = load_settings(argv)
    tracing.install_log_context("sidecar", settings.log_level)
    flush_traces = tracing.configure(
        settings.otlp_service_name,
        settings.otlp_endpoint,
        instance_id=f"{socket.gethostname()}:{os.getpid()}",
        sample_ratio=settings.otlp_sample_ratio,
    )
    from p2p_sidecar.errors import StartupError
    from p2p_sidecar.main import run

    if not os.environ.get("LIBP2P_DEBUG"):
        # Importing libp2p detaches its logger (propagate=False, no handler) unless LIBP2P_DEBUG is set, so
        # its warnings reached stderr unformatted; route them through this process's format instead.
        libp2p_log = logging.getLogger("libp2p")
        libp2p_log.propagate = True
        libp2p_log.setLevel(logging.WARNING)
        # its auto-connector forces INFO on its own logger at import; the node stops that component anyway
        logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)
        # Ordinary network events it logs as errors (a peer hung up, refused a protocol...) become debug lines,
        # and anything else it repeats is shown once a minute per call site.
        from p2p_sidecar.node.log_noise import Libp2pNoiseFilter

        noise = Libp2pNoiseFilter()
        for handler in logging.getLogger().handlers:
            handler.addFilter(noise)

    try:
        trio.run(run, settings)
    except (StartupError, BaseExceptionGroup) as exc:
        flush_traces()
        # Trio's nurseries wrap a start-up failure in exception groups; unwrap a lone one to report it in one line.
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if not isinstance(error, StartupError):
            raise
        print(f"sidecar cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    flush_traces()


if __name__ == "__main__":
    main()
