"""The SQLite store: claims, guarded completion (late and duplicate reports refused), recovery, counts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p_sidecar.errors import StartupError
from p2p_sidecar.taskqueue.errors import Conflict, NotFound
from p2p_sidecar.taskqueue.model import IllegalTransition, RetryPolicy, TaskStatus
from p2p_sidecar.taskqueue.records import Ended, Lease, NewTask, Placement, PlacementKind, Progress, Report
from p2p_sidecar.taskqueue.store import TaskStore

NOW = 1_000_000.0


def new(task_id: str, priority: float = 1.0, **kwargs: Any) -> NewTask:
    fields: dict[str, Any] = {
        "task_type": "echo",
        "payload": {"n": task_id},
        "priority": priority,
        "timeout_s": 60.0,
        "policy": RetryPolicy(max_attempts=2, backoff_s=5.0),
    }
    fields.update(kwargs)
    return NewTask(task_id=task_id, **fields)


@pytest.fixture
def ended() -> list[Ended]:
    return []


@pytest.fixture
def store(tmp_path: Path, ended: list[Ended]) -> Iterator[TaskStore]:
    opened = TaskStore.open(tmp_path / "queue.db", max_result_bytes=200)
    opened.on_ended = ended.extend
    yield opened
    opened.close()


def claim(store: TaskStore, n: int = 10, *, peer: str | None = None, boot: str = "b1", now: float = NOW) -> list[Lease]:
    return store.claim(types=["echo"], limit=n, worker="w", peer=peer, boot=boot, lease_s=10.0, now=now)


def counts_match_the_table(store: TaskStore, now: float = NOW) -> None:
    """The in-memory counts (per status, claimable per type and placement, leases per peer) match the table."""
    actual = {status.value: 0 for status in TaskStatus}
    for status, count in store.db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status"):
        actual[status] = count
    assert store.counts() == actual
    store.advance_backoffs(now)
    claimable = {}
    sql = "SELECT task_type, placement, COUNT(*) FROM tasks WHERE status = 'queued' AND not_before <= ? GROUP BY 1, 2"
    for task_type, placement, count in store.db.execute(sql, (now,)):
        claimable[(task_type, Placement.from_column(placement))] = count
    assert store.claimable() == claimable
    for peer, count in store.db.execute("SELECT worker_peer, COUNT(*) FROM tasks WHERE status = 'running' GROUP BY 1"):
        assert store.leases_held_by(peer) == count


def test_claims_highest_priority_first_then_oldest(store: TaskStore) -> None:
    for task_id, priority in [("a", 1), ("b", 5), ("c", 5), ("d", -2), ("e", 3)]:
        store.insert(new(task_id, priority), NOW)
    first = claim(store, 2)
    assert [lease.task_id for lease in first] == ["b", "c"]
    assert all(lease.attempt == 1 for lease in first)
    assert [lease.task_id for lease in claim(store, 10)] == ["e", "a", "d"]
    assert claim(store) == []
    counts_match_the_table(store)


def test_claim_respects_types_placement_and_backoff(store: TaskStore) -> None:
    store.insert(new("other", task_type="hash"), NOW)
    store.insert(new("remote-only", placement=Placement(PlacementKind.REMOTE)), NOW)
    store.insert(new("for-p2", placement=Placement(PlacementKind.PEER, "p2")), NOW)
    store.insert(new("local-only", placement=Placement(PlacementKind.LOCAL)), NOW)
    assert store.claimable() == {
        ("hash", Placement()): 1,
        ("echo", Placement(PlacementKind.REMOTE)): 1,
        ("echo", Placement(PlacementKind.PEER, "p2")): 1,
        ("echo", Placement(PlacementKind.LOCAL)): 1,
    }
    assert [lease.task_id for lease in claim(store)] == ["local-only"]
    assert [lease.task_id for lease in claim(store, peer="p1")] == ["remote-only"]
    assert [lease.task_id for lease in claim(store, peer="p2")] == ["for-p2"]
    store.db.execute("UPDATE tasks SET not_before = ? WHERE task_id = 'other'", (NOW + 5,))
    assert store.claim(types=["hash"], limit=5, worker="w", peer=None, boot="b", lease_s=1, now=NOW) == []
    later = store.claim(types=["hash"], limit=5, worker="w", peer=None, boot="b", lease_s=1, now=NOW + 6)
    assert [lease.task_id for lease in later] == ["other"]
    counts_match_the_table(store, NOW + 6)


def test_a_claim_that_travels_is_bounded_in_bytes(store: TaskStore) -> None:
    for index, size in enumerate([300, 300, 300, 50]):
        store.insert(new(f"t{index}", priority=10 - index, payload="x" * size), NOW)
    bounded = store.claim(types=["echo"], limit=10, worker="w", peer="p", boot="b", lease_s=1, now=NOW, max_bytes=700)
    assert [lease.task_id for lease in bounded] == ["t0", "t1"]  # in priority order, stopping at the budget
    alone = store.claim(types=["echo"], limit=10, worker="w", peer="p", boot="b", lease_s=1, now=NOW, max_bytes=10)
    assert [lease.task_id for lease in alone] == ["t2"]  # one task always goes, even over the budget
    counts_match_the_table(store)


def test_the_claim_budget_counts_bytes_not_characters(store: TaskStore) -> None:
    for index in range(3):
        store.insert(new(f"t{index}", priority=10 - index, payload="\u00e9" * 300), NOW)  # 600 bytes, 300 chars
    bounded = store.claim(types=["echo"], limit=10, worker="w", peer="p", boot="b", lease_s=1, now=NOW, max_bytes=1300)
    assert [lease.task_id for lease in bounded] == ["t0", "t1"]


def test_exactly_one_recorded_result(store: TaskStore, ended: list[Ended]) -> None:
    store.insert(new("t"), NOW)
    [lease] = claim(store)
    ok = Report("t", lease.attempt, ok=True, result={"v": 1})
    assert store.finish([ok], peer=None, now=NOW + 1) == ["recorded"]
    assert store.finish([ok], peer=None, now=NOW + 2) == ["duplicate"]  # a retried report changes nothing
    other = Report("t", lease.attempt, ok=True, result={"v": 2})
    assert store.finish([other], peer=None, now=NOW + 3) == ["duplicate"]
    failure = Report("t", lease.attempt, ok=False, message="late failure")
    assert store.finish([failure], peer=None, now=NOW + 4) == ["duplicate"]
    record = store.get("t")
    assert record is not None and record.status is TaskStatus.COMPLETED and record.result() == {"v": 1}
    assert record.finished_at == NOW + 1
    assert ended == [Ended("t", TaskStatus.COMPLETED, None)]
    counts_match_the_table(store)


def test_late_report_of_an_expired_lease_is_rejected(store: TaskStore) -> None:
    store.insert(new("t"), NOW)
    [first] = claim(store, now=NOW)
    assert store.expire_leases(NOW + 11) == 1  # the worker went silent
    record = store.require("t")
    assert record.status is TaskStatus.QUEUED and record.failures == 1 and record.not_before == NOW + 11
    [second] = claim(store, now=NOW + 12)
    assert second.attempt == first.attempt + 1
    late = Report("t", first.attempt, ok=True, result="from the presumed-dead worker")
    assert store.finish([late], peer=None, now=NOW + 13) == ["rejected"]
    assert store.finish([Report("t", second.attempt, ok=True, result="ok")], peer=None, now=NOW + 14) == ["recorded"]
    assert store.require("t").result() == "ok"


def test_reports_from_someone_elses_lease_are_rejected(store: TaskStore) -> None:
    store.insert(new("t"), NOW)
    [lease] = claim(store, peer="p1")
    assert store.finish([Report("t", lease.attempt, ok=True, result=1)], peer="p2", now=NOW) == ["rejected"]
    assert store.finish([Report("t", lease.attempt, ok=True, result=1)], peer=None, now=NOW) == ["rejected"]
    assert store.heartbeat([("t", lease.attempt)], peer="p2", lease_s=10, now=NOW) == {"t": "lost"}
    assert store.finish([Report("t", lease.attempt, ok=True, result=1)], peer="p1", now=NOW) == ["recorded"]


def test_failures_retry_with_backoff_then_fail(store: TaskStore, ended: list[Ended]) -> None:
    store.insert(new("t"), NOW)
    [lease] = claim(store)
    assert store.finish([Report("t", lease.attempt, ok=False, message="e1")], peer=None, now=NOW) == ["recorded"]
    record = store.require("t")
    assert (record.status, record.failures, record.not_before) == ("queued", 1, NOW + 5.0)
    counts_match_the_table(store, NOW + 1)  # waiting out its backoff: not claimable yet
    assert store.claimable() == {}
    assert claim(store, now=NOW + 4.9) == []
    [lease] = claim(store, now=NOW + 5.0)
    store.finish([Report("t", lease.attempt, ok=False, message="e2", code="boom")], peer=None, now=NOW + 6)
    record = store.require("t")
    assert record.status is TaskStatus.FAILED and record.error is not None and record.error["code"] == "boom"
    assert ended == [Ended("t", TaskStatus.FAILED, None)]
    lines = [line for _, line in store.log_lines(record.seq)]
    assert "retry 1 of 1" in lines[0] and "2 of 2 attempts failed" in lines[1]
    counts_match_the_table(store)


def test_result_over_the_limit_fails_the_task_without_retry(store: TaskStore) -> None:
    store.insert(new("t"), NOW)
    [lease] = claim(store)
    store.finish([Report("t", lease.attempt, ok=True, result="x" * 500)], peer=None, now=NOW)
    record = store.require("t")
    error = record.error or {}
    assert record.status is TaskStatus.FAILED and record.result_json is None
    assert error["code"] == "too_large" and "SIDECAR_TASK_MAX_RESULT_BYTES" in error["message"]


def test_heartbeats_extend_leases_and_report_cancellation(store: TaskStore) -> None:
    store.insert(new("a"), NOW)
    store.insert(new("b"), NOW)
    leases = claim(store, now=NOW)
    held = [(lease.task_id, lease.attempt) for lease in leases]
    assert store.heartbeat(held, peer=None, lease_s=10, now=NOW + 8) == {"a": "ok", "b": "ok"}
    assert store.expire_leases(NOW + 12) == 0  # renewed until NOW + 18
    store.cancel("b", "changed my mind", NOW + 13)
    assert store.heartbeat(held, peer=None, lease_s=10, now=NOW + 14) == {"a": "ok", "b": "cancelled"}
    assert store.heartbeat([("a", 99)], peer=None, lease_s=10, now=NOW) == {"a": "lost"}


def test_cancel_retry_and_priority_follow_the_model(store: TaskStore) -> None:
    store.insert(new("t"), NOW)
    before = store.cancel("t", "no", NOW)
    assert before.status is TaskStatus.QUEUED and store.require("t").status is TaskStatus.CANCELLED
    with pytest.raises(IllegalTransition):
        store.cancel("t", "again", NOW)
    with pytest.raises(IllegalTransition):
        store.set_priority("t", 9, NOW)
    store.retry("t", RetryPolicy(max_attempts=9), NOW)
    record = store.require("t")
    assert record.status is TaskStatus.QUEUED and record.policy.max_attempts == 9
    assert store.set_priority("t", 7.5, NOW).priority == 7.5
    with pytest.raises(IllegalTransition):
        store.retry("t", None, NOW)
    with pytest.raises(NotFound):
        store.cancel("missing", "x", NOW)
    counts_match_the_table(store)


def test_idempotency_key_returns_the_existing_task(store: TaskStore) -> None:
    _, created = store.insert(new("t1", idem_key="k"), NOW)
    again, created_again = store.insert(new("t2", idem_key="k"), NOW)
    assert created and not created_again and again.task_id == "t1"
    with pytest.raises(Conflict):
        store.insert(new("t1", idem_key="other"), NOW)
    assert store.counts()["queued"] == 1


def test_release_requeues_without_counting_a_failure(store: TaskStore) -> None:
    store.insert(new("t"), NOW)
    [lease] = claim(store)
    assert store.release([("t", lease.attempt)], peer=None, now=NOW, why="shutting down") == 1
    record = store.require("t")
    assert (record.status, record.failures, record.attempt) == ("queued", 0, 1)
    assert store.release([("t", lease.attempt)], peer=None, now=NOW, why="again") == 0
    [again] = claim(store)
    assert again.attempt == 2


def test_restart_recovery_takes_back_only_older_boots(store: TaskStore) -> None:
    for task_id in "abc":
        store.insert(new(task_id), NOW)
    claim(store, 1, boot="old")
    claim(store, 1, boot="new")
    claim(store, 1, peer="p1", boot="p1-old")
    assert store.lose_leases_of(None, boot_not="new", now=NOW, why="restarted") == 1
    assert store.require("a").status is TaskStatus.QUEUED and store.require("a").not_before == NOW  # no backoff
    assert store.require("b").status is TaskStatus.RUNNING
    assert store.lose_leases_of("p1", boot_not="p1-old", now=NOW, why="x") == 0
    assert store.lose_leases_of("p1", boot_not="p1-new", now=NOW, why="x") == 1
    counts_match_the_table(store)


def test_clear_cancels_queued_and_deletes_finished(store: TaskStore, ended: list[Ended]) -> None:
    for task_id in "abcd":
        store.insert(new(task_id), NOW)
    [lease] = claim(store, 1)
    store.finish([Report(lease.task_id, lease.attempt, ok=True, result=1)], peer=None, now=NOW)
    assert store.cancel_queued("cleared", NOW) == 3
    assert {item.status for item in ended} == {TaskStatus.COMPLETED, TaskStatus.CANCELLED}
    assert store.delete_finished([TaskStatus.COMPLETED]) == 1
    assert store.counts() == {"queued": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 3}
    counts_match_the_table(store)


def test_survives_reopen_and_rolls_back_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    first = TaskStore.open(path)
    first.insert(new("t"), NOW)
    with pytest.raises(RuntimeError), first.transaction():
        first.insert(new("u"), NOW)
        raise RuntimeError("abort")
    assert first.counts()["queued"] == 1
    first.close()
    second = TaskStore.open(path)
    assert second.counts()["queued"] == 1 and second.get("u") is None
    assert second.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second.close()


def test_one_process_per_database(store: TaskStore, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="another sidecar"):
        TaskStore.open(tmp_path / "queue.db")


def test_refuses_a_database_of_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    TaskStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StartupError, match="schema version 99"):
        TaskStore.open(path)


def test_a_version_1_database_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    """A database written before executors could report progress opens, gains the column, keeps every task."""
    path = tmp_path / "queue.db"
    TaskStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE tasks DROP COLUMN progress")
    db.execute("ALTER TABLE tasks DROP COLUMN trace")
    db.execute("DROP TABLE workflow_steps")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.execute(
        "INSERT INTO tasks (task_id, task_type, payload, priority, status, retry_policy, timeout_s, created_at) "
        "VALUES ('old', 'echo', '{}', 1, 'queued', ?, 60, ?)",
        (json.dumps(RetryPolicy().to_dict()), NOW),
    )
    db.commit()
    db.close()
    store = TaskStore.open(path)
    assert store.get_meta("schema_version") == "2"
    assert store.counts()["queued"] == 1 and store.claimable() == {("echo", Placement()): 1}
    [lease] = claim(store)
    assert store.record_progress([("old", lease.attempt, Progress("half", 1, 2, NOW))], peer=None) == 1
    assert store.require("old").progress == Progress("half", 1.0, 2.0, NOW)
    assert store.query("SELECT COUNT(*) FROM workflow_steps")[0][0] == 0
    store.close()


def test_progress_is_stored_only_for_the_lease_holder(store: TaskStore) -> None:
    store.insert(new("t"), NOW)
    [lease] = claim(store, peer="p1")
    half = Progress("resizing", 5, 10, NOW)
    assert store.record_progress([("t", lease.attempt, half)], peer="p2") == 0
    assert store.record_progress([("t", lease.attempt + 1, half)], peer="p1") == 0
    assert store.record_progress([("t", lease.attempt, half)], peer="p1") == 1
    assert store.require("t").progress == half
    store.expire_leases(NOW + 11)
    [again] = claim(store, now=NOW + 12)
    assert store.require("t").progress is None  # a new attempt starts without the old one's progress
    assert again.attempt == 2


def test_a_claim_with_nothing_claimable_for_it_opens_no_transaction(store: TaskStore) -> None:
    store.insert(new("remote-only", placement=Placement(PlacementKind.REMOTE)), NOW)
    store.insert(new("hashing", task_type="hash"), NOW)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    assert claim(store) == []  # this node's own worker may not take a remote-only task; no echo task otherwise
    assert store.claim(types=["other"], limit=5, worker="w", peer="p1", boot="b", lease_s=1, now=NOW) == []
    assert statements == []  # answered from the counts
    assert [lease.task_id for lease in claim(store, peer="p1")] == ["remote-only"]
    assert any(statement.startswith("UPDATE tasks") for statement in statements)
    with store.transaction():  # a caller's own transaction: its inserts are not counted yet, so the table decides
        store.insert(new("fresh"), NOW)
        assert [lease.task_id for lease in claim(store)] == ["fresh"]
    counts_match_the_table(store)
