"""The gateway's settings: environment variables prefixed ``GATEWAY_``.

Built once in ``__main__`` and passed explicitly; nothing reads the
environment after start-up.  Every field is documented in the README table.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared_schema.limits import DEFAULT_MAX_ARGUMENT_DEPTH
from shared_schema.settings_types import (
    CommaList,
    Endpoint,
    OtlpEndpoint,
    OtlpSampleRatio,
    check_tool_dirs,
    endpoint_is_loopback,
)

ASYMMETRIC_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""A resource server holds only public keys; HS* would need the issuer's shared secret, and "none" is no check."""


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds; loopback unless you mean it.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Gateway processes serving the port, each with its own bridge connection to the sidecar "
        "(1: this process alone). Limits below apply to each process.",
    )
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
    tool_selection: Literal["original", "wide"] = Field(
        "original",
        description="Which functions of a collection module are tools: 'original' (ipfs_datasets_py's rule) or "
        "'wide' (also every public function of a module none of whose functions is named like it).",
    )
    tool_allow_installs: bool = Field(
        False, description="Let mounted collections install packages (their auto-installers are off otherwise)."
    )
    mcp_json_response: bool = Field(
        True,
        description="Answer each /mcp request with one JSON body; false streams answers as SSE "
        "(only needed for notifications sent during a call).",
    )
    mcp_max_sessions: int = Field(
        10_000,
        ge=1,
        description="Handshake-era MCP sessions open at once; a client opening one more gets 503 with Retry-After "
        "(2026-07-28 requests hold no session).",
    )
    mcp_session_idle_timeout: float = Field(
        1800.0, gt=0, description="Seconds an MCP session may go without a request before it is closed (then 404)."
    )
    mcp_tasks: bool = Field(
        True,
        description="Serve the MCP Tasks extension (2026-07-28 clients get task handles for tools that support tasks; "
        "the tasks live in the sidecar's queue).",
    )
    mcp_task_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between tasks/get polls suggested to clients (pollIntervalMs)."
    )
    mcp_task_min_timeout: float = Field(
        60.0,
        gt=0,
        description="Tools with a timeout_seconds at least this long support tasks unless their metadata says "
        "otherwise (task_support).",
    )
    opentelemetry: bool = Field(
        False, description="Run FastAPI's native OpenTelemetry instrumentation (needs configured OTel providers)."
    )
    otlp_endpoint: OtlpEndpoint = None
    otlp_service_name: str = Field("mcp-p2p-gateway", min_length=1, description="service.name of exported spans.")
    otlp_sample_ratio: OtlpSampleRatio = 1.0
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$", description="Log level.")
    graceful_shutdown_seconds: float = Field(10.0, ge=0, description="How long SIGTERM waits for calls.")

    @field_validator("tool_dirs")
    @classmethod
    def tool_dirs_exist(cls, value: list[str]) -> list[str]:
        return check_tool_dirs(value)

    # -- limits (docs/reliability.md) --
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest HTTP request body on any path; larger gets 413."
    )
    body_timeout: float = Field(30.0, gt=0, description="Seconds a client may take to send a request body (408).")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers; then the connection closes."
    )
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest request head (request line + headers).")
    keep_alive_timeout: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    max_connections: int = Field(
        2048, ge=1, description="Connections plus running requests before new requests get 503."
    )
    max_connections_per_client: int = Field(
        256, ge=1, description="Open connections from one client address; more are answered 429 and closed."
    )
    max_calls_per_client: int = Field(
        128, ge=1, description="Tool calls in flight from one client address; more get 429 / JSON-RPC -32000."
    )
    max_argument_depth: int = Field(
        DEFAULT_MAX_ARGUMENT_DEPTH, ge=1, description="Deepest nesting of lists/objects in tool arguments."
    )
    # -- bridge encryption (required when GATEWAY_BRIDGE_ENDPOINT is not loopback) --
    bridge_curve_secret_key_file: FilePath | None = Field(
        None, description="This gateway's CURVE certificate (.key_secret) for a bridge that leaves the machine."
    )
    bridge_curve_server_key_file: FilePath | None = Field(
        None, description="The sidecar's public CURVE certificate (.key) this gateway trusts."
    )
    # -- OAuth resource-server mode (instead of GATEWAY_AUTH_TOKEN) --
    oauth_issuer_url: str | None = Field(None, description="OAuth: authorization server whose JWTs are accepted.")
    oauth_resource_url: str | None = Field(
        None, description="OAuth: this server's public /mcp URL (token audience, protected-resource metadata)."
    )
    oauth_audience: str | None = Field(
        None, description="OAuth: the 'aud' tokens must carry; default GATEWAY_OAUTH_RESOURCE_URL."
    )
    oauth_required_scopes: CommaList = Field(default_factory=list, description="OAuth: scopes every token needs.")
    oauth_public_key_file: FilePath | None = Field(None, description="OAuth: PEM public key that signs the tokens.")
    oauth_jwks_file: FilePath | None = Field(None, description="OAuth: JWKS file with the signing keys (by kid).")
    oauth_algorithms: CommaList = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"], description="OAuth: JWT signature algorithms accepted."
    )

    @field_validator("oauth_issuer_url", "oauth_resource_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("oauth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - ASYMMETRIC_JWT_ALGORITHMS)
        if unknown or not value:
            raise ValueError(f"use public-key algorithms only ({', '.join(sorted(ASYMMETRIC_JWT_ALGORITHMS))})")
        return value

    @property
    def oauth_enabled(self) -> bool:
        return self.oauth_issuer_url is not None

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        """Refuse combinations that would silently run less protected than asked."""
        curve = (self.bridge_curve_secret_key_file, self.bridge_curve_server_key_file)
        if (curve[0] is None) != (curve[1] is None):
            raise ValueError(
                "set both GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE and GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE, or neither"
            )
        if self.bridge_enabled and curve[0] is None and not endpoint_is_loopback(self.bridge_endpoint):
            raise ValueError(
                f"GATEWAY_BRIDGE_ENDPOINT {self.bridge_endpoint} leaves this machine: set "
                "GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE and GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE "
                "(make them with python -m shared_schema.curve DIR)"
            )
        oauth = [self.oauth_issuer_url, self.oauth_resource_url]
        if any(oauth):
            if not all(oauth) or (self.oauth_public_key_file is None) == (self.oauth_jwks_file is None):
                raise ValueError(
                    "OAuth needs GATEWAY_OAUTH_ISSUER_URL, GATEWAY_OAUTH_RESOURCE_URL and exactly one of "
                    "GATEWAY_OAUTH_PUBLIC_KEY_FILE or GATEWAY_OAUTH_JWKS_FILE"
                )
            if self.auth_token is not None:
                raise ValueError("GATEWAY_AUTH_TOKEN and GATEWAY_OAUTH_* are alternatives: set one of them")
        return self
