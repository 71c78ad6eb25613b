"""GATEWAY_WORKERS=2: two gateway processes on one port over one sidecar, with real clients.

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT), so
tests that need a particular worker open connections until ``/health`` on one
of them names that worker, then keep using it (``pinned``).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import ACCEPT, HANDSHAKE
from gateway.metrics import GatewayMetrics, merge_worker_metrics
from gateway.worker_links import SessionTags, WorkerPlace
from p2p_sidecar.bridge_server import BridgeServer, GatewayLink
from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.tools import ToolCatalog
from tests.procs import ROOT, Proc, base_env, free_port, gateway_proc, http_json, running, sidecar_proc, wait_for
from tests.queue_client import call, wait_done

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    tmp = tmp_path_factory.mktemp("workers")
    sidecar = sidecar_proc(tmp)
    gateway = gateway_proc(
        tmp, endpoint=sidecar.extra["endpoint"], GATEWAY_WORKERS="2", GATEWAY_MAX_CALLS_PER_CLIENT="1"
    )
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(60)
        wait_for(lambda: _sidecar_gateways(sidecar) == 2, 30, what="both workers bridged")
        yield gateway, sidecar


# -- helpers ------------------------------------------------------------------------------------------


def pinned(port: int, index: int, tries: int = 200) -> http.client.HTTPConnection:
    """A kept-alive connection that landed on worker ``index``."""
    for _ in range(tries):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        connection.request("GET", "/health")
        response = connection.getresponse()
        body = json.loads(response.read())
        if body["worker"]["index"] == index:
            return connection
        connection.close()
    raise AssertionError(f"no connection landed on worker {index} in {tries} tries")


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, Any]:
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, data, {"content-type": "application/json", **(headers or {})})
    response = connection.getresponse()
    raw = response.read()
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return response.status, response.headers, parsed


def initialize(connection: http.client.HTTPConnection) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "workers-test", "version": "1"},
        },
    }
    status, headers, _ = exchange(connection, "POST", "/mcp", init, {"accept": ACCEPT})
    assert status == 200
    return headers["mcp-session-id"]


def session_headers(session: str) -> dict[str, str]:
    return {"accept": ACCEPT, "mcp-session-id": session, "mcp-protocol-version": HANDSHAKE}


def tool_call(name: str, arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    _, text = http_json("GET", url + "/metrics")
    total = 0.0
    for line in str(text).splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{key}="{wanted}"' in head for key, wanted in labels.items()):
            total += float(value)
    return total


def worker_pids(url: str) -> dict[int, int]:
    pids: dict[int, int] = {}
    for _ in range(200):
        _, health = http_json("GET", url + "/health")
        pids[health["worker"]["index"]] = health["worker"]["pid"]
        if len(pids) == 2:
            return pids
    raise AssertionError(f"only saw workers {pids}")


def _sidecar_gateways(sidecar: Proc) -> int:
    _, health = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/health")
    return int(health["bridge"]["gateways"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the pure parts ------------------------------------------------------------------------------------


def test_session_ids_name_their_worker_and_nothing_else_passes_for_one(tmp_path: Path) -> None:
    tags = SessionTags(WorkerPlace(1, 3, tmp_path))
    public = tags.public("0123abcd")
    assert public == "w1-0123abcd" and tags.owner(public) == (1, "0123abcd")
    assert tags.owner("w0-ffff") == (0, "ffff") and tags.owner("w2-x-y") == (2, "x-y")
    arabic_indic_one = "\u0661"  # a digit to str.isdigit, and int() reads it as 1
    for foreign in ("0123abcd", "w3-0123", "w-12", "w1-", "x1-abc", "w1", "w01234-abc", "", f"w{arabic_indic_one}-abc"):
        assert tags.owner(foreign) is None, foreign


def test_metrics_of_several_workers_are_one_exposition_labelled_by_worker() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.tool_calls.labels("local", "ok").inc(3)
    second.tool_calls.labels("local", "ok").inc(5)
    second.tool_latency.labels("p2p").observe(0.2)
    merged = merge_worker_metrics({0: first.render().decode(), 1: second.render().decode(), 2: None}).decode()
    families = {family.name: family for family in text_string_to_metric_families(merged)}
    calls = {
        sample.labels["worker"]: sample.value
        for sample in families["gateway_tool_calls"].samples
        if sample.name.endswith("_total")
    }
    assert calls == {"0": 3.0, "1": 5.0}
    assert merged.count("# TYPE gateway_tool_calls_total counter") == 1  # one family, not one per worker
    workers = {sample.labels["reported"]: sample.value for sample in families["gateway_workers"].samples}
    assert workers == {"yes": 2.0, "no": 1.0}


# -- one port, two processes, one sidecar -------------------------------------------------------------


def test_two_workers_serve_one_port_each_bridged_to_the_sidecar(pair: tuple[Proc, Proc]) -> None:
    gateway, sidecar = pair
    url, port = gateway.extra["url"], gateway.extra["port"]
    pids = worker_pids(url)
    assert gateway.pid not in pids.values() and len(set(pids.values())) == 2
    for index in (0, 1):
        connection = pinned(port, index)
        status, _, body = exchange(connection, "POST", "/tools/execute/hash_content", {"data": "hello world"})
        assert status == 200 and body["result"]["cid"].startswith("bafkrei")
        status, _, body = exchange(connection, "POST", "/tools/execute/p2p_service_status", {})
        assert status == 200 and body["result"]["bridge"]["gateways"] == 2, body
        connection.close()
    assert _sidecar_gateways(sidecar) == 2
    # /metrics on any worker answers for both, each sample labelled
    assert metric(url, "gateway_workers", reported="yes") == 2
    assert metric(url, "gateway_bridge_up", worker="0") == 1 and metric(url, "gateway_bridge_up", worker="1") == 1
    assert metric(url, "gateway_tool_calls_total", worker="0") >= 2
    assert metric(url, "gateway_tool_calls_total", worker="1") >= 2


def test_a_handshake_session_is_served_by_its_worker_whichever_worker_a_request_reaches(
    pair: tuple[Proc, Proc],
) -> None:
    gateway, _ = pair
    url, port = gateway.extra["url"], gateway.extra["port"]
    home, away = pinned(port, 0), pinned(port, 1)
    session = initialize(home)
    assert session.startswith("w0-")
    relayed_before = metric(url, "gateway_relayed_requests_total", worker="1", outcome="answered")
    headers = session_headers(session)
    status, _, _ = exchange(away, "POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    assert status == 202
    status, answer_headers, body = exchange(
        away, "POST", "/mcp", tool_call("p2p_hash_content", {"data": "hello world"}), headers
    )
    assert status == 200 and body["result"]["structuredContent"]["cid"].startswith("bafkrei"), body
    assert answer_headers["mcp-session-id"] == session  # the id the client knows, not the SDK's own
    status, _, body = exchange(away, "POST", "/mcp", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers)
    assert status == 200 and any(tool["name"] == "echo" for tool in body["result"]["tools"])
    assert metric(url, "gateway_relayed_requests_total", worker="1", outcome="answered") >= relayed_before + 3
    # ids this gateway did not hand out, or that name the wrong worker, are unknown sessions (404), as with one process
    sdk_id = session.removeprefix("w0-")
    for forged in (f"w1-{sdk_id}", f"w7-{sdk_id}", sdk_id):
        status, _, _ = exchange(away, "POST", "/mcp", tool_call("echo", {"message": "x"}), session_headers(forged))
        assert status == 404, forged
    # ending the session through the other worker ends it where it lives
    status, _, _ = exchange(away, "DELETE", "/mcp", None, headers)
    assert status == 200
    status, _, _ = exchange(home, "POST", "/mcp", tool_call("echo", {"message": "x"}), headers)
    assert status == 404
    home.close()
    away.close()


def test_a_relayed_call_counts_against_the_client_that_sent_it(pair: tuple[Proc, Proc]) -> None:
    """GATEWAY_MAX_CALLS_PER_CLIENT=1 here: the relayed call keeps its client's address, on the public port no header
    claims another."""
    gateway, _ = pair
    port = gateway.extra["port"]
    home, away, third = pinned(port, 0), pinned(port, 0), pinned(port, 1)
    session = initialize(home)
    headers = session_headers(session)
    exchange(home, "POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            exchange, third, "POST", "/mcp", tool_call("p2p_echo", {"message": "slow", "delay_ms": 1500}), headers
        )
        time.sleep(0.5)  # relayed by worker 1, running on worker 0
        status, _, body = exchange(away, "POST", "/mcp", tool_call("echo", {"message": "second"}, 2), headers)
        assert status == 200 and body["error"]["data"]["data"]["limit"] == "max_calls_per_client", body
        spoofed = {**headers, "x-mcp-p2p-client": "10.9.9.9:1"}
        status, _, body = exchange(away, "POST", "/mcp", tool_call("echo", {"message": "third"}, 3), spoofed)
        assert status == 200 and body["error"]["data"]["data"]["limit"] == "max_calls_per_client", body
        status, _, body = slow.result(timeout=20)
    assert status == 200 and body["result"]["structuredContent"]["message"] == "slow"
    for connection in (home, away, third):
        connection.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_official_client_in_both_eras_with_a_new_connection_per_request(
    pair: tuple[Proc, Proc], mode: str
) -> None:
    """Every request on a fresh connection lands on either worker: handshake-era requests are relayed to the worker
    holding their session; 2026-07-28 requests hold none and are served where they land."""
    gateway, _ = pair
    url = gateway.extra["url"]
    relayed_before = metric(url, "gateway_relayed_requests_total")
    http = httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0), timeout=30)
    async with Client(streamable_http_client(url + "/mcp", http_client=http), mode=mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else HANDSHAKE)
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "p2p_echo", "p2p_service_status"} <= names
        for n in range(12):
            local = await client.call_tool("echo", {"message": f"{mode}-{n}"})
            remote = await client.call_tool("p2p_echo", {"message": f"{mode}-{n}"})
            assert not local.is_error and local.structured_content["message"] == f"{mode}-{n}"
            assert not remote.is_error and remote.structured_content["message"] == f"{mode}-{n}"
    await http.aclose()
    relayed = metric(url, "gateway_relayed_requests_total") - relayed_before
    if mode == "legacy":
        assert relayed > 0  # about half of ~28 requests landed on the other worker
        assert metric(url, "gateway_relayed_requests_total", outcome="unreachable") == 0
    else:
        assert relayed == 0


def test_tools_list_changed_reaches_a_session_whose_stream_another_worker_relays(tmp_path: Path) -> None:
    """Gateway first, sidecar later; the session's GET stream is opened on the worker that does not hold it."""
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"], GATEWAY_WORKERS="2")
    with running(gateway):
        port = gateway.extra["port"]
        home, away, stream = pinned(port, 0), pinned(port, 1), pinned(port, 1)
        session = initialize(home)
        headers = session_headers(session)
        exchange(away, "POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
        status, _, body = exchange(away, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers)
        assert status == 200 and "p2p_service_status" not in {tool["name"] for tool in body["result"]["tools"]}
        stream.request("GET", "/mcp", headers={**headers, "accept": "text/event-stream"})
        response = stream.getresponse()
        assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
        with running(sidecar):
            received = b""
            deadline = time.monotonic() + 20
            while b"notifications/tools/list_changed" not in received:
                assert time.monotonic() < deadline, received
                received += response.read1(65536)
        response.close()
        for connection in (home, away, stream):
            connection.close()


# -- the sidecar's calls into the workers --------------------------------------------------------------


def test_the_sidecar_sends_a_call_to_a_gateway_that_has_the_tool(tmp_path: Path) -> None:
    bridge = BridgeServer(SidecarSettings(data_dir=tmp_path), ToolCatalog(), SidecarMetrics())
    both = GatewayLink(b"a", 0.0, {"local_tools": ["echo", "hash_content"]})
    echo_only = GatewayLink(b"b", 0.0, {"local_tools": ["echo"]})
    bridge.gateways = {b"a": both, b"b": echo_only}
    assert bridge.local_tools() == ["echo", "hash_content"]  # what the node offers remote peers
    assert bridge.pick_gateway("hash_content") is both
    assert bridge.pick_gateway("echo", exclude=[b"a"]) is echo_only
    assert bridge.pick_gateway("collection.tool") in (both, echo_only)  # resolved on first use: any may have it
    assert bridge.pick_gateway("echo", exclude=[b"a", b"b"]) is None


def test_the_sidecar_spreads_its_calls_over_the_workers_and_skips_one_that_died(pair: tuple[Proc, Proc]) -> None:
    """``tool`` tasks call a gateway tool through the sidecar's bridge: both workers take some; with one killed,
    every task still completes (on the other, then on its replacement)."""
    gateway, sidecar = pair
    url = gateway.extra["url"]
    before = {index: metric(url, "gateway_inbound_calls_total", worker=str(index)) for index in (0, 1)}
    payload = {"tool": "hash_content", "arguments": {"data": "hello world"}}
    tasks = [call(url, "task_submit", task_type="tool", payload=payload)["task_id"] for _ in range(12)]
    assert all(wait_done(url, task)["status"] == "completed" for task in tasks)
    after = {index: metric(url, "gateway_inbound_calls_total", worker=str(index)) for index in (0, 1)}
    assert after[0] > before[0] and after[1] > before[1], (before, after)

    pids = worker_pids(url)
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.5)
    tasks = [call(url, "task_submit", task_type="tool", payload=payload)["task_id"] for _ in range(6)]
    views = [wait_done(url, task) for task in tasks]
    assert all(view["status"] == "completed" and view["attempt"] == 1 for view in views), views
    # the parent started worker 0 again, which said hello to the sidecar
    wait_for(lambda: worker_pids(url)[0] != pids[0], 30, what="worker 0 restarted")
    assert gateway.alive() and _alive(pids[1])
    wait_for(lambda: _sidecar_gateways(sidecar) == 2, 30, what="the new worker 0 bridged (the dead one forgotten)")
    gateway.wait_healthy(30)


# -- life cycle ---------------------------------------------------------------------------------------


def test_sigterm_drains_the_calls_in_flight_on_every_worker_then_exits_0(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"], GATEWAY_WORKERS="2")
    with running(sidecar, gateway):
        url, port = gateway.extra["url"], gateway.extra["port"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 30, what="ready")
        pids = worker_pids(url)
        connections = [pinned(port, index) for index in (0, 0, 0, 1, 1, 1)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            slow = [
                pool.submit(
                    exchange, connection, "POST", "/tools/execute/p2p_echo", {"message": str(n), "delay_ms": 1500}
                )
                for n, connection in enumerate(connections)
            ]
            wait_for(
                lambda: (
                    metric(url, "gateway_bridge_in_flight", worker="0") >= 3
                    and metric(url, "gateway_bridge_in_flight", worker="1") >= 3
                ),
                10,
                what="three calls in flight on each worker",
            )
            gateway.signal(signal.SIGTERM)
            answers = [future.result(timeout=20) for future in slow]
        assert [status for status, _, _ in answers] == [200] * 6, answers
        assert sorted(body["result"]["message"] for _, _, body in answers) == [str(n) for n in range(6)]
        assert gateway.exit_code(20) == 0
        assert not any(_alive(pid) for pid in pids.values())
        log = gateway.log_path.read_text()
        assert log.count("calls drained") == 2 and "SIGTERM received: stopping 2 workers" in log


def test_a_worker_that_cannot_start_stops_the_gateway_with_its_exit_code(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-key"
    garbage.write_text("this is not a CURVE certificate\n")
    gateway = gateway_proc(
        tmp_path,
        endpoint="tcp://127.0.0.1:1",
        GATEWAY_WORKERS="2",
        GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE=str(garbage),
        GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE=str(garbage),
    )
    gateway.start(wait=False)
    assert gateway.exit_code(60) == 1
    log = gateway.log_path.read_text()
    assert "gateway cannot start:" in log and "before it served: stopping the gateway" in log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, workers: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        env = base_env(GATEWAY_PORT=str(port), GATEWAY_BRIDGE_ENABLED="false", GATEWAY_WORKERS=workers)
        done = subprocess.run(
            [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"gateway cannot start: cannot listen on 127.0.0.1:{port}: Address already in use (GATEWAY_HOST, GATEWAY_PORT)"
    ]


def test_workers_is_a_setting_and_an_option(tmp_path: Path) -> None:
    env = base_env(GATEWAY_BRIDGE_ENABLED="false", GATEWAY_WORKERS="0")
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "GATEWAY_WORKERS" in done.stderr
    port = free_port()
    gateway = Proc(
        "gateway",
        ["-m", "gateway", "--workers", "2", "--port", str(port), "--no-bridge"],
        base_env(),
        tmp_path / "gateway.log",
        f"http://127.0.0.1:{port}/health",
    )
    with running(gateway):
        assert set(worker_pids(f"http://127.0.0.1:{port}")) == {0, 1}
