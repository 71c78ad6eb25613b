"""kill -9 of a node: the others mark it gone within a bound; restarted on its data dir it rejoins by itself.
And discovery without any bootstrap: mDNS on the local network.

Timings come from FAST_P2P: ping every 0.5 s, gone after 3 s of silence, re-dial backoff capped at 2 s.
The bound asserted is the gone timeout plus a generous allowance for a loaded two-core machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.procs import FAST_P2P, Peer, http_json, p2p_network, running_network, wait_for

pytestmark = pytest.mark.e2e

GONE_TIMEOUT = float(FAST_P2P["SIDECAR_PEER_GONE_TIMEOUT"])
BOUND = GONE_TIMEOUT + 6.0


def wait_gone(victim: Peer, observers: list[Peer]) -> float:
    killed = time.monotonic()
    victim.sidecar.kill9()
    for observer in observers:
        wait_for(lambda o=observer: o.status_of(victim) == "gone", BOUND + 10, 0.1, what=f"{victim.name} gone")
    return time.monotonic() - killed


def restart(victim: Peer) -> None:
    victim.sidecar.start(timeout=30)
    _, health = http_json("GET", victim.admin + "/health")
    assert health["node"]["peer_id"] == victim.peer_id  # same key, same identity
    if victim.gateway is not None:
        victim.gateway.wait_healthy(30)


def test_kill9_then_restart_with_the_same_data_dir(tmp_path: Path) -> None:
    peers = p2p_network(tmp_path, ["a", "b", "c"], bootstrap={"b": ["a"], "c": ["a"]}, gateways=("a", "b"))
    with running_network(peers):
        a, b, c = peers["a"], peers["b"], peers["c"]
        a.wait_connected([b, c])
        b.wait_connected([a, c])

        # an ordinary node dies: both others notice within the bound
        elapsed = wait_gone(c, [a, b])
        print(f"c gone after {elapsed:.2f}s")
        assert elapsed <= BOUND, f"c marked gone after {elapsed:.1f}s"
        entry = b.peers()[c.peer_id]
        assert entry["status"] == "gone" and not entry["connected"] and entry["last_seen"] is not None
        # it comes back on the same data dir: a from its settings, b from its peer database
        restart(c)
        a.wait_connected([c], timeout=30)
        b.wait_connected([c], timeout=30)

        # the bootstrap node dies: b re-dials it with backoff while it is away
        elapsed = wait_gone(a, [b])
        print(f"a gone after {elapsed:.2f}s")
        assert elapsed <= BOUND, f"a marked gone after {elapsed:.1f}s"
        assert c.sidecar.alive() and b.status_of(c) == "connected"  # the rest of the network holds together

        def redialling() -> bool:
            [entry] = b.tool("p2p_bootstrap_list")[1]["result"]["bootstrap"]
            return entry["peer_id"] == a.peer_id and entry["dial_failures"] >= 2

        wait_for(redialling, 20, 0.2, what="b re-dialling a")
        restart(a)
        b.wait_connected([a], timeout=30)
        a.wait_connected([b, c], timeout=30)  # a itself knew b and c only from its database


def test_mdns_finds_peers_without_bootstrap(tmp_path: Path) -> None:
    peers = p2p_network(tmp_path, ["a", "b"], gateways=("a",), SIDECAR_MDNS="true")
    with running_network(peers):
        a, b = peers["a"], peers["b"]
        entry = a.wait_connected([b], timeout=30)[b.peer_id]
        assert "mdns" in entry["sources"] or "inbound" in entry["sources"]
