"""A sidecar that dies, is down, or comes back: fast errors, local tools unaffected, no gateway restart."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import gateway_proc, http_json, metric_value, running, sidecar_proc, wait_for

pytestmark = pytest.mark.e2e


def _execute(url: str, tool: str, args: dict[str, Any], timeout: float = 10.0) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    status, body = http_json("POST", f"{url}/tools/execute/{tool}", args, timeout=timeout)
    return status, body, time.monotonic() - started


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_kill9_sidecar_then_restart_on_same_endpoint(tmp_path: Path, transport: str) -> None:
    endpoint = f"ipc://{tmp_path}/bridge.sock" if transport == "ipc" else None
    sidecar = sidecar_proc(tmp_path, endpoint=endpoint)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="gateway ready")
        assert _execute(url, "p2p_echo", {"message": "before"})[0] == 200

        # a call in flight when the sidecar dies fails fast, not at its deadline
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_execute, url, "p2p_echo", {"message": "slow", "delay_ms": 20_000})
            admin = f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics"
            wait_for(lambda: metric_value(admin, "sidecar_bridge_in_flight") >= 1, 5, what="the call in the sidecar")
            sidecar.kill9()
            status, body, took = in_flight.result(timeout=5)
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert took < 1.5

        # while it is down: P2P calls answer within a second, local calls still work, tools stay listed
        for _ in range(5):
            status, body, took = _execute(url, "p2p_hash_content", {"data": "x"})
            assert status == 503 and "P2P sidecar unavailable" in body["error"]["message"] and took < 1.0
            assert _execute(url, "hash_content", {"data": "x"})[0] == 200
        names = {tool["name"] for tool in http_json("GET", url + "/tools/list")[1]["tools"]}
        assert "p2p_hash_content" in names
        assert http_json("GET", url + "/health/ready")[0] == 503
        _, mcp = http_json("POST", url + "/mcp/tools/call", {"name": "p2p_echo", "arguments": {"message": "x"}})
        assert mcp["result"]["isError"] is True and "unavailable" in mcp["result"]["content"][0]["text"]

        # a new sidecar on the same endpoint is picked up with no gateway restart
        gateway_pid = gateway.pid
        sidecar.start()
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="gateway ready again")
        status, body, _ = _execute(url, "p2p_echo", {"message": "after"})
        assert status == 200 and body["result"]["message"] == "after"
        assert gateway.pid == gateway_pid and gateway.alive()


def test_gateway_starts_before_sidecar_and_waits_unready(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(gateway):
        url = gateway.extra["url"]
        status, body = http_json("GET", url + "/health/ready")
        assert status == 503 and body["bridge"]["state"] == "down"
        status, _, _ = _execute(url, "p2p_service_status", {})
        assert status == 404  # never announced: the gateway has no P2P definitions of its own
        with running(sidecar):
            wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
            assert _execute(url, "p2p_service_status", {})[0] == 200


def test_timeouts_and_in_flight_bound(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(
        tmp_path, endpoint=sidecar.extra["endpoint"], GATEWAY_CALL_TIMEOUT_CAP="1.0", GATEWAY_BRIDGE_MAX_IN_FLIGHT="2"
    )
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
        status, body, took = _execute(url, "p2p_echo", {"message": "slow", "delay_ms": 5000})
        assert status == 504 and body["error"]["code"] == "timeout" and 0.9 < took < 2.0

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            slow = [pool.submit(_execute, url, "p2p_echo", {"message": "s", "delay_ms": 800}) for _ in range(2)]
            metrics = url + "/metrics"
            wait_for(lambda: metric_value(metrics, "gateway_bridge_in_flight") >= 2, 5, what="two calls in flight")
            status, body, took = _execute(url, "p2p_echo", {"message": "third"})
            assert status == 503 and body["error"]["code"] == "busy" and took < 0.5
            assert [future.result()[0] for future in slow] == [200, 200]
        assert _execute(url, "p2p_echo", {"message": "after"})[0] == 200
        # the timed-out call was stopped in the sidecar too (its deadline, or the gateway's CANCEL), not left running
        _, metrics = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics")
        stopped = [line for line in metrics.splitlines() if line.startswith("sidecar_tool_calls_total{")]
        assert sum(float(line.split()[-1]) for line in stopped if "timeout" in line or "cancelled" in line) == 1
        assert "sidecar_bridge_in_flight 0.0" in metrics
