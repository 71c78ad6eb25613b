"""The queue's ops between queue services, over the in-memory PeerRpc (unit tests, virtual time).

These prove the protocol logic (hints, claims, heartbeats, batched reports,
lease loss, restarts) in isolation; the real network is tested end to end
with real processes in test_taskqueue_network*.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.taskqueue.errors import InvalidRequest
from p2p_sidecar.taskqueue.executors import ExecutorRegistry
from p2p_sidecar.taskqueue.protocol import OP_CLAIM, OP_COMPLETE, OP_HEARTBEAT, OP_RELEASE, PeerOpFailed, PeerRpc
from p2p_sidecar.taskqueue.service import QueueService
from p2p_sidecar.taskqueue.store import TaskStore
from p2p_sidecar.taskqueue.worker import WorkerSpec
from tests.memory_rpc import MemoryNetwork

BASE = 1_800_000_000.0


class Node:
    """One queue service on the in-memory network, killable like a process."""

    def __init__(self, net: MemoryNetwork, tmp: Path, name: str, **settings: Any) -> None:
        self.net, self.name = net, name
        self.rpc = net.join(name)
        (tmp / name).mkdir(exist_ok=True)
        fields = {"data_dir": tmp / name, "queue_lease_seconds": 3.0, "worker_concurrency": 2, **settings}
        self.store = TaskStore.open(tmp / name / "queue.db")
        self.queue = QueueService(
            SidecarSettings(**fields), self.store, rpc=self.rpc, clock=lambda: BASE + trio.current_time()
        )
        self.scope = trio.CancelScope()

    async def start(self, nursery: trio.Nursery) -> Node:
        await nursery.start(self._run)
        return self

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.queue.run(task_status=task_status)
        finally:
            self.store.close()

    # the views the tools return, so the assertions read like an agent's
    def submit(self, **arguments: Any) -> dict[str, Any]:
        record, _ = self.queue.submit(**arguments)
        return self.queue.view(record)

    def get(self, task_id: str) -> dict[str, Any]:
        return self.queue.view(self.queue.get(task_id))

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        return self.queue.view(await self.queue.wait(task_id, timeout))

    def kill(self) -> None:
        """Gone at once: unreachable, every task cancelled (its releases cannot reach anyone)."""
        self.net.down.add(self.name)
        self.scope.cancel()


def run(test: Callable[[MemoryNetwork, trio.Nursery], Awaitable[None]]) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        async with trio.open_nursery() as nursery:
            await test(net, nursery)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def test_the_fail_test_aid_is_loaded_only_when_asked_for() -> None:
    assert "fail" not in ExecutorRegistry.discover().types  # what a production node advertises
    assert set(ExecutorRegistry.discover(test_aids=True).types) >= {"echo", "fail", "hash", "sleep", "tool"}
    assert ExecutorRegistry.discover(["echo", "fail"], test_aids=True).types == ["echo", "fail"]
    assert ExecutorRegistry.discover(["echo", "fail"]).types == ["echo"]  # naming it is not enough


def test_memory_rpc_satisfies_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryNetwork().join("x"), PeerRpc)


def test_remote_placement_runs_on_a_peer_and_records_at_the_owner(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        await Node(net, tmp_path, "B").start(nursery)
        # no "tool" without an allowlist, and no test aid ("fail") unless asked for
        assert net.peers["B"].capabilities == {"echo", "hash", "sleep"}
        view = owner.submit(task_type="echo", payload={"x": 1}, metadata={"placement": "remote"})
        done = await owner.wait(view["task_id"], 10)
        assert done["status"] == "completed" and done["executed_by"] == "B" and done["attempt"] == 1
        assert owner.get(view["task_id"]) == done
        assert owner.queue.get(view["task_id"]).result_json == '{"x":1}'
        named = owner.submit(task_type="echo", payload=2, metadata={"placement": {"peer": "B"}})
        assert (await owner.wait(named["task_id"], 10))["executed_by"] == "B"
        assert owner.queue.lending is not None and owner.queue.lending.counters["results_from_peers"] == 2

    run(test)


def test_work_spreads_by_free_slots_and_capability(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=1).start(nursery)
        await Node(net, tmp_path, "B", worker_task_types=["sleep"], worker_concurrency=3).start(nursery)
        await Node(net, tmp_path, "C", worker_task_types=["echo"], worker_concurrency=3).start(nursery)
        sleeps = [owner.submit(task_type="sleep", payload={"seconds": 1})["task_id"] for _ in range(12)]
        echoes = [
            owner.submit(task_type="echo", payload=i, metadata={"placement": "remote"})["task_id"] for i in range(6)
        ]
        ran_on: dict[str, list[str]] = {}
        for task_id in sleeps + echoes:
            done = await owner.wait(task_id, 60)
            assert done["status"] == "completed" and done["attempt"] == 1, done
            ran_on.setdefault(done["task_type"], []).append(done["executed_by"])
        assert set(ran_on["sleep"]) == {"A", "B"}  # C does not run sleep; A's one slot was not enough
        assert ran_on["sleep"].count("B") > ran_on["sleep"].count("A")  # B has three free slots to A's one
        assert set(ran_on["echo"]) == {"C"}
        assert owner.queue.store.counts()["completed"] == 18

    run(test)


def test_a_dead_workers_task_returns_after_its_lease_and_runs_elsewhere(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        doomed = await Node(net, tmp_path, "B", worker_concurrency=1).start(nursery)
        view = owner.submit(task_type="sleep", payload={"seconds": 2}, metadata={"placement": "remote"})
        task_id = view["task_id"]
        await until(lambda: owner.get(task_id)["status"] == "running")
        await Node(net, tmp_path, "C", worker_concurrency=1).start(nursery)
        killed_at = trio.current_time()
        doomed.kill()
        done = await owner.wait(task_id, 30)
        assert done["status"] == "completed" and done["executed_by"] == "C"
        assert (done["attempt"], done["failures"]) == (2, 1)
        assert trio.current_time() - killed_at >= 2.0  # not before the lease (3 s from the last heartbeat) ran out
        lines = [line for _, line in owner.queue.store.log_lines(owner.queue.get(task_id).seq)]
        assert any("lease expired" in line and "on B" in line for line in lines), lines

    run(test)


def test_cancelling_a_remote_running_task_stops_it_on_the_peer(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        peer = await Node(net, tmp_path, "B", worker_concurrency=1, queue_lease_seconds=60.0).start(nursery)
        view = owner.submit(task_type="sleep", payload={"seconds": 100}, metadata={"placement": "remote"})
        await until(lambda: peer.queue.running_here == 1)
        before = owner.queue.cancel(view["task_id"], "not needed")
        assert before.status == "running" and owner.get(view["task_id"])["status"] == "cancelled"
        await until(lambda: peer.queue.running_here == 0, timeout=1.0)  # the notice, not a 20 s heartbeat
        assert peer.queue.pool.workers["local"].stats.completed == 0

    run(test)


def test_ops_refuse_late_duplicate_and_malformed_reports(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        rpc = net.join("B")  # a bare peer speaking the ops by hand
        view = owner.submit(task_type="echo", payload=1)
        claim = {"worker": "w", "boot": "boot-1", "types": ["echo"], "max": 5}
        [lease] = (await rpc.request("A", OP_CLAIM, claim, timeout=1))["tasks"]
        assert lease["task_id"] == view["task_id"] and lease["attempt"] == 1
        held = {"worker": "w", "boot": "boot-1", "leases": [[lease["task_id"], 1]]}
        assert (await rpc.request("A", OP_HEARTBEAT, held, timeout=1))["leases"] == {lease["task_id"]: "ok"}
        report = {"task_id": lease["task_id"], "attempt": 1, "ok": True, "result": {"r": 1}}
        first = await rpc.request("A", OP_COMPLETE, {"reports": [report]}, timeout=1)
        again = await rpc.request("A", OP_COMPLETE, {"reports": [report, {**report, "attempt": 7}]}, timeout=1)
        assert first == {"verdicts": ["recorded"]} and again == {"verdicts": ["duplicate", "rejected"]}
        assert owner.get(view["task_id"])["status"] == "completed"
        assert (await rpc.request("A", OP_RELEASE, {"worker": "w", "leases": [[lease["task_id"], 1]]}, timeout=1)) == {
            "released": 0
        }
        malformed: list[tuple[str, dict[str, Any], str]] = [
            (OP_CLAIM, {"worker": "w", "boot": "b", "types": "echo", "max": 1}, "types must be a list"),
            (OP_CLAIM, {"worker": "w", "boot": "b", "types": [], "max": 0}, "max must be an integer"),
            (OP_HEARTBEAT, {"worker": "w", "boot": "b", "leases": [["t"]]}, "[task_id, attempt]"),
            (OP_COMPLETE, {"reports": []}, "reports must be a list"),
        ]
        for op, body, words in malformed:
            with pytest.raises(PeerOpFailed, match=words.replace("[", r"\[").replace("]", r"\]")):
                await rpc.request("A", op, body, timeout=1)

    run(test)


def test_a_restarted_worker_peer_gives_its_old_leases_back_at_once(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0, queue_lease_seconds=600.0).start(nursery)
        rpc = net.join("B")
        view = owner.submit(task_type="echo", payload=1)
        await rpc.request("A", OP_CLAIM, {"worker": "w", "boot": "first-life", "types": ["echo"], "max": 1}, timeout=1)
        assert owner.get(view["task_id"])["status"] == "running"
        again = {"worker": "w", "boot": "second-life", "types": ["echo"], "max": 1}
        [lease] = (await rpc.request("A", OP_CLAIM, again, timeout=1))["tasks"]
        assert lease["attempt"] == 2  # re-queued (one failure counted) and claimed again, no 600 s wait
        assert owner.get(view["task_id"])["failures"] == 1

    run(test)


def test_pause_stops_claims_from_peers_too(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        await Node(net, tmp_path, "B").start(nursery)
        owner.queue.pause("maintenance")
        view = owner.submit(task_type="echo", payload=1, metadata={"placement": "remote"})
        await trio.sleep(5)
        assert owner.get(view["task_id"])["status"] == "queued"
        rpc = net.join("probe")
        reply = await rpc.request("A", OP_CLAIM, {"worker": "w", "boot": "b", "types": ["echo"], "max": 1}, timeout=1)
        assert reply["tasks"] == [] and reply["paused"] is True
        owner.queue.resume()
        assert (await owner.wait(view["task_id"], 10))["executed_by"] == "B"

    run(test)


def test_a_report_survives_a_short_owner_outage(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        peer = await Node(net, tmp_path, "B", worker_concurrency=1).start(nursery)
        view = owner.submit(task_type="sleep", payload={"seconds": 1}, metadata={"placement": "remote"})
        await until(lambda: peer.queue.running_here == 1)
        owner.kill()
        await trio.sleep(1.5)  # the task ends while its owner is down; the worker keeps retrying its report
        await trio.sleep(0)
        restarted = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        done = await restarted.wait(view["task_id"], 10)
        assert done["status"] == "completed" and done["executed_by"] == "B" and done["attempt"] == 1
        assert peer.queue.pool.workers["local"].stats.completed == 1

    run(test)


def test_placement_needs_a_network_and_unknown_types_are_refused(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_task_types=["echo"]).start(nursery)
        with pytest.raises(InvalidRequest, match="unknown task_type 'hash'"):
            owner.submit(task_type="hash", payload={"data": "x"})
        await Node(net, tmp_path, "B", worker_task_types=["hash"]).start(nursery)
        view = owner.submit(task_type="hash", payload={"data": "x"})  # a peer advertises it now
        assert (await owner.wait(view["task_id"], 10))["executed_by"] == "B"
        mine = owner.submit(task_type="echo", payload=1, metadata={"placement": {"peer": "A"}})
        assert (await owner.wait(mine["task_id"], 10))["executed_by"] == "A"  # this node, by its peer id

    run(test)


def test_unregistering_a_worker_hands_its_remote_tasks_back_uncounted(tmp_path: Path) -> None:
    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0).start(nursery)
        peer = await Node(net, tmp_path, "B", worker_concurrency=1).start(nursery)
        quick = owner.submit(task_type="sleep", payload={"seconds": 1}, metadata={"placement": "remote"})
        await until(lambda: peer.queue.running_here == 1)
        graceful = await peer.queue.remove_worker("local", graceful=True, timeout=10)
        assert graceful == {"running_at_request": 1, "finished": 1, "released": 0}
        assert owner.get(quick["task_id"])["status"] == "completed"  # reported before the worker went
        await peer.queue.add_worker(WorkerSpec("again", ("sleep",), 1))
        slow = owner.submit(task_type="sleep", payload={"seconds": 100}, metadata={"placement": "remote"})
        await until(lambda: peer.queue.running_here == 1)
        abrupt = await peer.queue.remove_worker("again", graceful=False, timeout=0)
        assert abrupt["released"] == 1
        view = owner.get(slow["task_id"])
        assert (view["status"], view["attempt"], view["failures"]) == ("queued", 1, 0)

    run(test)


def test_a_claim_asked_again_gets_the_same_leases(tmp_path: Path) -> None:
    """A worker whose claim answer was lost sends the same claim again: the same leases, not new ones."""

    async def test(net: MemoryNetwork, nursery: trio.Nursery) -> None:
        owner = await Node(net, tmp_path, "A", worker_concurrency=0, queue_lease_seconds=600.0).start(nursery)
        rpc = net.join("B")
        first = [owner.submit(task_type="echo", payload=n)["task_id"] for n in range(3)]
        claim = {"worker": "w", "boot": "b1", "types": ["echo"], "max": 2, "claim_id": "c-1"}
        answered = (await rpc.request("A", OP_CLAIM, claim, timeout=1))["tasks"]
        again = (await rpc.request("A", OP_CLAIM, claim, timeout=1))["tasks"]
        assert [lease["task_id"] for lease in again] == [lease["task_id"] for lease in answered] == first[:2]
        assert [lease["attempt"] for lease in again] == [1, 1]
        assert owner.queue.lending is not None and owner.queue.lending.counters["claims_answered_again"] == 1
        fresh = (await rpc.request("A", OP_CLAIM, {**claim, "claim_id": "c-2"}, timeout=1))["tasks"]
        assert [lease["task_id"] for lease in fresh] == first[2:]
        assert owner.get(first[2])["status"] == "running"

    run(test)
