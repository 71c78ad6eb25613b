"""Clean shutdown of each process, and the `make run` supervisor over both."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import ROOT, base_env, free_port, gateway_proc, http_json, running, sidecar_proc, wait_for

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
            time.sleep(0.4)
            sidecar.signal(signal.SIGTERM)
            time.sleep(0.2)
            refused = http_json("POST", url + "/tools/execute/p2p_echo", {"message": "late"})
            results = [future.result(timeout=10) for future in slow]
        assert all(status == 200 for status, _ in results), results
        assert refused[0] == 503 and refused[1]["error"]["code"] == "unavailable"
        assert sidecar.popen.wait(timeout=10) == 0
        assert gateway.stop() == 0


def test_supervisor_starts_both_and_stops_both_on_sigint(tmp_path: Path) -> None:
    port, _admin, env = _supervised_env(tmp_path)
    log = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        announced = lambda: "ready. MCP endpoint" in (tmp_path / "supervisor.log").read_text()  # noqa: E731
        wait_for(announced, 30, what="the supervisor's ready line")
        status, _ = http_json("POST", f"http://127.0.0.1:{port}/tools/execute/p2p_echo", {"message": "hi"})
        assert status == 200
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
