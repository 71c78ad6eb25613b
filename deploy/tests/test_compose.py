"""deploy/docker-compose.yml brought up with podman-compose: an MCP call through the published
gateway port reaches the sidecar over the ipc:// bridge on the shared volume, and the two nodes
(sidecar and sidecar-b) form one closed libp2p network over the compose network.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from harness import DEPLOY, clean, http_get, image, mcp_p2p_calls, podman, record, rest_call, unique, wait_http

from tests.procs import free_port

COMPOSE = DEPLOY / "docker-compose.yml"
TOKEN = "compose-" + "fedcba9876543210" * 2
NETWORK_SECRET = "compose-network-" + "0123456789abcdef" * 2


def compose(project: str, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "podman_compose", "-p", project, "-f", str(COMPOSE), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    result.stderr = clean(result.stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman-compose {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def containers(project: str) -> dict[str, str]:
    """service name -> container name, from the labels podman-compose sets."""
    listing = podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
        "--format", '{{.Names}} {{index .Labels "com.docker.compose.service"}}',
    ).stdout  # fmt: skip
    return {service: name for name, service in (line.split() for line in listing.splitlines() if line.strip())}


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    project = unique("mcpcompose").replace("-", "")
    http_port, p2p_port = free_port(), free_port()
    env = {
        **os.environ,
        "MCP_P2P_IMAGE": image(),
        "GATEWAY_AUTH_TOKEN": TOKEN,
        "MCP_P2P_NETWORK_SECRET": NETWORK_SECRET,
        "MCP_P2P_HTTP_PUBLISH": f"127.0.0.1:{http_port}",
        "MCP_P2P_P2P_PUBLISH": f"127.0.0.1:{p2p_port}",
    }
    url = f"http://127.0.0.1:{http_port}"
    try:
        started = time.monotonic()
        compose(project, env, "up", "-d")
        names = containers(project)
        assert set(names) == {"gateway", "sidecar", "sidecar-b"}, names
        try:
            wait_http(url + "/health/ready", 90, what="gateway /health/ready through the published port")
        except AssertionError:
            for name in names.values():
                print(podman("logs", name, check=False).stderr[-3000:])
            raise
        record("podman-compose up -> gateway ready", f"{time.monotonic() - started:.1f} s")
        yield {"project": project, "env": env, "url": url, "names": names, "p2p_port": p2p_port}
    finally:
        compose(project, env, "down", "-v", check=False)
        podman("network", "rm", "--force", f"{project}_default", check=False)
    assert not containers(project), "containers left behind"
    volumes = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in volumes if v.startswith(project)], volumes


def sidecar_health(stack: dict[str, Any], service: str = "sidecar") -> dict[str, Any]:
    """A sidecar's admin /health, read inside its container (the compose file publishes no admin port)."""
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8002/health').read().decode())"
    return json.loads(podman("exec", stack["names"][service], "python", "-c", script).stdout)


def test_both_services_pass_their_compose_healthchecks(stack: dict[str, Any]) -> None:
    # Health checks normally run from systemd timers, and podman-compose enforces
    # `condition: service_healthy` only with podman >= 4.6; here (podman 4.3, no systemd as
    # PID 1) neither happens, so the test runs each service's compose health check itself.
    for service, name in stack["names"].items():
        result = podman("healthcheck", "run", name, check=False)
        assert result.returncode == 0, f"{service}: {result.stdout} {result.stderr}"
        assert podman("inspect", name, "--format", "{{.State.Health.Status}}").stdout.strip() == "healthy"
    compose_file = yaml.safe_load(COMPOSE.read_text())
    for service, name in stack["names"].items():
        configured = json.loads(podman("inspect", name).stdout)[0]["Config"]["Healthcheck"]["Test"]
        assert configured[1:] == compose_file["services"][service]["healthcheck"]["test"][1:]


def test_mcp_call_through_the_published_port_reaches_the_sidecar_over_ipc(stack: dict[str, Any]) -> None:
    before = sidecar_health(stack)["bridge"]["handled_calls"]
    results = mcp_p2p_calls(stack["url"], TOKEN)
    after = sidecar_health(stack)["bridge"]
    assert after["handled_calls"] >= before + 4
    endpoint = results["legacy"]["status"]["bridge"]["endpoint"]
    assert endpoint.startswith("ipc://") and after["endpoint"] == endpoint
    assert http_get(stack["url"] + "/health")[1]["bridge"]["endpoint"] == endpoint
    assert http_get(stack["url"] + "/metrics")[0] == 401


def test_the_two_nodes_form_one_closed_network_and_b_runs_a_task_of_a(stack: dict[str, Any]) -> None:
    node_b = sidecar_health(stack, "sidecar-b")["node"]["peer_id"]
    started = time.monotonic()

    def b_is_a_member() -> bool:
        status, body = rest_call(stack["url"], "peer_list", {"status_filter": "connected"}, TOKEN)
        assert status == 200, body
        return any(peer["peer_id"] == node_b and peer["member"] for peer in body["result"]["peers"])

    deadline = time.monotonic() + 60
    while not b_is_a_member():
        assert time.monotonic() < deadline, "sidecar-b never became a connected member of sidecar's network"
        time.sleep(0.5)
    record("compose: node b a connected member of node a's network", f"{time.monotonic() - started:.1f} s")
    status, body = rest_call(stack["url"], "node_info", {}, TOKEN)
    assert body["result"]["membership"]["closed"] is True
    pinned = {"task_type": "echo", "payload": "for b", "metadata": {"placement": {"peer": node_b}}}
    status, body = rest_call(stack["url"], "task_submit", pinned, TOKEN)
    assert status == 200, body
    task_id = body["result"]["task_id"]
    status, body = rest_call(stack["url"], "task_wait", {"task_id": task_id, "timeout_s": 30}, TOKEN, timeout=40)
    assert status == 200 and body["result"]["status"] == "completed", body
    assert body["result"]["result"] == "for b" and body["result"]["executed_by"] == node_b, body


def test_services_run_with_their_limits_and_the_libp2p_port_is_published(stack: dict[str, Any]) -> None:
    compose_file = yaml.safe_load(COMPOSE.read_text())
    for service, name in stack["names"].items():
        inspect = json.loads(podman("inspect", name).stdout)[0]
        limit = compose_file["services"][service]["mem_limit"]
        assert inspect["HostConfig"]["Memory"] == int(limit.removesuffix("m")) * 1024 * 1024
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert inspect["Config"]["User"] == "10001:10001"
    ports = podman("port", stack["names"]["sidecar"]).stdout
    assert f"4001/tcp -> 127.0.0.1:{stack['p2p_port']}" in ports, ports


def test_stop_drains_in_flight_work_and_both_exit_0(stack: dict[str, Any]) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(rest_call, stack["url"], "p2p_echo", {"message": "in flight", "delay_ms": 3000}, TOKEN)
        time.sleep(1.0)
        started = time.monotonic()
        compose(stack["project"], stack["env"], "stop")
        stopped = time.monotonic() - started
        status, body = slow.result(timeout=30)
    assert status == 200 and body["result"]["message"] == "in flight", body
    for name in stack["names"].values():
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0", name
    record("compose stop with a 3 s call in flight", f"{stopped:.1f} s, call answered, both exit 0")
