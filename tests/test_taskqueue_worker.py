"""A worker's concurrency, in virtual time, against sources that answer as the test says (no store, no network).

What matters here is ordering: this node's own work never waits on a remote
owner, a claim answered after its slots were taken hands the excess back,
progress and lease answers reach the right attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

from p2p_sidecar.taskqueue.errors import SourceUnavailable
from p2p_sidecar.taskqueue.executors import ExecutorRegistry, TaskContext, run_echo, run_sleep
from p2p_sidecar.taskqueue.model import LeaseAnswer, Verdict
from p2p_sidecar.taskqueue.records import Lease, Progress, Report
from p2p_sidecar.taskqueue.sync import Broadcast
from p2p_sidecar.taskqueue.worker import Source, Worker, WorkerConfig, WorkerSpec


class FakeSource:
    """A queue whose claims hand out what the test put in ``ready``; ``hang`` makes claims never answer."""

    def __init__(self, owner: str | None) -> None:
        self._owner = owner
        self.ready: list[Lease] = []
        self.hang = False
        self.fail = False
        self.answers: dict[str, LeaseAnswer] = {}
        self.claims: list[tuple[Sequence[str], int]] = []
        self.reports: list[Report] = []
        self.released: list[tuple[tuple[str, int], str]] = []
        self.progress_sent: list[list[tuple[str, int, Progress]]] = []
        self.beats: list[list[tuple[str, int]]] = []
        self.released_claim = trio.Event()

    @property
    def owner(self) -> str | None:
        return self._owner

    async def claim(self, worker: str, types: Sequence[str], limit: int) -> list[Lease]:
        self.claims.append((list(types), limit))
        if self.fail:
            raise SourceUnavailable("down")
        while self.hang:
            await self.released_claim.wait()
        taken, self.ready = self.ready[:limit], self.ready[limit:]
        return taken

    async def heartbeat(
        self, worker: str, leases: Sequence[tuple[str, int]], progress: Sequence[tuple[str, int, Progress]]
    ) -> dict[str, LeaseAnswer]:
        self.beats.append(list(leases))
        return {task_id: self.answers.get(task_id, LeaseAnswer.OK) for task_id, _ in leases}

    async def progress(self, worker: str, updates: Sequence[tuple[str, int, Progress]]) -> None:
        self.progress_sent.append(list(updates))

    async def report(self, worker: str, report: Report) -> Verdict:
        self.reports.append(report)
        return Verdict.RECORDED

    async def release(self, worker: str, leases: Sequence[tuple[str, int]], why: str) -> None:
        self.released.extend((key, why) for key in leases)


class FakeFeed:
    def __init__(self, local: FakeSource) -> None:
        self.news = Broadcast()
        self.local: Source = local  # the Feed protocol's attribute (invariant: the protocol's type)
        self.remote: list[tuple[FakeSource, list[str], int]] = []
        self.outcomes: list[tuple[str | None, int, int]] = []
        self.unreachable_owners: list[str | None] = []

    def owners(self, capabilities: Sequence[str]) -> list[tuple[Any, list[str], int]]:
        return list(self.remote)

    def claimed(self, source: Any, *, asked: int, got: int) -> None:
        self.outcomes.append((source.owner, asked, got))

    def unreachable(self, source: Any) -> None:
        self.unreachable_owners.append(source.owner)
        self.remote = [entry for entry in self.remote if entry[0] is not source]


async def run_progress(payload: Any, context: TaskContext) -> Any:
    context.report_progress("starting", done=0, total=2)
    context.report_progress("half way", done=1, total=2)
    await trio.sleep(payload["seconds"])
    return "done"


def lease(task_id: str, task_type: str = "sleep", seconds: float = 1.0, timeout: float = 60.0) -> Lease:
    return Lease(task_id, 1, task_type, {"seconds": seconds}, timeout_s=timeout, priority=1.0)


def make_worker(feed: FakeFeed, slots: int = 2, lease_s: float = 30.0) -> Worker:
    executors = ExecutorRegistry({"sleep": run_sleep, "echo": run_echo, "progress": run_progress})
    config = WorkerConfig(lease_s=lease_s, max_result_bytes=1 << 20)
    worker = Worker(
        WorkerSpec("w", ("sleep", "echo", "progress"), slots), executors=executors, feed=feed, config=config
    )
    feed.news.chain(worker.wake)  # as the pool does
    return worker


def run(test: Any) -> None:
    # virtual time jumps once every task has been blocked for 10 ms of real time; wait_all_tasks_blocked()
    # (no cushion) returns before that, so a test can look at a moment without time passing
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0.01))


def test_local_work_starts_at_once_while_a_remote_owner_never_answers() -> None:
    async def main() -> None:
        local, frozen = FakeSource(None), FakeSource("frozen-owner")
        frozen.hang = True
        frozen.ready = [lease("r1"), lease("r2")]
        feed = FakeFeed(local)
        feed.remote = [(frozen, ["sleep"], 2)]
        worker = make_worker(feed, slots=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.testing.wait_all_tasks_blocked()
            assert frozen.claims == [(["sleep"], 2)] and worker.free_slots == 0  # both slots held for that claim
            local.ready = [lease("l1", seconds=5)]
            started = trio.current_time()
            feed.news.fire()
            await trio.testing.wait_all_tasks_blocked()
            assert [run.lease.task_id for run in worker.running] == ["l1"]  # no time passed: it did not wait
            assert trio.current_time() == started
            # the frozen owner answers at last: one slot is left, so one lease runs and the other goes back
            frozen.hang = False
            frozen.released_claim.set()
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(run.lease.task_id for run in worker.running) == ["l1", "r1"]
            assert frozen.released == [(("r2", 1), "no free slot any more")]
            assert feed.outcomes == [("frozen-owner", 2, 2)]
            nursery.cancel_scope.cancel()

    run(main)


def test_an_unreachable_owner_is_dropped_and_local_work_goes_on() -> None:
    async def main() -> None:
        local, gone = FakeSource(None), FakeSource("gone")
        gone.fail = True
        feed = FakeFeed(local)
        feed.remote = [(gone, ["sleep"], 3)]
        local.ready = [lease("l1", seconds=1)]
        worker = make_worker(feed, slots=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.testing.wait_all_tasks_blocked()
            assert feed.unreachable_owners == ["gone"] and feed.remote == []
            await trio.sleep(1.5)
            assert [report.task_id for report in local.reports] == ["l1"] and local.reports[0].ok
            nursery.cancel_scope.cancel()

    run(main)


def test_progress_reaches_the_owner_soon_and_only_the_latest() -> None:
    async def main() -> None:
        local = FakeSource(None)
        feed = FakeFeed(local)
        local.ready = [lease("p1", task_type="progress", seconds=2)]
        worker = make_worker(feed)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.sleep(0.25)
            [[(task_id, attempt, progress)]] = local.progress_sent
            assert (task_id, attempt, progress.message, progress.done, progress.total) == ("p1", 1, "half way", 1, 2)
            await trio.sleep(2)
            assert local.reports[0].ok and local.reports[0].result == "done"
            assert len(local.progress_sent) == 1  # nothing changed since: nothing more sent
            nursery.cancel_scope.cancel()

    run(main)


def test_a_lease_the_owner_says_is_lost_stops_without_a_report() -> None:
    async def main() -> None:
        local = FakeSource(None)
        feed = FakeFeed(local)
        local.ready = [lease("gone", seconds=100), lease("kept", seconds=100)]
        local.answers["gone"] = LeaseAnswer.LOST
        worker = make_worker(feed, slots=2, lease_s=3.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.sleep(1.1)  # the first heartbeat (every lease / 3)
            assert [run.lease.task_id for run in worker.running] == ["kept"]
            assert local.reports == [] and worker.stats.completed == 0
            nursery.cancel_scope.cancel()

    run(main)


def test_shutdown_hands_running_leases_back() -> None:
    async def main() -> None:
        local, remote = FakeSource(None), FakeSource("owner")
        feed = FakeFeed(local)
        local.ready = [lease("mine", seconds=100)]
        remote.ready = [lease("theirs", seconds=100)]
        feed.remote = [(remote, ["sleep"], 1)]
        worker = make_worker(feed, slots=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.testing.wait_all_tasks_blocked()
            assert len(worker.running) == 2
            nursery.cancel_scope.cancel()
        assert local.released == [(("mine", 1), "sidecar shutting down")]
        assert remote.released == [(("theirs", 1), "sidecar shutting down")]

    run(main)
