"""The sidecar's settings: environment variables prefixed ``SIDECAR_``.

Built once in ``__main__`` and passed explicitly to each subsystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from p2p_sidecar.node.addresses import check_announce_addr, check_bootstrap_addr, check_listen_addr, check_peer_id
from p2p_sidecar.node.membership import MIN_SECRET_BYTES, SecretFileError, read_secret
from shared_schema.limits import DEFAULT_MAX_ARGUMENT_DEPTH
from shared_schema.settings_types import (
    CommaList,
    Endpoint,
    OtlpEndpoint,
    OtlpSampleRatio,
    check_tool_dirs,
    endpoint_is_loopback,
    host_is_loopback,
    split_list,
)

ListenAddrs = Annotated[list[Annotated[str, AfterValidator(check_listen_addr)]], NoDecode, BeforeValidator(split_list)]
AnnounceAddrs = Annotated[
    list[Annotated[str, AfterValidator(check_announce_addr)]], NoDecode, BeforeValidator(split_list)
]
PeerAddrs = Annotated[list[Annotated[str, AfterValidator(check_bootstrap_addr)]], NoDecode, BeforeValidator(split_list)]
"""Lists of multiaddrs, written like every list setting (``a,b`` or a JSON list), each entry checked at start."""
PeerIds = Annotated[list[Annotated[str, AfterValidator(check_peer_id)]], NoDecode, BeforeValidator(split_list)]


PEER_MESSAGE_FRAMING_BYTES = 64 * 1024
"""Room kept in a peer message for what surrounds one task's payload or result (ids, keys, an error text)."""


def msgpack_bound(json_bytes: int) -> int:
    """The most bytes a JSON value of ``json_bytes`` (compact UTF-8) can take in msgpack on the peer protocol.

    msgpack is no larger than JSON for strings, integers, lists and maps, but a float always takes 9
    bytes where JSON may write 4 (``1.0,``): 9/4 bounds the growth.
    """
    return -(-json_bytes * 9 // 4)


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
    admin_port: int = Field(
        8002, ge=0, le=65535, description="Admin HTTP port (the dashboard at /, its /api, /health, /metrics)."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the dashboard, its /api and /metrics (/health stays open for probes); "
        "required when SIDECAR_ADMIN_HOST is not loopback.",
    )
    dashboard_interval: float = Field(
        1.0, ge=0.1, le=60, description="Seconds between the dashboard's live updates (server-sent events)."
    )
    otlp_endpoint: OtlpEndpoint = None
    otlp_service_name: str = Field("mcp-p2p-sidecar", min_length=1, description="service.name of exported spans.")
    otlp_sample_ratio: OtlpSampleRatio = 1.0
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
    tool_cache_dir: str | None = Field(
        None,
        description="Tool-schema cache folder, so a restart announces the collection's P2P tools without importing "
        "them (default SIDECAR_DATA_DIR); 'off' disables it.",
    )
    tool_selection: Literal["original", "wide"] = Field(
        "original", description="Which functions of a collection module are tools (as GATEWAY_TOOL_SELECTION)."
    )
    tool_allow_installs: bool = Field(
        False, description="Let mounted collections install packages (their auto-installers are off otherwise)."
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
    worker_test_task_types: bool = Field(
        False, description="Also run and advertise the test aid task types (fail), for tests and benches only."
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
    queue_max_leases_per_peer: int = Field(
        1024,
        ge=1,
        description="Tasks one other peer may hold (running) from this node at once; past it its claims get "
        "nothing more.",
    )
    task_max_result_bytes: int = Field(
        1 << 20, ge=64, description="Largest task result stored; larger ones fail the task (too_large)."
    )
    task_max_payload_bytes: int = Field(1 << 20, ge=64, description="Largest task payload task_submit accepts.")
    task_default_timeout_seconds: float = Field(
        600.0, gt=0, le=604800, description="Run-time limit of a task submitted without a timeout."
    )
    # -- libp2p node (p2p_sidecar/node) --
    listen_addrs: ListenAddrs = Field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"],
        description="libp2p listen multiaddrs (/ip4/HOST/tcp/PORT or /ip6/...; port 0 picks a free one).",
    )
    announce_addrs: AnnounceAddrs = Field(
        default_factory=list, description="Addresses peers are told to dial instead of the listen addresses."
    )
    bootstrap_peers: PeerAddrs = Field(
        default_factory=list,
        description="Peers dialled at start and re-dialled with backoff: multiaddrs, ending in /p2p/<peer id> "
        "when it is known (without it, the id is learned from the handshake).",
    )
    bootstrap_file: Path | None = Field(
        None, description="File of more bootstrap peer multiaddrs, one per line (# starts a comment)."
    )
    target_connections: int = Field(
        8, ge=0, le=1000, description="Peers the node keeps connected when it knows enough."
    )
    mdns: bool = Field(False, description="Discover peers on the local network with mDNS.")
    max_known_peers: int = Field(
        10_000, ge=16, description="Peers remembered; past it the stalest peer not connected is forgotten."
    )
    peer_ping_interval: float = Field(2.0, gt=0, le=600, description="Seconds between liveness pings to each peer.")
    peer_gone_timeout: float = Field(
        10.0, gt=0, le=3600, description="A peer unanswered for this long is marked gone and disconnected."
    )
    peer_exchange_interval: float = Field(
        10.0, gt=0, le=3600, description="Seconds between asking connected peers whom they know."
    )
    redial_max_backoff: float = Field(
        30.0, gt=0, le=3600, description="Longest wait between re-dials of a bootstrap or persisted peer."
    )
    peer_forget_after_failures: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Failed dials in a row after which a peer that is neither bootstrap nor persisted is forgotten.",
    )
    peer_max_age: float = Field(
        86400.0,
        gt=0,
        description="Seconds without hearing from a peer (neither bootstrap nor persisted) after which it is "
        "forgotten.",
    )
    peer_idle_timeout: float = Field(
        120.0,
        gt=0,
        description="A connected peer that does not serve /mcp-p2p/rpc/1.0.0 (and is neither bootstrap nor "
        "persisted) is hung up on after this many seconds without a request from it.",
    )
    p2p_max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest message accepted on the peer protocol; at least 9/4 of the larger task "
        "payload/result limit plus 64 KiB.",
    )
    p2p_request_timeout: float = Field(
        10.0, gt=0, le=300, description="Deadline of the node's own requests to peers (hello, ping, exchange)."
    )
    p2p_streams_per_peer: int = Field(
        8, ge=1, le=256, description="Pooled outbound streams per peer: requests in flight to one peer."
    )
    p2p_max_inbound_requests: int = Field(
        256, ge=1, description="Requests from peers running at once before new ones get 'busy'."
    )
    p2p_max_inbound_streams_per_peer: int = Field(
        64,
        ge=4,
        le=4096,
        description="Streams of our protocol one peer may hold open to this node; more are reset at once.",
    )
    p2p_handshake_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a libp2p connection may take to finish Noise + Yamux (and a stream its protocol "
        "negotiation); then it is dropped.",
    )
    p2p_frame_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a peer-protocol message may take to arrive once its first byte did; a slower one "
        "resets its stream (raise it for large messages over slow links).",
    )
    p2p_max_partial_bytes_per_peer: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Bytes of unfinished messages one peer may have this node hold (on all its streams); a stream "
        "that would pass it is reset. At least SIDECAR_P2P_MAX_MESSAGE_BYTES.",
    )
    p2p_max_partial_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Bytes of unfinished messages this node holds for all peers together; a stream that would pass "
        "it is reset. At least SIDECAR_P2P_MAX_PARTIAL_BYTES_PER_PEER.",
    )
    p2p_max_connections: int = Field(
        300,
        ge=8,
        le=100_000,
        description="libp2p connections in total; at most five sixths of them inbound (the rest stay free for "
        "this node's own dials); past it new ones are closed at once.",
    )

    # -- who belongs to this node's network (p2p_sidecar/node/membership.py) --
    peer_allowlist: PeerIds = Field(
        default_factory=list,
        description="Peer ids that may claim this node's tasks, send it work and call its tools "
        "(empty: any peer that proves the network secret).",
    )
    network_secret_file: FilePath | None = Field(
        None,
        description="File with this network's shared secret (16+ bytes); peers must prove it in hello "
        "(HMAC, the secret never travels) to claim tasks or call tools.",
    )
    network_secret: SecretStr | None = Field(
        None,
        description="The network's shared secret itself (16+ characters), instead of a file; "
        "`python -m p2p_sidecar join` prints it for another node.",
    )
    network_open: bool = Field(
        False,
        description="Run an open network: any peer that connects may claim tasks, send work and call allowed "
        "tools. Off: closed by the secret (SIDECAR_NETWORK_SECRET[_FILE], else network.secret made in "
        "SIDECAR_DATA_DIR on first start) and/or SIDECAR_PEER_ALLOWLIST.",
    )

    @field_validator("network_secret_file")
    @classmethod
    def _secret_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                read_secret(value)
            except SecretFileError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("network_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"a network secret needs at least {MIN_SECRET_BYTES} bytes (its value is not shown)")
        return value

    @model_validator(mode="after")
    def _one_way_to_membership(self) -> Self:
        """An open network with a secret or an allowlist, or two secrets, is a contradiction: refuse to guess."""
        if self.network_secret is not None and self.network_secret_file is not None:
            raise ValueError("set SIDECAR_NETWORK_SECRET or SIDECAR_NETWORK_SECRET_FILE, not both")
        if self.network_open and (self.network_secret or self.network_secret_file or self.peer_allowlist):
            raise ValueError(
                "SIDECAR_NETWORK_OPEN=true cannot be combined with SIDECAR_NETWORK_SECRET, "
                "SIDECAR_NETWORK_SECRET_FILE or SIDECAR_PEER_ALLOWLIST (they close the network)"
            )
        return self

    @model_validator(mode="after")
    def _sizes_and_timings_fit(self) -> Self:
        """Settings that bound one another, checked once every one has its value (so their order in this class
        plays no part). A task's payload travels to its worker, and its result back, in one peer message
        (docs/taskqueue.md); one message must fit in a peer's share of unfinished messages, and that share in
        the node's; a peer is declared gone only after a ping could have answered."""
        largest = max(self.task_max_payload_bytes, self.task_max_result_bytes)
        needed = msgpack_bound(largest) + PEER_MESSAGE_FRAMING_BYTES
        if self.p2p_max_message_bytes < needed:
            raise ValueError(
                f"SIDECAR_P2P_MAX_MESSAGE_BYTES ({self.p2p_max_message_bytes}) must be at least {needed} so one "
                f"task of SIDECAR_TASK_MAX_PAYLOAD_BYTES / SIDECAR_TASK_MAX_RESULT_BYTES ({largest} bytes) fits in "
                "a peer message (9/4 of it as msgpack, plus 64 KiB); raise it or lower those"
            )
        if self.p2p_max_partial_bytes_per_peer < self.p2p_max_message_bytes:
            raise ValueError(
                f"SIDECAR_P2P_MAX_PARTIAL_BYTES_PER_PEER ({self.p2p_max_partial_bytes_per_peer}) must be at least "
                f"SIDECAR_P2P_MAX_MESSAGE_BYTES ({self.p2p_max_message_bytes}): one message must fit"
            )
        if self.p2p_max_partial_bytes < self.p2p_max_partial_bytes_per_peer:
            raise ValueError(
                f"SIDECAR_P2P_MAX_PARTIAL_BYTES ({self.p2p_max_partial_bytes}) must be at least "
                f"SIDECAR_P2P_MAX_PARTIAL_BYTES_PER_PEER ({self.p2p_max_partial_bytes_per_peer})"
            )
        if self.peer_gone_timeout <= self.peer_ping_interval:
            raise ValueError(
                f"SIDECAR_PEER_GONE_TIMEOUT ({self.peer_gone_timeout:g}) must be longer than "
                f"SIDECAR_PEER_PING_INTERVAL ({self.peer_ping_interval:g})"
            )
        return self

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

    @model_validator(mode="after")
    def _check_admin_security(self) -> Self:
        """The dashboard shows the network's tasks and peers: off this machine only behind a token."""
        if self.admin_token is None and not host_is_loopback(self.admin_host):
            raise ValueError(
                f"SIDECAR_ADMIN_HOST {self.admin_host} is not loopback: set SIDECAR_ADMIN_TOKEN (the dashboard, "
                "its /api and /metrics then need it; /health stays open), or bind 127.0.0.1"
            )
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("SIDECAR_ADMIN_TOKEN must be at least 16 characters")
        return self

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
