"""kill -9 the sidecar under steady load, twice: local tools never fail, P2P fails only while it is down.

A short run of ``bench/fault_sidecar_restarts.py`` (the longer run's figures are in docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fault_sidecar_restarts import print_report, run
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

pytestmark = pytest.mark.e2e
RECOVERY_BOUND_S = 15.0  # the sidecar's own start-up plus ZeroMQ's reconnect back-off (1 s at most); ~1.5 s idle


@pytest.fixture
def fault_stack(tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    sidecar = sidecar_proc(tmp_path, SIDECAR_LOG_LEVEL="warning")
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
    with running(sidecar, gateway):
        wait_for(lambda: http_json("GET", gateway.extra["url"] + "/health/ready")[0] == 200, 15, what="ready")
        yield gateway, sidecar


def test_sidecar_kill9_restarts_under_load(fault_stack: tuple[Proc, Proc]) -> None:
    gateway, sidecar = fault_stack
    result = run(gateway, sidecar, clients=3, warmup=1.5, outages=2, down=1.0, up=2.0)
    print_report(result)
    assert result["local_calls"] > 100 and result["local_errors"] == 0, result
    assert result["p2p_errors_outside_outages"] == 0, result
    assert result["p2p_error_p99_ms"] < 1000, result  # failures are answered at once, not at a deadline
    for outage in result["outages"]:
        assert outage["recovery_s"] is not None and outage["recovery_s"] < RECOVERY_BOUND_S, outage
        assert outage["p2p_calls_after"] > 0 and outage["p2p_error_rate_after"] == 0, outage
    assert gateway.alive() and sidecar.alive()
