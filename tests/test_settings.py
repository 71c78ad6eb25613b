"""Settings: list parsing, endpoint checks, and a one-line error naming the variable (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from p2p_sidecar.settings import SidecarSettings
from shared_schema.settings_types import describe_settings_error, endpoint_is_loopback
from tests.procs import ROOT, base_env


def test_defaults() -> None:
    settings = GatewaySettings(_env_file=None)
    assert (settings.host, settings.port, settings.bridge_endpoint) == ("127.0.0.1", 8000, "tcp://127.0.0.1:8001")
    sidecar = SidecarSettings()
    assert (sidecar.bridge_endpoint, sidecar.admin_port) == ("tcp://127.0.0.1:8001", 8002)
    assert sidecar.data_dir.name == "sidecar"


@pytest.mark.parametrize("raw", ["a.example:*, b.example", '["a.example:*", "b.example"]'])
def test_lists_accept_commas_or_json(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("GATEWAY_ALLOWED_HOSTS", raw)
    assert GatewaySettings().allowed_hosts == ["a.example:*", "b.example"]


def test_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_REMOTE_TOOLS_ALLOW", "")
    assert SidecarSettings().remote_tools_allow == []


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:8001", "ipc:///tmp/x.sock", "tcp://[::1]:9"])
def test_good_endpoints(endpoint: str) -> None:
    assert GatewaySettings(bridge_endpoint=endpoint).bridge_endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint", ["http://x:1", "tcp://nohost", "tcp://h:0", "tcp://h:99999", "ipc://", "inproc://x"]
)
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(bridge_endpoint=endpoint)


def test_loopback_detection() -> None:
    assert endpoint_is_loopback("ipc:///run/x") and endpoint_is_loopback("tcp://127.0.0.1:1")
    assert endpoint_is_loopback("tcp://[::1]:1") and not endpoint_is_loopback("tcp://0.0.0.0:1")


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        ("gateway", "GATEWAY_PORT", "eighty"),
        ("gateway", "GATEWAY_BRIDGE_ENDPOINT", "http://nope"),
        ("p2p_sidecar", "SIDECAR_ADMIN_PORT", "-1"),
        ("p2p_sidecar", "SIDECAR_LOG_LEVEL", "loud"),
        ("p2p_sidecar", "SIDECAR_QUEUE_SYNC", "sometimes"),
        ("p2p_sidecar", "SIDECAR_P2P_MAX_MESSAGE_BYTES", "1048576"),  # below one 1 MiB task as msgpack + framing
        ("p2p_sidecar", "SIDECAR_PEER_ALLOWLIST", "12D3KooWgood,not a peer id"),
        ("p2p_sidecar", "SIDECAR_NETWORK_SECRET_FILE", "/nonexistent/network.secret"),
        ("gateway", "GATEWAY_OTLP_ENDPOINT", "127.0.0.1:4318"),
        ("p2p_sidecar", "SIDECAR_OTLP_ENDPOINT", "grpc://127.0.0.1:4317"),
        ("gateway", "GATEWAY_OTLP_SAMPLE_RATIO", "2"),
        ("p2p_sidecar", "SIDECAR_DASHBOARD_INTERVAL", "0"),
        # the dashboard shows the network's tasks and peers: off loopback only behind a token
        ("p2p_sidecar", "SIDECAR_ADMIN_HOST", "0.0.0.0"),
        ("p2p_sidecar", "SIDECAR_ADMIN_TOKEN", "short"),
    ],
)
def test_bad_value_stops_the_process_with_one_line(module: str, variable: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module], env=base_env(**{variable: value}), cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], lines


def test_a_short_network_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    with pytest.raises(ValidationError) as info:
        SidecarSettings(network_secret_file=secret)
    line = describe_settings_error(info.value, "SIDECAR_")
    assert "SIDECAR_NETWORK_SECRET_FILE" in line and "at least 16" in line and "hunter2" not in line


def test_an_admin_port_off_loopback_needs_a_token() -> None:
    with pytest.raises(ValidationError) as info:
        SidecarSettings(admin_host="0.0.0.0")
    assert "SIDECAR_ADMIN_TOKEN" in describe_settings_error(info.value, "SIDECAR_")
    assert SidecarSettings(admin_host="0.0.0.0", admin_token="a-long-enough-admin-token").admin_token is not None
    assert SidecarSettings(admin_host="127.0.0.2").admin_token is None  # loopback: the token is optional


@pytest.mark.parametrize("module", ["gateway", "p2p_sidecar", "supervisor"])
def test_help(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"usage:" in done.stdout


def test_settings_that_bound_one_another_are_checked_once_all_have_their_values() -> None:
    with pytest.raises(ValidationError) as info:
        SidecarSettings(task_max_result_bytes=8 << 20)  # a result no peer message could carry
    line = describe_settings_error(info.value, "SIDECAR_")
    assert "SIDECAR_P2P_MAX_MESSAGE_BYTES" in line and "SIDECAR_TASK_MAX_RESULT_BYTES" in line, line
    with pytest.raises(ValidationError) as info:
        SidecarSettings(peer_ping_interval=30, peer_gone_timeout=20)
    assert "SIDECAR_PEER_GONE_TIMEOUT (20) must be longer than SIDECAR_PEER_PING_INTERVAL (30)" in str(info.value)
    raised = SidecarSettings(  # raising them together is fine
        task_max_result_bytes=8 << 20,
        p2p_max_message_bytes=20 << 20,
        p2p_max_partial_bytes_per_peer=20 << 20,
        p2p_max_partial_bytes=40 << 20,
    )
    assert raised.p2p_max_message_bytes == 20 << 20
