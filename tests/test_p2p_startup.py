"""What stops a sidecar's libp2p node at start, and how it says so: one line, the right exit code."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, base_env, free_port

pytestmark = pytest.mark.e2e


def start(tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {
        "SIDECAR_DATA_DIR": str(tmp / "data"),
        "SIDECAR_ADMIN_PORT": str(free_port()),
        "SIDECAR_BRIDGE_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "p2p_sidecar"],
        env=base_env(**settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIDECAR_BOOTSTRAP_PEERS", "/ip4/127.0.0.1/udp/4001"),  # not TCP
        ("SIDECAR_BOOTSTRAP_PEERS", "/ip4/127.0.0.1/tcp/4001/p2p/not-a-peer-id"),
        ("SIDECAR_NETWORK_SECRET", "too short"),
        ("SIDECAR_P2P_MAX_PARTIAL_BYTES_PER_PEER", "1024"),  # less than one message
        ("SIDECAR_LISTEN_ADDRS", "/ip4/127.0.0.1/udp/4001"),
        ("SIDECAR_ANNOUNCE_ADDRS", "not-a-multiaddr"),
        ("SIDECAR_PEER_GONE_TIMEOUT", "1"),  # not longer than the 2 s ping interval
    ],
)
def test_bad_p2p_settings_stop_the_process_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    done = start(tmp_path, **{variable: value})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], lines


@pytest.mark.parametrize(
    "env",
    [
        {"SIDECAR_NETWORK_OPEN": "true", "SIDECAR_NETWORK_SECRET": "0123456789abcdef0123"},
        {
            "SIDECAR_NETWORK_OPEN": "true",
            "SIDECAR_PEER_ALLOWLIST": "12D3KooWGbkUhx9TC3jEhwcKaPZvvS6wTXQ4ZuBSYAEwmRCMimN6",
        },
    ],
)
def test_an_open_network_cannot_also_be_closed(tmp_path: Path, env: dict[str, str]) -> None:
    done = start(tmp_path, **env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIDECAR_NETWORK_OPEN=true cannot be combined" in lines[0], lines
    assert "0123456789abcdef0123" not in done.stderr


def test_listen_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = start(tmp_path, SIDECAR_LISTEN_ADDRS=f"/ip4/127.0.0.1/tcp/{port}")
    assert done.returncode == 1
    assert f"sidecar cannot start: libp2p cannot listen on /ip4/127.0.0.1/tcp/{port}" in done.stderr


def test_unreadable_bootstrap_file(tmp_path: Path) -> None:
    done = start(tmp_path, SIDECAR_BOOTSTRAP_FILE=str(tmp_path / "missing.txt"))
    assert done.returncode == 1 and "cannot read bootstrap file" in done.stderr
    listing = tmp_path / "peers.txt"
    listing.write_text("# one good line is not enough\n/ip4/127.0.0.1/tcp/1\n")
    done = start(tmp_path, SIDECAR_BOOTSTRAP_FILE=str(listing))
    assert done.returncode == 1 and "line(s) 2 are not peer multiaddrs" in done.stderr


def test_a_corrupt_node_key_is_refused_not_replaced(tmp_path: Path) -> None:
    key = tmp_path / "data" / "node.key"
    key.parent.mkdir(mode=0o700)
    key.write_bytes(b"garbage")
    done = start(tmp_path)
    assert done.returncode == 1 and "is not a libp2p private key" in done.stderr
    assert key.read_bytes() == b"garbage"
