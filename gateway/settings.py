"""The gateway's settings: environment variables prefixed ``GATEWAY_``.

Built once in ``__main__`` and passed explicitly; nothing reads the
environment after start-up.  Every field is documented in the README table.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_schema.settings_types import CommaList, Endpoint, check_tool_dirs


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds; loopback unless you mean it.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    bridge_enabled: bool = Field(True, description="Connect to a P2P sidecar; false runs the gateway alone.")
    bridge_endpoint: Endpoint = Field("tcp://127.0.0.1:8001", description="ZeroMQ endpoint of the sidecar.")
    bridge_max_in_flight: int = Field(1024, ge=1, description="P2P calls in flight before new ones get 'busy'.")
    bridge_max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest bridge frame accepted.")
    bridge_heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between heartbeats to the sidecar.")
    bridge_heartbeat_timeout: float = Field(3.0, gt=0, description="Silence after which the sidecar counts as down.")
    call_timeout_cap: float = Field(300.0, gt=0, description="Upper bound on any tool's timeout_seconds.")
    max_inbound_calls: int = Field(256, ge=1, description="Calls from the sidecar (remote peers) run at once.")
    auth_token: SecretStr | None = Field(None, description="Bearer token required on /mcp, REST and /metrics.")
    allowed_hosts: CommaList = Field(default_factory=list, description="Extra Host values /mcp accepts.")
    allowed_origins: CommaList = Field(default_factory=list, description="Extra Origin values /mcp accepts.")
    tool_dirs: CommaList = Field(default_factory=list, description="Directories of tools/<category>/<tool>.py.")
    tool_entry_points: bool = Field(
        True, description="Also mount tools installed under the mcp_p2p.tools entry points."
    )
    tool_cache_dir: str | None = Field(
        None,
        description="Tool-schema cache folder (default ${XDG_CACHE_HOME:-~/.cache}/mcp-p2p); 'off' disables it.",
    )
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$", description="Log level.")
    graceful_shutdown_seconds: float = Field(10.0, ge=0, description="How long SIGTERM waits for calls.")

    @field_validator("tool_dirs")
    @classmethod
    def tool_dirs_exist(cls, value: list[str]) -> list[str]:
        return check_tool_dirs(value)
