"""The owner's timers and notices in virtual time: leases expire, retries come due, waiters wake, all announced.

The owner sleeps while nothing is running or waiting out a backoff; these tests also check that it wakes for
exactly the moments that matter, and announces claimable work on ``work`` when they come.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2p_sidecar.taskqueue.errors import SourceUnavailable, StorageError
from p2p_sidecar.taskqueue.model import RetryPolicy, TaskStatus, Verdict
from p2p_sidecar.taskqueue.owner import LeaseOwner, LocalSource
from p2p_sidecar.taskqueue.records import Lease, NewTask, Placement, Report
from p2p_sidecar.taskqueue.store import TaskStore

BASE = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    with TaskStore.open(tmp_path / "queue.db") as opened:
        yield opened


def new(task_id: str, **fields: Any) -> NewTask:
    values: dict[str, Any] = {
        "task_type": "echo",
        "payload": {},
        "priority": 1.0,
        "timeout_s": 60.0,
        "policy": RetryPolicy(max_attempts=3, backoff_s=5.0),
    }
    values.update(fields)
    return NewTask(task_id=task_id, **values)


def run(test: Any, store: TaskStore) -> None:
    async def main() -> None:
        owner = LeaseOwner(store, lease_s=4.0, boot="boot-1", clock=lambda: BASE + trio.current_time())
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            await test(owner)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))


def test_a_silent_lease_expires_on_time_and_its_task_is_announced_again(store: TaskStore) -> None:
    async def test(owner: LeaseOwner) -> None:
        owner.insert(new("t"))
        [lease] = owner.claim("w", ["echo"], 1, peer="p1", boot="b")
        seen = owner.work.generation
        claimed_at = trio.current_time()
        await owner.work.wait_since(seen)
        waited = trio.current_time() - claimed_at
        assert 4.0 <= waited <= 5.0  # the lease (4 s), checked every quarter lease
        record = store.require("t")
        assert (record.status, record.failures, lease.attempt) == (TaskStatus.QUEUED, 1, 1)
        assert store.claimable() == {("echo", Placement()): 1}

    run(test, store)


def test_a_failed_attempt_is_claimable_again_when_its_backoff_ends(store: TaskStore) -> None:
    async def test(owner: LeaseOwner) -> None:
        owner.insert(new("t"))
        [lease] = owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot)
        owner.finish([Report("t", lease.attempt, ok=False, message="boom")], peer=None)
        assert store.claimable() == {}  # waiting out its 5 s backoff: not offered to anyone yet
        failed_at = trio.current_time()
        seen = owner.work.generation
        await trio.sleep(0.5)
        assert owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot) == []
        while owner.work.generation == seen or not store.claimable():
            seen = owner.work.generation
            await owner.work.wait_since(seen)
        assert trio.current_time() - failed_at == pytest.approx(5.0, abs=0.01)  # woken at its time, not polled
        [again] = owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot)
        assert again.attempt == 2

    run(test, store)


def test_waiters_wake_when_the_task_ends_and_nothing_runs_in_between(store: TaskStore) -> None:
    async def test(owner: LeaseOwner) -> None:
        owner.insert(new("t"))
        [lease] = owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot)
        ended: list[str] = []
        owner.on_task_end(lambda items: ended.extend(item.task_id for item in items))

        async def finish_later() -> None:
            await trio.sleep(2.0)
            owner.finish([Report("t", lease.attempt, ok=True, result=42)], peer=None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(finish_later)
            started = trio.current_time()
            record = await owner.wait("t", 30.0)
        assert record.status is TaskStatus.COMPLETED and record.result() == 42
        assert trio.current_time() - started == pytest.approx(2.0, abs=0.01) and ended == ["t"]
        assert owner.completions.per_second(60) == pytest.approx(1 / 60, abs=1e-3)

    run(test, store)


def test_a_restarted_owner_takes_back_what_its_own_workers_held(store: TaskStore) -> None:
    store.insert(new("mine"), BASE)
    store.insert(new("theirs"), BASE)
    store.claim(types=["echo"], limit=1, worker="w", peer=None, boot="old-boot", lease_s=600, now=BASE)
    store.claim(types=["echo"], limit=1, worker="w", peer="p1", boot="p1-boot", lease_s=600, now=BASE)

    async def test(owner: LeaseOwner) -> None:
        assert store.require("mine").status is TaskStatus.QUEUED  # taken back at start, one failure counted
        assert store.require("mine").failures == 1
        assert store.require("theirs").status is TaskStatus.RUNNING  # a peer's: its lease decides

    run(test, store)


def test_a_paused_owner_hands_out_nothing_and_says_so_when_resumed(store: TaskStore) -> None:
    async def test(owner: LeaseOwner) -> None:
        owner.pause("maintenance")
        owner.insert(new("t"))
        assert owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot) == []
        seen = owner.work.generation
        assert owner.resume() is True
        assert owner.work.generation != seen
        assert len(owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot)) == 1
        assert store.get_meta("paused") is None

    run(test, store)


def _local_reports(
    owner: LeaseOwner, count: int, finish: Any = None
) -> tuple[LocalSource, list[Lease], list[list[Report]]]:
    """``count`` claimed tasks, and a LocalSource whose owner's finish calls are recorded (or replaced)."""
    for index in range(count):
        owner.insert(new(f"t{index}"))
    leases = owner.claim("w", ["echo"], count, peer=None, boot=owner.boot)
    calls: list[list[Report]] = []
    real = owner.finish

    def recording(reports: Any, *, peer: str | None) -> list[Verdict]:
        calls.append(list(reports))
        return (finish or real)(reports, peer=peer)

    owner.finish = recording  # type: ignore[method-assign]  # counting the transactions the source asks for
    return LocalSource(owner), leases, calls


def test_local_reports_of_one_scheduler_pass_share_one_commit_and_each_gets_its_verdict(store: TaskStore) -> None:
    async def test(owner: LeaseOwner) -> None:
        source, leases, calls = _local_reports(owner, 8)
        verdicts: dict[str, Verdict] = {}

        async def report(lease: Lease) -> None:
            verdicts[lease.task_id] = await source.report("w", Report(lease.task_id, lease.attempt, ok=True, result=1))

        async with trio.open_nursery() as nursery:
            for lease in leases:
                nursery.start_soon(report, lease)
        assert [len(call) for call in calls] == [8]  # one transaction for the burst, not eight
        assert set(verdicts.values()) == {Verdict.RECORDED} and len(verdicts) == 8
        assert all(store.require(f"t{index}").status is TaskStatus.COMPLETED for index in range(8))
        # a report on its own is committed on its own, at once
        owner.insert(new("alone"))
        [lease] = owner.claim("w", ["echo"], 1, peer=None, boot=owner.boot)
        assert await source.report("w", Report("alone", lease.attempt, ok=True, result=2)) is Verdict.RECORDED
        assert [len(call) for call in calls] == [8, 1]

    run(test, store)


def test_a_failed_group_commit_fails_every_report_in_it_and_the_next_one_is_fresh(store: TaskStore) -> None:
    def full_disk(reports: Any, *, peer: str | None) -> list[Verdict]:
        raise StorageError("database or disk is full")

    async def test(owner: LeaseOwner) -> None:
        source, leases, calls = _local_reports(owner, 3, finish=full_disk)
        errors: list[str] = []

        async def report(lease: Lease) -> None:
            with pytest.raises(SourceUnavailable) as caught:
                await source.report("w", Report(lease.task_id, lease.attempt, ok=True, result=1))
            errors.append(str(caught.value))

        async with trio.open_nursery() as nursery:
            for lease in leases:
                nursery.start_soon(report, lease)
        assert len(errors) == 3 and all("disk is full" in error for error in errors) and len(calls) == 1
        assert all(store.require(lease.task_id).status is TaskStatus.RUNNING for lease in leases)  # nothing recorded

    run(test, store)


def test_a_reporter_cancelled_while_its_group_gathers_still_commits_the_group(store: TaskStore) -> None:
    async def test(owner: LeaseOwner) -> None:
        source, leases, calls = _local_reports(owner, 2)
        first, second = leases
        got: list[Verdict] = []

        async def cancelled_reporter() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()  # cancelled at its first checkpoint: the one where the group gathers
                await source.report("w", Report(first.task_id, first.attempt, ok=True, result=1))

        async def waiting_reporter() -> None:
            got.append(await source.report("w", Report(second.task_id, second.attempt, ok=True, result=2)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_reporter)
            nursery.start_soon(waiting_reporter)
        assert got == [Verdict.RECORDED] and [len(call) for call in calls] == [2]
        assert store.require(first.task_id).status is TaskStatus.COMPLETED  # committed, though its caller left

    run(test, store)
