"""Priorities, pause/resume, cancelling queued work, the queue bound and queue_clear (one worker slot)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procs import gateway_proc, running, sidecar_proc
from tests.queue_client import call, refused, wait_done

pytestmark = pytest.mark.e2e
MAX_QUEUED = 20


@pytest.fixture(scope="module")
def serial_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serial")
    sidecar = sidecar_proc(tmp, SIDECAR_WORKER_CONCURRENCY="1", SIDECAR_QUEUE_MAX_QUEUED=str(MAX_QUEUED))
    gateway = gateway_proc(tmp, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield gateway.extra["url"]


@pytest.fixture
def paused(serial_stack: str) -> Iterator[str]:
    url = serial_stack
    paused = call(url, "queue_pause", reason="test")
    assert paused["paused"] and paused["reason"] == "test"
    try:
        yield url
    finally:
        call(url, "queue_resume")


def test_priorities_order_execution_on_a_paused_then_resumed_queue(paused: str) -> None:
    url = paused
    priorities = [1, 5, 3, 10, -1, 5, 7, 2.5]
    ids = [
        call(url, "task_submit", task_type="sleep", payload={"seconds": 0.02}, priority=priority)["task_id"]
        for priority in priorities
    ]
    assert call(url, "queue_stats")["paused"] is True
    assert all(call(url, "task_status", task_id=task_id)["status"] == "queued" for task_id in ids)
    resumed = call(url, "queue_resume", reorder_by_priority=True)
    assert resumed["was_paused"] and resumed["queued"] == len(ids)
    done = [wait_done(url, task_id) for task_id in ids]
    by_start = sorted(done, key=lambda view: view["started_at"])
    # higher number first; equal priorities in submission order
    assert [view["priority"] for view in by_start] == [10, 7, 5, 5, 3, 2.5, 1, -1]
    fives = [view["task_id"] for view in by_start if view["priority"] == 5]
    assert fives == [ids[1], ids[5]]


def test_task_priority_moves_a_queued_task_ahead(paused: str) -> None:
    url = paused
    first = call(url, "task_submit", task_type="echo", payload="first", priority=5)["task_id"]
    late = call(url, "task_submit", task_type="echo", payload="late", priority=1)["task_id"]
    assert call(url, "task_priority", task_id=late, new_priority=9)["priority"] == 9
    call(url, "queue_resume")
    started = {task_id: wait_done(url, task_id)["started_at"] for task_id in (first, late)}
    assert started[late] < started[first]


def test_pause_lets_running_tasks_finish_and_holds_queued_ones(serial_stack: str) -> None:
    url = serial_stack
    running_task = call(url, "task_submit", task_type="sleep", payload={"seconds": 0.5})["task_id"]
    deadline_view = call(url, "task_wait", task_id=running_task, timeout_s=0.1)
    assert not deadline_view["done"]
    call(url, "queue_pause")
    try:
        held = call(url, "task_submit", task_type="echo", payload="held")["task_id"]
        assert wait_done(url, running_task)["status"] == "completed"  # the running one finished while paused
        assert call(url, "task_wait", task_id=held, timeout_s=0.5)["status"] == "queued"
    finally:
        call(url, "queue_resume")
    assert wait_done(url, held)["status"] == "completed"


def test_a_cancelled_queued_task_never_runs(paused: str) -> None:
    url = paused
    task_id = call(url, "task_submit", task_type="echo", payload="never")["task_id"]
    cancelled = call(url, "task_cancel", task_id=task_id, reason="not needed")
    assert cancelled["cancelled"] and cancelled["previous_status"] == "queued"
    call(url, "queue_resume")
    after = call(url, "task_wait", task_id=task_id, timeout_s=1)
    assert after["status"] == "cancelled" and after["attempt"] == 0 and "result" not in after
    requeued = call(url, "task_priority", task_id=task_id, new_priority=4, requeue=True)
    assert requeued["status"] == "queued" and requeued["priority"] == 4
    assert wait_done(url, task_id)["result"] == "never"


def test_the_queue_bound_answers_busy_and_clear_empties_it(paused: str) -> None:
    url = paused
    queued = call(url, "queue_stats")["counts"]["queued"]
    ids = [
        call(url, "task_submit", task_type="echo", payload=i, metadata={"idempotency_key": f"fill-{i}"})["task_id"]
        for i in range(MAX_QUEUED - queued)
    ]
    status, error = refused(url, "task_submit", task_type="echo", payload="one too many")
    assert status == 503 and error["code"] == "busy" and "queue full" in error["message"]
    again = call(url, "task_submit", task_type="echo", payload=0, metadata={"idempotency_key": "fill-0"})
    assert not again["created"] and again["task_id"] == ids[0]  # a retried submit still gets its answer
    preview = call(url, "queue_clear")
    assert preview["dry_run"] and preview["would_clear"] == {"queued": MAX_QUEUED}
    assert call(url, "queue_stats")["counts"]["queued"] == MAX_QUEUED
    cleared = call(url, "queue_clear", status_filter="queued", confirm=True)
    assert cleared["cleared"] == {"queued": MAX_QUEUED} and cleared["counts"]["queued"] == 0
    assert call(url, "task_status", task_id=ids[0])["status"] == "cancelled"
    deleted = call(url, "queue_clear", status_filter=["cancelled"], confirm=True)
    assert deleted["cleared"]["deleted"] >= MAX_QUEUED
    assert refused(url, "task_status", task_id=ids[0])[0] == 404
