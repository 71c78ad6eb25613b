"""The sidecar's settings: environment variables prefixed ``SIDECAR_``.

Built once in ``__main__`` and passed explicitly to each subsystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_schema.limits import DEFAULT_MAX_ARGUMENT_DEPTH
from shared_schema.settings_types import CommaList, Endpoint, endpoint_is_loopback


def default_data_dir() -> Path:
    """Per-user state directory: ``$XDG_DATA_HOME/mcp-p2p/sidecar`` (``~/.local/share/...``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mcp-p2p" / "sidecar"


class SidecarSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIDECAR_", extra="ignore", validate_default=True)

    bridge_endpoint: Endpoint = Field("tcp://127.0.0.1:8001", description="ZeroMQ endpoint the bridge binds.")
    bridge_max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest bridge frame accepted.")
    bridge_max_in_flight: int = Field(1024, ge=1, description="Calls from gateways running at once.")
    bridge_gateway_timeout: float = Field(5.0, gt=0, description="Silence after which a gateway is forgotten.")
    admin_host: str = Field("127.0.0.1", description="Bind address of the admin HTTP server.")
    admin_port: int = Field(8002, ge=0, le=65535, description="Admin HTTP port (/health, /metrics).")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Node key and SQLite state; default ${XDG_DATA_HOME:-~/.local/share}/mcp-p2p/sidecar.",
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="How long SIGTERM waits for in-flight work.")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$", description="Log level.")
    remote_tools_allow: CommaList = Field(
        default_factory=list, description="Gateway tools remote peers may call (none by default)."
    )
    bridge_handshake_timeout: float = Field(
        5.0, gt=0, description="Seconds a bridge connection may take to finish its ZeroMQ handshake."
    )
    max_argument_depth: int = Field(
        DEFAULT_MAX_ARGUMENT_DEPTH, ge=1, description="Deepest nesting of lists/objects in a bridge call's arguments."
    )
    bridge_curve_secret_key_file: FilePath | None = Field(
        None, description="The sidecar's CURVE certificate (.key_secret); required to bind a non-loopback address."
    )
    bridge_curve_client_keys: CommaList = Field(
        default_factory=list,
        description="Gateway public certificates (.key files, or directories of them) allowed to connect with CURVE.",
    )

    @property
    def bridge_curve_enabled(self) -> bool:
        return self.bridge_curve_secret_key_file is not None

    @model_validator(mode="after")
    def _check_bridge_security(self) -> Self:
        """A bridge reachable from other hosts must authenticate and encrypt; refuse to start otherwise."""
        if (self.bridge_curve_secret_key_file is None) != (not self.bridge_curve_client_keys):
            raise ValueError(
                "set both SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE and SIDECAR_BRIDGE_CURVE_CLIENT_KEYS, or neither"
            )
        if self.bridge_curve_secret_key_file is None and not endpoint_is_loopback(self.bridge_endpoint):
            raise ValueError(
                f"SIDECAR_BRIDGE_ENDPOINT {self.bridge_endpoint} is not loopback: a bridge other hosts can reach "
                "needs CURVE keys; set SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE and SIDECAR_BRIDGE_CURVE_CLIENT_KEYS "
                "(make them with python -m shared_schema.curve DIR), or bind 127.0.0.1 / ipc://"
            )
        return self
