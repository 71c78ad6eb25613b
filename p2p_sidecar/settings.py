"""The sidecar's settings: environment variables prefixed ``SIDECAR_``.

Built once in ``__main__`` and passed explicitly to each subsystem.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_schema.settings_types import CommaList, Endpoint, check_tool_dirs


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
    tool_dirs: CommaList = Field(
        default_factory=list,
        description="Tool directories (tools/<category>/<tool>.py) whose P2P-marked tools this sidecar serves.",
    )
    tool_entry_points: bool = Field(
        True, description="Also serve P2P-marked tools installed under the mcp_p2p.tools entry points."
    )

    @field_validator("tool_dirs")
    @classmethod
    def tool_dirs_exist(cls, value: list[str]) -> list[str]:
        return check_tool_dirs(value)
