"""Clean shutdown of each process, and the `make run` supervisor over both."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from tests.procs import ROOT, Proc, base_env, free_port, gateway_proc, http_json, running, sidecar_proc, wait_for

pytestmark = pytest.mark.e2e


def test_sigterm_drains_in_flight_calls_then_exits_0(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            slow = [
                pool.submit(http_json, "POST", url + "/tools/execute/p2p_echo", {"message": str(i), "delay_ms": 1000})
                for i in range(3)
            ]
            admin = f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics"
            wait_for(lambda: _in_flight(admin, "sidecar_bridge_in_flight") >= 3, 10, what="3 calls in the sidecar")
            sidecar.signal(signal.SIGTERM)
            # draining: not ready any more, and from the same step on it accepts no new calls
            wait_for(lambda: http_json("GET", sidecar.health_url)[0] == 503, 5, what="the sidecar draining")
            refused = http_json("POST", url + "/tools/execute/p2p_echo", {"message": "late"})
            results = [future.result(timeout=10) for future in slow]
        assert all(status == 200 for status, _ in results), results
        assert refused[0] == 503 and refused[1]["error"]["code"] == "unavailable"
        assert sidecar.exit_code(10) == 0
        assert gateway.stop() == 0


@pytest.mark.parametrize("workers", [[], ["--gateway-workers", "2"]], ids=["one-gateway-process", "two-workers"])
def test_supervisor_starts_both_and_stops_both_on_sigint(tmp_path: Path, workers: list[str]) -> None:
    port, _admin, env = _supervised_env(tmp_path)
    log = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", *workers], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        announced = lambda: "ready. MCP endpoint" in (tmp_path / "supervisor.log").read_text()  # noqa: E731
        wait_for(announced, 30, what="the supervisor's ready line")
        status, _ = http_json("POST", f"http://127.0.0.1:{port}/tools/execute/p2p_echo", {"message": "hi"})
        assert status == 200
        _, health = http_json("GET", f"http://127.0.0.1:{port}/health")
        assert health.get("worker", {}).get("workers", 1) == (2 if workers else 1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not _ready(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_supervisor_exits_nonzero_when_a_child_dies(tmp_path: Path) -> None:
    port, admin, env = _supervised_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _ready(port), 30, what="stack ready under the supervisor")
        _, health = http_json("GET", f"http://127.0.0.1:{admin}/health")
        os.kill(health["node"]["pid"], signal.SIGKILL)
        assert proc.wait(timeout=30) != 0
        assert not _ready(port)  # the gateway was stopped too
    finally:
        if proc.poll() is None:
            proc.kill()


def _supervised_env(tmp_path: Path) -> tuple[int, int, dict[str, str]]:
    """Ports and environment for one supervised gateway + sidecar pair."""
    port, admin, bridge = free_port(), free_port(), free_port()
    env = base_env(
        GATEWAY_PORT=str(port),
        GATEWAY_BRIDGE_ENDPOINT=f"tcp://127.0.0.1:{bridge}",
        SIDECAR_BRIDGE_ENDPOINT=f"tcp://127.0.0.1:{bridge}",
        SIDECAR_ADMIN_PORT=str(admin),
        SIDECAR_DATA_DIR=str(tmp_path / "data"),
    )
    return port, admin, env


def _ready(port: int) -> bool:
    try:
        return http_json("GET", f"http://127.0.0.1:{port}/health/ready", timeout=1)[0] == 200
    except OSError:
        return False


# -- SIGTERM under load: no accepted call is lost -------------------------------------------------------------


def _in_flight(url: str, metric: str) -> float:
    _, text = http_json("GET", url)
    line = next((line for line in text.splitlines() if line.startswith(metric + " ")), f"{metric} 0")
    return float(line.split()[-1])


def _loop_until_refused(url: str, path: str, body: dict[str, Any], stop: threading.Event) -> list[tuple[str, int, Any]]:
    """Call on fresh connections until told to stop: refused is fine (never accepted), a bad answer is not."""
    outcomes: list[tuple[str, int, Any]] = []
    while not stop.is_set():
        try:
            status, answer = http_json("POST", url + path, body, timeout=15)
        except urllib.error.URLError as exc:  # the listener is closed: the request was never accepted
            outcomes.append(("refused", 0, repr(exc.reason)))
            time.sleep(0.05)
            continue
        except (ConnectionError, http.client.HTTPException) as exc:
            outcomes.append(("broken", 0, repr(exc)))  # accepted, then cut off: must never happen
            continue
        outcomes.append(("answered", status, answer))
    return outcomes


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def _official_client_call(url: str, mode: str) -> CallToolResult:
    with anyio.fail_after(20):
        return await _official_client_call_unbounded(url, mode)


async def _official_client_call_unbounded(url: str, mode: str) -> CallToolResult:
    async with Client(url + "/mcp", mode=mode) as client:
        await client.list_tools()  # cached, so the SDK does not list again after the call
        return await client.call_tool("p2p_echo", {"message": f"mcp-{mode}", "delay_ms": 1500})


def _sidecar_ok_calls(sidecar: Proc) -> float:
    _, text = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics")
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('sidecar_tool_calls_total{outcome="ok"}')
    )


def test_gateway_sigterm_under_load_answers_every_accepted_call(tmp_path: Path) -> None:
    """Every call the gateway took in is answered; the proof is the sidecar's count of calls it ran.

    Connections the kernel had queued but the gateway never read when its listener closed are reset
    (that is TCP, for any server); the count shows none of those had been run.
    """
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
        ran_before = _sidecar_ok_calls(sidecar)
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            slow = [
                pool.submit(http_json, "POST", url + "/tools/execute/p2p_echo", {"message": str(i), "delay_ms": 1500})
                for i in range(6)
            ]
            mcp = [pool.submit(anyio.run, _official_client_call, url, mode) for mode in ("legacy", "auto")]
            loops = [
                pool.submit(_loop_until_refused, url, "/tools/execute/p2p_hash_content", {"data": "x"}, stop)
                for _ in range(3)
            ]
            metrics = url + "/metrics"
            wait_for(lambda: _in_flight(metrics, "gateway_bridge_in_flight") >= 8, 10, what="8 P2P calls in flight")
            time.sleep(0.3)  # the loops get going too
            try:
                gateway.signal(signal.SIGTERM)
                # no longer accepting, while the accepted calls are still running
                wait_for(lambda: _refused(gateway.extra["port"]), 3, what="listener closed")
                assert not all(future.done() for future in slow)
                answers = [future.result(timeout=15) for future in slow]
                results = [future.result(timeout=15) for future in mcp]
                assert gateway.exit_code(15) == 0
            finally:
                stop.set()
            outcomes = [outcome for future in loops for outcome in future.result(timeout=30)]
        ran = _sidecar_ok_calls(sidecar) - ran_before
    assert all(status == 200 for status, _ in answers), answers
    assert sorted(answer["result"]["message"] for _, answer in answers) == [str(i) for i in range(6)]
    assert all(not result.is_error for result in results), results
    assert {result.structured_content["message"] for result in results} == {"mcp-legacy", "mcp-auto"}
    answered = [o for o in outcomes if o[0] == "answered"]
    assert len(answered) >= 5 and all(status == 200 for _, status, _ in answered), outcomes
    # every P2P call that ran got its answer to the client: none was run and then lost
    assert ran == len(answered) + len(answers) + len(results), (ran, len(answered), outcomes)
    assert "calls drained" in gateway.log_path.read_text()


def test_sidecar_sigterm_under_load_finishes_or_refuses_every_call(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path, SIDECAR_SHUTDOWN_GRACE_SECONDS="2")
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
        stop = threading.Event()

        def timed(body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
            started = time.monotonic()
            status, answer = http_json("POST", url + "/tools/execute/p2p_echo", body, timeout=30)
            return status, answer, time.monotonic() - started

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            slow = [pool.submit(timed, {"message": str(i), "delay_ms": 1000}) for i in range(5)]
            too_slow = pool.submit(timed, {"message": "past the grace period", "delay_ms": 20_000})
            loops = [
                pool.submit(_loop_until_refused, url, "/tools/execute/p2p_hash_content", {"data": "x"}, stop)
                for _ in range(3)
            ]
            admin = f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics"
            wait_for(lambda: _in_flight(admin, "sidecar_bridge_in_flight") >= 6, 10, what="6 calls in the sidecar")
            try:
                sidecar.signal(signal.SIGTERM)
                signalled = time.monotonic()
                finished = [future.result(timeout=15) for future in slow]
                cut = too_slow.result(timeout=15)
                assert sidecar.exit_code(15) == 0
                exited = time.monotonic() - signalled
                time.sleep(0.5)  # the loops keep calling while the sidecar is gone
            finally:
                stop.set()
            outcomes = [outcome for future in loops for outcome in future.result(timeout=30)]
    # accepted before SIGTERM and done within the grace period: answered
    assert all(status == 200 for status, _, _ in finished), finished
    # still running when the grace period ran out: a clear "unavailable", at once, not at its own deadline
    status, answer, took = cut
    assert status == 503 and answer["error"]["code"] == "unavailable" and took < 8, cut
    assert exited < 5
    # everything else: answered, or refused with "unavailable"; nothing hung, nothing half-answered
    answered = [o for o in outcomes if o[0] == "answered"]
    assert all(o[0] == "answered" for o in outcomes), outcomes  # the gateway itself stays up throughout
    assert all(
        status == 200 or (status == 503 and body["error"]["code"] == "unavailable") for _, status, body in answered
    ), answered
    assert any(status == 503 for _, status, _ in answered) and any(status == 200 for _, status, _ in answered)
