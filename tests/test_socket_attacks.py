"""Garbage, slowloris and oversize traffic at every listening socket while a polite client keeps working.

A shorter run of ``bench/attack_sockets.py`` (which has the details and writes the figures in
docs/reliability.md): the gateway's HTTP port, the bridge's ZeroMQ port (raw TCP), the sidecar's
admin port and its libp2p port (raw TCP, and a real libp2p peer after a complete handshake) are
attacked at once from other processes, while a well-behaved client calls local and P2P tools, the
admin health endpoint, a remote tool over libp2p from a second node, and tasks that the second node
claims over libp2p.  The timeouts are shortened so each defence fires within the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.attack_sockets import AttackedStack, attack_network, print_report, run
from tests.procs import http_json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def attacked_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackedStack]:
    tmp: Path = tmp_path_factory.mktemp("attack")
    short = {"SIDECAR_BRIDGE_HANDSHAKE_TIMEOUT": "2", "SIDECAR_P2P_HANDSHAKE_TIMEOUT": "3"}
    with attack_network(tmp, sidecar_env=short, GATEWAY_HEADER_TIMEOUT="3") as stack:
        yield stack


def test_every_socket_survives_and_the_polite_client_is_served(attacked_stack: AttackedStack) -> None:
    gateway, sidecar = attacked_stack.gateway, attacked_stack.sidecar
    result = run(gateway, sidecar, before=2, attack=8, after=2, slow=100, p2p=attacked_stack.p2p, idle_streams=100)
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
    # libp2p: handshakes cut short and silent connections dropped after SIDECAR_P2P_HANDSHAKE_TIMEOUT (3 s here)
    assert seen("p2p_partial_handshake:dropped_after_3s") and seen("p2p_half_open:dropped_after_3s"), tallies
    assert seen("p2p_garbage:") and seen("p2p_handshake:completed"), tallies
    # after a complete handshake: bad frames end their stream, a bad field is answered, a stranger is refused
    for attack in ("p2p_oversize_frame", "p2p_garbage_frame", "p2p_not_a_message"):
        assert seen(f"{attack}:eof") + seen(f"{attack}:reset") and not seen(f"{attack}:open"), tallies
    assert seen("p2p_missing_fields:bad_frame") and seen("p2p_members_only_op:forbidden"), tallies
    assert not seen("p2p_members_only_op:ok"), tallies
    metrics = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics")[1]

    def metric(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))

    assert metric('sidecar_p2p_refused_total{reason="no_secret_proof"}') >= seen("p2p_members_only_op:forbidden")
    assert metric('sidecar_p2p_protocol_errors_total{reason="too_large"}') >= 1
    # 100 idle streams against a cap of 64 trip it when the attacker gets 64 open within its window, which a
    # loaded machine may not allow (opening one takes a protocol negotiation with a node under a dozen other
    # attacks); tests/test_p2p_stream_cap.py checks the cap alone, exactly, every time
    if seen("p2p_idle_streams:opened") >= 64:
        assert metric('sidecar_p2p_protocol_errors_total{reason="too_many_streams"}') >= 1
    for kind in ("libp2p_remote_call", "libp2p_task"):
        assert result["client_by_kind"][kind]["attack"]["success_rate"] == 1.0, result["client_by_kind"][kind]
    rss = result["rss_mib"]
    for process in ("gateway", "sidecar"):
        assert rss["attack_peak"][process] < rss["before"][process] + 150, rss
    # and afterwards the stack is as it was
    assert http_json("GET", gateway.extra["url"] + "/health/ready")[0] == 200
