"""The sidecar's settings: environment variables prefixed ``SIDECAR_``.

Built once in ``__main__`` and passed explicitly to each subsystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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

    # -- task queue (p2p_sidecar/taskqueue) --
    worker_concurrency: int = Field(
        8, ge=0, le=1024, description="Slots of this node's default worker (0: no default worker)."
    )
    worker_task_types: CommaList = Field(
        default_factory=list, description="Task types this node runs and advertises (default: all installed)."
    )
    queue_lease_seconds: float = Field(
        30.0, gt=0, le=3600, description="Lease on a claimed task; renewed by heartbeats every third of it."
    )
    queue_sync: Literal["normal", "full"] = Field(
        "normal", description="SQLite synchronous mode: normal survives kill -9, full also survives power loss."
    )
    queue_max_queued: int = Field(
        100_000, ge=1, description="Queued tasks allowed; past it task_submit answers 'queue full' (busy)."
    )
    queue_claim_batch: int = Field(32, ge=1, le=256, description="Most tasks a worker claims in one request.")
    task_max_result_bytes: int = Field(
        1 << 20, ge=64, description="Largest task result stored; larger ones fail the task (too_large)."
    )
    task_max_payload_bytes: int = Field(1 << 20, ge=64, description="Largest task payload task_submit accepts.")
    task_default_timeout_seconds: float = Field(
        600.0, gt=0, le=604800, description="Run-time limit of a task submitted without a timeout."
    )
