"""A bridge bound beyond loopback needs CURVE keys; only gateways holding an allowed key get through."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from shared_schema import Envelope, Kind, encode
from shared_schema.curve import generate
from tests.procs import (
    ROOT,
    Proc,
    base_env,
    free_port,
    gateway_proc,
    http_json,
    metric_value,
    running,
    sidecar_proc,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _local_address() -> str:
    """A non-loopback address of this host if it has one (the bridge's real use), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel just picks a source address
            address = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address if not address.startswith("127.") else "127.0.0.1"


def _one_line_exit(module: str, env: dict[str, str], code: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module], env=base_env(**env), cwd=ROOT, capture_output=True, timeout=60
    )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == code and len(lines) == 1, (done.returncode, lines)
    return lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in ("sidecar", "gateway", "intruder"):
        generate(directory, name)
    return directory


def test_sidecar_refuses_a_public_bind_without_keys(tmp_path: Path) -> None:
    line = _one_line_exit(
        "p2p_sidecar",
        {"SIDECAR_BRIDGE_ENDPOINT": f"tcp://0.0.0.0:{free_port()}", "SIDECAR_DATA_DIR": str(tmp_path)},
        2,
    )
    assert "SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE" in line and "SIDECAR_BRIDGE_CURVE_CLIENT_KEYS" in line
    assert "not loopback" in line


def test_gateway_refuses_a_remote_endpoint_without_keys() -> None:
    line = _one_line_exit("gateway", {"GATEWAY_BRIDGE_ENDPOINT": "tcp://10.1.2.3:8001"}, 2)
    assert "GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE" in line and "GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE" in line


def test_half_configured_or_unusable_keys_are_refused(tmp_path: Path, keys: Path) -> None:
    endpoint = f"tcp://0.0.0.0:{free_port()}"
    line = _one_line_exit(
        "p2p_sidecar",
        {
            "SIDECAR_BRIDGE_ENDPOINT": endpoint,
            "SIDECAR_DATA_DIR": str(tmp_path),
            "SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE": str(keys / "sidecar.key_secret"),
        },
        2,
    )
    assert "SIDECAR_BRIDGE_CURVE_CLIENT_KEYS" in line
    line = _one_line_exit(
        "p2p_sidecar",
        {
            "SIDECAR_BRIDGE_ENDPOINT": endpoint,
            "SIDECAR_DATA_DIR": str(tmp_path),
            "SIDECAR_ADMIN_PORT": "0",
            "SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE": str(keys / "sidecar.key"),  # the public half
            "SIDECAR_BRIDGE_CURVE_CLIENT_KEYS": str(keys / "gateway.key"),
        },
        1,
    )
    assert line.startswith("sidecar cannot start: SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE") and "public" in line


@pytest.fixture(scope="module")
def curve_sidecar(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[Proc]:
    port = free_port()
    sidecar = sidecar_proc(
        tmp_path_factory.mktemp("curve"),
        endpoint=f"tcp://0.0.0.0:{port}",
        SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE=str(keys / "sidecar.key_secret"),
        SIDECAR_BRIDGE_CURVE_CLIENT_KEYS=str(keys / "gateway.key"),
    )
    sidecar.extra["port"] = port
    with running(sidecar):
        yield sidecar


def _denied(sidecar: Proc) -> float:
    _, text = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics")
    line = next(line for line in text.splitlines() if line.startswith("sidecar_bridge_auth_denied_total"))
    return float(line.split()[-1])


def test_gateway_with_the_right_keys_works(tmp_path: Path, keys: Path, curve_sidecar: Proc) -> None:
    gateway = gateway_proc(
        tmp_path,
        endpoint=f"tcp://{_local_address()}:{curve_sidecar.extra['port']}",
        GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE=str(keys / "gateway.key_secret"),
        GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE=str(keys / "sidecar.key"),
    )
    with running(gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready over CURVE")
        status, body = http_json("POST", url + "/tools/execute/p2p_echo", {"message": "sealed"})
        assert status == 200 and body["result"]["message"] == "sealed"
    assert "CURVE" in curve_sidecar.log_path.read_text()


@pytest.mark.parametrize(
    ("secret", "server", "denied_by_zap"),
    [
        (None, None, False),  # no keys at all: the mechanisms do not even match
        ("intruder.key_secret", "sidecar.key", True),  # a well-formed key the sidecar does not list
        ("gateway.key_secret", "intruder.key", False),  # the right client key, but trusting the wrong server
    ],
)
def test_gateway_without_an_allowed_key_cannot_connect(
    tmp_path: Path, keys: Path, curve_sidecar: Proc, secret: str | None, server: str | None, denied_by_zap: bool
) -> None:
    env = {}
    if secret is not None and server is not None:
        env = {
            "GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE": str(keys / secret),
            "GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE": str(keys / server),
        }
    denied_before = _denied(curve_sidecar)
    gateway = gateway_proc(tmp_path, endpoint=f"tcp://127.0.0.1:{curve_sidecar.extra['port']}", **env)
    with running(gateway):
        url = gateway.extra["url"]
        metrics = url + "/metrics"  # the handshake was tried and refused (libzmq may not try again)
        wait_for(lambda: metric_value(metrics, "gateway_bridge_handshake_failures_total") >= 1, 10, what="a refusal")
        status, health = http_json("GET", url + "/health/ready")
        assert status == 503 and health["bridge"]["state"] == "down", health
        if secret is not None:
            assert "CURVE" in health["bridge"]["reason"] or "handshake" in health["bridge"]["reason"], health
        assert http_json("POST", url + "/tools/execute/p2p_echo", {"message": "x"})[0] == 404  # never got a catalog
        assert http_json("POST", url + "/tools/execute/echo", {"message": "x"})[0] == 200  # local tools unaffected
    if denied_by_zap:
        assert _denied(curve_sidecar) > denied_before


def test_plain_zeromq_peer_gets_nothing(curve_sidecar: Proc) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 1500)
    dealer.connect(f"tcp://127.0.0.1:{curve_sidecar.extra['port']}")
    try:
        dealer.send(encode(Envelope(Kind.CALL, id="x", deadline=time.time() + 5, tool="p2p_echo", arguments={})))
        with pytest.raises(zmq.Again):
            dealer.recv()
    finally:
        dealer.close()
        context.term()
    assert curve_sidecar.alive()


def test_bridge_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A bind failure inside the sidecar's nurseries still ends in one line, exit 1 (not an exception group)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = _one_line_exit(
            "p2p_sidecar",
            {
                "SIDECAR_BRIDGE_ENDPOINT": f"tcp://127.0.0.1:{port}",
                "SIDECAR_DATA_DIR": str(tmp_path),
                "SIDECAR_ADMIN_PORT": "0",
                "SIDECAR_LOG_LEVEL": "critical",
            },
            1,
        )
    assert line.startswith("sidecar cannot start: cannot bind the bridge") and str(port) in line
