"""Garbage, slowloris and oversize traffic at every listening socket while a polite client keeps working.

A shorter run of ``bench/attack_sockets.py`` (which has the details and writes the figures in
docs/reliability.md): the gateway's HTTP port, the bridge's ZeroMQ port (raw TCP) and the sidecar's
admin port are attacked at once from another process, while a well-behaved client calls local and P2P
tools and the admin health endpoint.  The timeouts are shortened so each defence fires within the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.attack_sockets import print_report, run
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def attacked_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    tmp: Path = tmp_path_factory.mktemp("attack")
    sidecar = sidecar_proc(tmp, SIDECAR_LOG_LEVEL="warning", SIDECAR_BRIDGE_HANDSHAKE_TIMEOUT="2")
    gateway = gateway_proc(
        tmp, endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning", GATEWAY_HEADER_TIMEOUT="3"
    )
    with running(sidecar, gateway):
        wait_for(lambda: http_json("GET", gateway.extra["url"] + "/health/ready")[0] == 200, 15, what="ready")
        yield gateway, sidecar


def test_every_socket_survives_and_the_polite_client_is_served(attacked_stack: tuple[Proc, Proc]) -> None:
    gateway, sidecar = attacked_stack
    result = run(gateway, sidecar, before=2, attack=8, after=2, slow=100)
    print_report(result)
    assert result["alive"] == {"gateway": True, "sidecar": True}
    for phase in ("before", "attack", "after"):
        row = result["client"][phase]
        assert row["requests"] >= 20, (phase, row)
        assert row["success_rate"] == 1.0, (phase, row)
        assert row["p50_ms"] < 250 and row["p99_ms"] < 2000, (phase, row)  # a few ms when the machine is idle

    tallies = result["attacker"]

    def seen(prefix: str) -> int:
        return sum(count for key, count in tallies.items() if key.startswith(prefix))

    # each defence actually fired: the attack reached the sockets and was answered, not ignored
    assert seen("http_garbage:400") and seen("http_oversize:413") and seen("http_oversize:431"), tallies
    assert seen("http_slowloris:408"), tallies
    assert seen("bridge_partial_greeting:dropped"), tallies
    assert seen("bridge_huge_frame:reset") or seen("bridge_huge_frame:dropped"), tallies
    assert seen("admin_oversize:431") and seen("admin_slowloris:opened"), tallies
    rss = result["rss_mib"]
    for process in ("gateway", "sidecar"):
        assert rss["attack_peak"][process] < rss["before"][process] + 150, rss
    # and afterwards the stack is as it was
    assert http_json("GET", gateway.extra["url"] + "/health/ready")[0] == 200
