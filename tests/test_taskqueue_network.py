"""The task queue across three sidecars on a real libp2p network: separate processes on loopback, no fakes.

a: bootstrap node, where tasks are submitted (its gateway); b and c bootstrap from a and pull work from it.
Every node has a gateway here, so each one's workers can be asked what they ran.  The tests that kill a
node start their own network (``test_taskqueue_network_kill.py``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from p2p_sidecar.node.wire import FrameReader, Reply, Request, decode, encode
from shared_schema.content import cid_v1_raw
from tests.p2p_client import Opener, run_client
from tests.procs import Peer, p2p_network, running_network, wait_for
from tests.queue_client import call, refused, wait_done, wait_status

pytestmark = pytest.mark.e2e

ITERATIONS = 1500
"""Chained hashes per ``hash`` task: a few milliseconds each, long enough for peers to share the work."""


def url(peer: Peer) -> str:
    assert peer.gateway is not None
    return peer.gateway.extra["url"]


def wait_advertised(owner: Peer, others: list[Peer], task_type: str, timeout: float = 30.0) -> None:
    """Until ``owner`` sees every one of ``others`` connected and advertising ``task_type``."""
    wanted = {peer.peer_id for peer in others}

    def seen() -> bool:
        found = owner.peers(status_filter="connected", capability_filter=f"task:{task_type}")
        return wanted <= set(found)

    wait_for(seen, timeout, 0.2, what=f"{owner.name} sees {sorted(p.name for p in others)} running {task_type}")


def worker_metrics(peer: Peer) -> dict[str, int]:
    """The default worker's counters on that node (it runs tasks of every owner)."""
    stats = call(url(peer), "queue_stats", include_worker_stats=True)
    [local] = [worker for worker in stats["worker_stats"] if worker["worker_id"] == "local"]
    return local["metrics"]


def chained_sha256(data: bytes, iterations: int) -> str:
    value = hashlib.sha256(data).digest()
    for _ in range(iterations - 1):
        value = hashlib.sha256(value).digest()
    return value.hex()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Peer]]:
    peers = p2p_network(
        tmp_path_factory.mktemp("queue-net"),
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a", "b", "c"),
        env={"a": {"SIDECAR_WORKER_CONCURRENCY": "4"}},
        SIDECAR_QUEUE_LEASE_SECONDS="6",
        SIDECAR_LOG_LEVEL="warning",
    )
    with running_network(peers):
        a, b, c = peers["a"], peers["b"], peers["c"]
        wait_advertised(a, [b, c], "hash")
        yield peers


def test_500_hash_tasks_run_across_all_three_nodes(net: dict[str, Peer]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    before = {peer.name: worker_metrics(peer) for peer in (a, b, c)}
    counts_before = call(url(a), "queue_stats")["counts"]
    call(url(a), "queue_pause", reason="filling")  # so that every node's workers start on a full queue

    def submit(index: int) -> tuple[str, bytes]:
        data = f"item-{index}"
        payload = {"data": data, "iterations": ITERATIONS}
        view = call(url(a), "task_submit", task_type="hash", payload=payload, tags=["five-hundred"])
        assert view["created"] and view["status"] == "queued"
        return view["task_id"], data.encode()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(submit, range(500)))
    assert call(url(a), "queue_stats")["counts"]["queued"] == counts_before["queued"] + 500
    call(url(a), "queue_resume")

    def all_done() -> bool:
        return call(url(a), "queue_stats")["counts"]["completed"] >= counts_before["completed"] + 500

    wait_for(all_done, 120, 0.2, what="500 hash tasks completed")

    def result(item: tuple[str, bytes]) -> tuple[dict[str, Any], bytes]:
        return call(url(a), "task_result", task_id=item[0]), item[1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(result, submitted))
    executed_by: dict[str, int] = {}
    for answer, data in results:
        assert answer["status"] == "completed" and answer["ready"], answer
        assert answer["result"] == {
            "algorithm": "sha256",
            "digest": chained_sha256(data, ITERATIONS),
            "size": len(data),
            "cid": cid_v1_raw(data),
            "iterations": ITERATIONS,
        }
        executed_by[answer["executed_by"]] = executed_by.get(answer["executed_by"], 0) + 1
    # a's record says who ran each task, by peer id: a itself and both peers took a share
    assert set(executed_by) == {a.peer_id, b.peer_id, c.peer_id}, executed_by
    assert all(count >= 5 for count in executed_by.values()), executed_by
    stats = call(url(a), "queue_stats")
    assert stats["counts"]["completed"] == counts_before["completed"] + 500
    assert stats["counts"]["queued"] == stats["counts"]["running"] == stats["counts"]["failed"] == 0
    # each node's workers report what they ran: every task was executed exactly once, nothing was refused
    after = {peer.name: worker_metrics(peer) for peer in (a, b, c)}
    ran = {name: after[name]["completed"] - before[name]["completed"] for name in after}
    assert ran == {"a": executed_by[a.peer_id], "b": executed_by[b.peer_id], "c": executed_by[c.peer_id]}
    assert all(after[name]["discarded"] == before[name]["discarded"] for name in after)
    # the peers own none of it: their own queues are untouched
    for peer in (b, c):
        assert call(url(peer), "task_list", tag_filter="five-hundred")["count"] == 0


def test_a_one_hop_remote_task_runs_on_the_named_peer_and_is_read_at_the_owner(net: dict[str, Peer]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    placed = call(
        url(a),
        "task_submit",
        task_type="hash",
        payload={"data": "one hop"},
        metadata={"placement": {"peer": b.peer_id}},
    )
    done = wait_done(url(a), placed["task_id"])
    assert done["status"] == "completed" and done["executed_by"] == b.peer_id and done["worker"] == "local"
    assert done["result"]["cid"] == cid_v1_raw(b"one hop")
    answer = call(url(a), "task_result", task_id=placed["task_id"])
    assert answer["result"] == done["result"] and answer["executed_by"] == b.peer_id
    logs = call(url(a), "task_status", task_id=placed["task_id"], include_logs=True)["logs"]
    assert any(b.peer_id in entry["event"] for entry in logs), logs
    # "remote": any peer but a
    remote = [
        call(url(a), "task_submit", task_type="echo", payload={"n": n}, metadata={"placement": "remote"})
        for n in range(10)
    ]
    for n, view in enumerate(remote):
        done = wait_done(url(a), view["task_id"])
        assert done["result"] == {"n": n} and done["executed_by"] in (b.peer_id, c.peer_id), done
    # the task is a's: b, which ran it, does not own it
    status, error = refused(url(b), "task_status", task_id=placed["task_id"])
    assert status == 404 and error["code"] == "not_found"
    # a malformed placement is refused at submit
    status, error = refused(url(a), "task_submit", task_type="echo", payload=1, metadata={"placement": "elsewhere"})
    assert status == 422 and "placement" in error["message"]


def test_cancel_stops_a_task_running_on_a_remote_worker(net: dict[str, Peer]) -> None:
    a, b = net["a"], net["b"]
    task_id = call(
        url(a),
        "task_submit",
        task_type="sleep",
        payload={"seconds": 60},
        metadata={"placement": {"peer": b.peer_id}},
    )["task_id"]
    running = wait_status(url(a), task_id, "running")
    assert running["executed_by"] == b.peer_id

    def on_b() -> list[str]:
        tasks = call(url(b), "worker_status", worker_id="local", include_tasks=True)["tasks"]
        return [task["task_id"] for task in tasks if task["owner"] == a.peer_id]

    assert task_id in wait_for(lambda: task_id in on_b() and on_b(), 10, what="b runs the task")
    cancelled_at = time.monotonic()
    view = call(url(a), "task_cancel", task_id=task_id, reason="changed my mind")
    assert view["cancelled"] and view["previous_status"] == "running" and view["status"] == "cancelled"
    wait_for(lambda: task_id not in on_b(), 10, what="the attempt on b stopped")
    assert time.monotonic() - cancelled_at < 10  # long before its 60 s sleep would have ended
    assert call(url(a), "task_result", task_id=task_id)["status"] == "cancelled"


def test_a_diamond_workflow_runs_across_peers(net: dict[str, Peer]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    steps = [
        {"step_id": "A", "task_type": "hash", "payload": {"data": "seed"}},
        {
            "step_id": "B",
            "task_type": "hash",
            "payload": {"data": "left:{{steps.A.output.digest}}"},
            "metadata": {"placement": {"peer": b.peer_id}},
        },
        {
            "step_id": "C",
            "task_type": "sleep",
            "payload": {"seconds": 0.1, "result": "{{steps.A.output.size}}"},
            "metadata": {"placement": {"peer": c.peer_id}},
        },
        {
            "step_id": "D",
            "task_type": "hash",
            "payload": {"data": "{{steps.B.output.digest}}+{{steps.C.output.result}}"},
        },
    ]
    workflow_id = call(url(a), "workflow_submit", name="diamond", steps=steps)["workflow_id"]
    wait_for(
        lambda: call(url(a), "workflow_status", workflow_id=workflow_id)["status"] != "running", 60, what="workflow"
    )
    result = call(url(a), "workflow_result", workflow_id=workflow_id)

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    assert result["status"] == "completed", result
    assert result["output"]["digest"] == sha(f"{sha('left:' + sha('seed'))}+4")
    status = call(url(a), "workflow_status", workflow_id=workflow_id, include_steps=True, include_metrics=True)
    ran_on = {step["step_id"]: step["executed_by"] for step in status["steps"]}
    assert ran_on["B"] == b.peer_id and ran_on["C"] == c.peer_id, ran_on
    assert set(status["metrics"]["executed_on"]) >= {b.peer_id, c.peer_id}, status["metrics"]


def test_a_strangers_malformed_or_forged_queue_messages_change_nothing(net: dict[str, Peer]) -> None:
    a = net["a"]
    task_id = call(url(a), "task_submit", task_type="echo", payload="original")["task_id"]
    assert wait_done(url(a), task_id)["result"] == "original"
    requests: list[tuple[str, dict[str, Any]]] = [
        ("queue.claim", {"worker": "w", "types": "echo", "max": 1}),  # no boot, types not a list
        ("queue.complete", {"reports": [{"task_id": task_id, "attempt": 1, "ok": True, "result": "forged"}]}),
        ("queue.heartbeat", {"worker": "w", "boot": "x", "leases": [[task_id, 1]]}),
        ("queue.release", {"worker": "w", "leases": [[task_id]]}),
    ]

    async def scenario(open_stream: Opener) -> list[Reply]:
        stream = await open_stream()
        reader = FrameReader(1 << 20)
        replies: list[Reply] = []
        for request_id, (op, body) in enumerate(requests, 1):
            await stream.write(encode(Request(request_id, op, body, 5.0), 1 << 20))
            frames: list[bytes] = []
            while not frames:
                frames = reader.feed(await stream.read(65536))
            reply = decode(frames[0])
            assert isinstance(reply, Reply), reply
            replies.append(reply)
        await stream.close()
        return replies

    replies = run_client(a.multiaddr, scenario)
    assert replies[0].error is not None and replies[0].error.code.value == "invalid_arguments"
    assert "boot" in replies[0].error.message
    assert replies[1].result == {"verdicts": ["duplicate"]}  # not its lease: the recorded result stays
    assert replies[2].result["leases"] == {task_id: "lost"}
    assert replies[3].error is not None and replies[3].error.code.value == "invalid_arguments"
    assert call(url(a), "task_result", task_id=task_id)["result"] == "original"
