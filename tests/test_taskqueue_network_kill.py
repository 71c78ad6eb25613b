"""kill -9 on a three-node network: a worker node dies mid-task, then the submitting node dies with work queued.

Each test starts its own network (separate processes on loopback) with a short lease, kills one sidecar with
SIGKILL and checks, at the owner, that every task completes exactly once.  The owner's SQLite file is read
directly once it has stopped.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Peer, http_json, p2p_network, running_network, wait_for
from tests.queue_client import call, wait_done, wait_status
from tests.test_taskqueue_network import url, wait_advertised

pytestmark = pytest.mark.e2e

LEASE_S = 3.0


def stored(peer: Peer) -> list[sqlite3.Row]:
    db = sqlite3.connect(Path(peer.sidecar.extra["data_dir"]) / "queue.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM tasks ORDER BY seq").fetchall()
    finally:
        db.close()


@pytest.fixture
def worker_net(tmp_path: Path) -> Iterator[dict[str, Peer]]:
    """a submits and runs nothing; b runs everything at first; c has no worker until the test registers one."""
    peers = p2p_network(
        tmp_path,
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a", "c"),
        env={
            "a": {"SIDECAR_WORKER_CONCURRENCY": "0"},
            "c": {"SIDECAR_WORKER_CONCURRENCY": "0", "SIDECAR_SHUTDOWN_GRACE_SECONDS": "0.5"},
        },
        SIDECAR_QUEUE_LEASE_SECONDS=str(LEASE_S),
        SIDECAR_LOG_LEVEL="warning",
    )
    with running_network(peers):
        yield peers


def test_tasks_of_a_worker_node_killed_mid_task_complete_elsewhere(worker_net: dict[str, Peer]) -> None:
    """b is killed running four tasks: they complete on c.  Then c is stopped (SIGTERM) running one: handed back."""
    a, b, c = worker_net["a"], worker_net["b"], worker_net["c"]
    wait_advertised(a, [b], "sleep")
    ids = [
        call(url(a), "task_submit", task_type="sleep", payload={"seconds": 2, "result": n})["task_id"] for n in range(4)
    ]

    def running_on_b() -> bool:
        views = [call(url(a), "task_status", task_id=task_id) for task_id in ids]
        return all(view["status"] == "running" and view["executed_by"] == b.peer_id for view in views)

    wait_for(running_on_b, 20, 0.1, what="all four running on b")
    call(url(c), "worker_register", worker_id="spare", capabilities=["sleep"], max_concurrent_tasks=4)
    wait_advertised(a, [b, c], "sleep")
    b.sidecar.kill9()
    killed = time.monotonic()
    for n, task_id in enumerate(ids):
        done = wait_done(url(a), task_id, timeout=60)
        assert done["status"] == "completed" and done["result"] == {"slept_s": 2, "result": n}, done
        assert done["executed_by"] == c.peer_id and done["worker"] == "spare"
        assert (done["attempt"], done["failures"]) == (2, 1)  # the attempt on b counted as lost, once
    # the lease (3 s) ran out, the reaper queued them again, c pulled them and slept 2 s: well within 20 s
    assert time.monotonic() - killed < LEASE_S + 2 + 15
    logs = call(url(a), "task_status", task_id=ids[0], include_logs=True)["logs"]
    assert any("lease expired" in entry["event"] for entry in logs), logs
    stats = call(url(a), "queue_stats")["counts"]
    assert stats == {"queued": 0, "running": 0, "completed": 4, "failed": 0, "cancelled": 0}
    # a graceful stop: what c still runs when its grace period ends goes back to a at once, no failure counted
    task_id = call(url(a), "task_submit", task_type="sleep", payload={"seconds": 60})["task_id"]
    assert wait_status(url(a), task_id, "running")["executed_by"] == c.peer_id
    c.sidecar.signal(signal.SIGTERM)
    assert c.sidecar.exit_code(20) == 0
    # c sent the hand-back before it exited; a busy owner may record it a moment later, but well before the lease
    # (3 s) could expire, which would count a failure instead.
    wait_status(url(a), task_id, "queued", timeout=LEASE_S)
    view = call(url(a), "task_status", task_id=task_id, include_logs=True)
    assert (view["status"], view["attempt"], view["failures"]) == ("queued", 1, 0), view
    assert any("handed back" in entry["event"] and c.peer_id in entry["event"] for entry in view["logs"]), view


@pytest.fixture
def owner_net(tmp_path: Path) -> Iterator[dict[str, Peer]]:
    peers = p2p_network(
        tmp_path,
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a",),
        env={"a": {"SIDECAR_WORKER_CONCURRENCY": "2"}},
        SIDECAR_WORKER_CONCURRENCY="4",
        SIDECAR_QUEUE_LEASE_SECONDS=str(LEASE_S),
        SIDECAR_LOG_LEVEL="warning",
    )
    with running_network(peers):
        yield peers


def test_200_tasks_survive_kill9_of_the_submitting_sidecar_while_peers_run_some(owner_net: dict[str, Peer]) -> None:
    a, b, c = owner_net["a"], owner_net["b"], owner_net["c"]
    wait_advertised(a, [b, c], "sleep")
    call(url(a), "queue_pause")
    keys = [f"job-{n}" for n in range(200)]

    def submit(n: int) -> str:
        payload = {"seconds": 0.15, "result": n}
        view = call(url(a), "task_submit", task_type="sleep", payload=payload, metadata={"idempotency_key": keys[n]})
        return view["task_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(200)))
    call(url(a), "queue_resume")

    def peers_running() -> set[str]:
        listing = call(url(a), "task_list", status_filter="running", limit=100)
        completed = listing["counts"]["completed"]
        peers = {task["executed_by"] for task in listing["tasks"]} - {a.peer_id}
        return peers if completed >= 20 and peers else set()

    assert wait_for(peers_running, 30, 0.05, what="peers running a's tasks") <= {b.peer_id, c.peer_id}
    a.sidecar.kill9()  # most of the 200 still queued; some running on a, b and c
    before_restart = {row["task_id"]: row["status"] for row in stored(a)}
    assert list(before_restart.values()).count("queued") > 50
    a.sidecar.start()
    wait_for(lambda: http_json("GET", url(a) + "/health/ready")[0] == 200, 30, what="gateway reconnected")
    # a client unsure which submits landed sends them all again: nothing is duplicated
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        again = list(pool.map(submit, range(200)))
    assert again == ids

    def all_completed() -> bool:
        return call(url(a), "queue_stats")["counts"]["completed"] == 200

    wait_for(all_completed, 90, 0.2, what="all 200 completed after the restart")
    assert wait_done(url(a), ids[-1])["status"] == "completed"
    a.sidecar.stop()
    rows = stored(a)
    assert len(rows) == 200 and len({row["idem_key"] for row in rows}) == 200
    assert all(row["status"] == "completed" and row["result"] is not None for row in rows)
    assert sorted(json.loads(row["result"])["result"] for row in rows) == list(range(200))
    executed = {row["worker_peer"] or "local" for row in rows}
    assert executed == {"local", b.peer_id, c.peer_id}, executed
    # what ran again is at most what was in flight when a died, each counted as one lost attempt: running
    # (2 + 4 + 4 slots) or finished with its result on the way (a worker frees a slot before it reports)
    rerun = [row for row in rows if row["attempt"] > 1]
    assert len(rerun) <= 2 * (2 + 4 + 4) and all(row["failures"] == 1 for row in rerun), [dict(r) for r in rerun]
