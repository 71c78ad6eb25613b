"""Where a burst of work runs, on a real three-node network (separate processes, libp2p on loopback).

The owner's own workers take what their free slots can; the overflow goes to peers with free slots from
the very first submit of a burst (their task types are known from their first hello, not a later ping);
a node that runs a sidecar without a gateway pulls like any other; and an owner that stops answering
never holds up the work a node has of its own.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Peer, p2p_network, start_all, wait_for
from tests.queue_client import call, wait_done
from tests.test_taskqueue_network import url

pytestmark = pytest.mark.e2e

SLOTS = 8


def start_owner_first(peers: dict[str, Peer], owner: str) -> None:
    """The owner is up before the others join, as when workers join a running node."""
    start_all(*peers[owner].procs(), timeout=60)
    start_all(*[proc for name, peer in peers.items() if name != owner for proc in peer.procs()], timeout=60)
    for peer in peers.values():
        if peer.gateway is not None:
            peer.gateway.health_url = peer.gateway.extra["url"] + "/health/ready"
            peer.gateway.wait_healthy(30)


def stop_all(peers: dict[str, Peer]) -> None:
    for peer in reversed(list(peers.values())):
        for proc in reversed(peer.procs()):
            proc.stop()


@pytest.fixture
def burst_net(tmp_path: Path) -> Iterator[dict[str, Peer]]:
    """a (gateway) owns the work; b has a gateway too; c runs the sidecar only."""
    peers = p2p_network(
        tmp_path,
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a", "b"),
        gateway_env={"GATEWAY_LOG_LEVEL": "warning"},
        SIDECAR_LOG_LEVEL="warning",
        SIDECAR_WORKER_CONCURRENCY=str(SLOTS),
    )
    try:
        start_owner_first(peers, "a")
        yield peers
    finally:
        stop_all(peers)


def connected(peer: Peer, others: list[Peer]) -> bool:
    return {other.peer_id for other in others} <= set(peer.peers(status_filter="connected"))


def test_a_burst_spreads_over_every_node_from_its_first_submit(burst_net: dict[str, Peer]) -> None:
    a, b, c = burst_net["a"], burst_net["b"], burst_net["c"]
    wait_for(lambda: connected(a, [b, c]), 30, 0.05, what="a connected to b and c")
    # No waiting for a capability refresh: b and c said which task types they run in their first hello.

    def submit(index: int) -> str:
        return call(url(a), "task_submit", task_type="sleep", payload={"seconds": 0.25, "result": index})["task_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        task_ids = list(pool.map(submit, range(96)))
    views = [wait_done(url(a), task_id) for task_id in task_ids]
    assert all(view["status"] == "completed" and view["attempt"] == 1 for view in views)
    ran_on = Counter(view["executed_by"] for view in views)
    names = {a.peer_id: "a", b.peer_id: "b", c.peer_id: "c"}
    shares = {names[peer]: count for peer, count in ran_on.items()}
    # every node, the sidecar-only c among them, ran at least a fifth of the burst
    assert set(shares) == {"a", "b", "c"} and min(shares.values()) >= 96 // 5, shares
    # the tasks that overflowed a's slots while b and c were idle waited for a peer only briefly
    early_remote = [view for view in views[: 3 * SLOTS] if view["executed_by"] != a.peer_id]
    waited = [view["started_at"] - view["created_at"] for view in early_remote]
    assert early_remote and statistics.median(waited) < 0.1, sorted(waited)


@pytest.fixture
def frozen_owner_net(tmp_path: Path) -> Iterator[dict[str, Peer]]:
    """a owns work and runs none; b (one slot) runs a's work and its own."""
    peers = p2p_network(
        tmp_path,
        ["a", "b"],
        bootstrap={"b": ["a"]},
        gateways=("a", "b"),
        gateway_env={"GATEWAY_LOG_LEVEL": "warning"},
        env={"a": {"SIDECAR_WORKER_CONCURRENCY": "0"}, "b": {"SIDECAR_WORKER_CONCURRENCY": "1"}},
        SIDECAR_LOG_LEVEL="warning",
        # a frozen peer is not declared gone (and its connection closed) during the test
        SIDECAR_PEER_GONE_TIMEOUT="30",
    )
    try:
        start_owner_first(peers, "a")
        yield peers
    finally:
        for peer in peers.values():
            peer.sidecar.signal(18)  # SIGCONT, so that the stop below is not held up by a stopped process
        stop_all(peers)


def test_an_owner_that_stops_answering_does_not_hold_up_local_work(frozen_owner_net: dict[str, Peer]) -> None:
    a, b = frozen_owner_net["a"], frozen_owner_net["b"]
    wait_for(lambda: connected(a, [b]), 30, 0.05, what="a connected to b")
    theirs = [
        call(url(a), "task_submit", task_type="sleep", payload={"seconds": 0.5, "result": n})["task_id"]
        for n in range(10)
    ]

    def b_runs_one_of_a() -> bool:
        listing = call(url(a), "task_list", status_filter="running")
        return len([task for task in listing["tasks"] if task["executed_by"] == b.peer_id]) == 1

    wait_for(b_runs_one_of_a, 30, 0.02, what="b running one of a's tasks")
    a.sidecar.signal(19)  # SIGSTOP: a's sidecar answers nothing, its connection stays open
    # b's task ends; b reports to a and claims from a again with its one free slot: both wait on a frozen peer
    time.sleep(1.0)
    delays = []
    for n in range(5):
        view = call(url(b), "task_submit", task_type="sleep", payload={"seconds": 0.05, "result": n})
        done = wait_done(url(b), view["task_id"], timeout=10)
        assert done["status"] == "completed" and done["executed_by"] == b.peer_id
        delays.append(done["started_at"] - done["created_at"])
    assert max(delays) < 0.1, delays  # b's own work started at once each time
    a.sidecar.signal(18)  # SIGCONT: a answers again, and nothing of its work was lost
    for task_id in theirs:
        assert wait_done(url(a), task_id, timeout=60)["status"] == "completed"
