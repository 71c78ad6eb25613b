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

from p2p_sidecar.taskqueue.model import RetryPolicy, TaskStatus
from p2p_sidecar.taskqueue.owner import LeaseOwner
from p2p_sidecar.taskqueue.records import NewTask, Placement, Report
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
