"""How a stored task reads in tool results: one shape for task_submit, task_status, task_list...

Kept apart from the store so the SQL stays about persistence and the JSON a
model reads stays in one place.  ``executed_by`` is always a peer id (this
node's own when its workers ran the task), so it means the same wherever it
is read.
"""

from __future__ import annotations

from typing import Any

from p2p_sidecar.taskqueue.model import TaskStatus
from p2p_sidecar.taskqueue.records import PlacementKind, TaskRecord

LOCAL_NAME = "local"
"""``executed_by`` of this node's own workers on a sidecar without a P2P network (only in unit tests)."""


def executed_by(record: TaskRecord, local_peer: str | None) -> str | None:
    """The peer id of the node whose worker holds (or held) the task's lease; None before any claim."""
    if record.worker is None:
        return None
    return record.worker_peer or local_peer or LOCAL_NAME


def describe_task(
    record: TaskRecord,
    *,
    now: float,
    local_peer: str | None,
    include_payload: bool = False,
    include_result: bool = False,
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "task_id": record.task_id,
        "task_type": record.task_type,
        "status": record.status.value,
        "priority": record.priority,
        "tags": list(record.tags),
        "attempt": record.attempt,
        "failures": record.failures,
        "max_attempts": record.policy.max_attempts,
        "retry_policy": record.policy.to_dict(),
        "timeout_s": record.timeout_s,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }
    runner = executed_by(record, local_peer)
    if runner is not None:
        view["worker"] = record.worker
        view["executed_by"] = runner
    if record.placement.kind is not PlacementKind.ANY:
        view["placement"] = (
            record.placement.peer if record.placement.kind is PlacementKind.PEER else record.placement.kind.value
        )
    if record.status is TaskStatus.QUEUED and record.not_before > now:
        view["next_attempt_at"] = record.not_before
        view["next_attempt_in_s"] = round(record.not_before - now, 3)
    if record.status is TaskStatus.RUNNING and record.lease_expires is not None:
        view["lease_expires_in_s"] = round(record.lease_expires - now, 3)
    if record.progress is not None:
        view["progress"] = record.progress.to_dict()
    if record.error is not None:
        key = "error" if record.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else "last_error"
        view[key] = record.error
    if record.workflow_id is not None:
        view["workflow_id"] = record.workflow_id
        view["step_id"] = record.step_id
    if record.metadata:
        view["metadata"] = record.metadata
    if include_payload:
        view["payload"] = record.payload()
    if include_result and record.result_json is not None:
        view["result"] = record.result()
    return view


def task_metrics(record: TaskRecord, *, now: float) -> dict[str, Any]:
    created, started, finished = record.created_at, record.started_at, record.finished_at
    metrics: dict[str, Any] = {"attempts": record.attempt, "failures": record.failures}
    if started is not None:
        metrics["queued_s"] = round(started - created, 6)
        metrics["run_s"] = round((finished if finished is not None else now) - started, 6)
    if finished is not None:
        metrics["total_s"] = round(finished - created, 6)
    if record.result_json is not None:
        metrics["result_bytes"] = len(record.result_json.encode())
    metrics["payload_bytes"] = len(record.payload_json.encode())
    return metrics


def task_logs(record: TaskRecord, lines: list[tuple[float, str]], *, local_peer: str | None) -> list[dict[str, Any]]:
    """The task's history: the hot-path moments (from its timestamps) merged with logged events."""
    events = [(record.created_at, f"submitted ({record.task_type}, priority {record.priority:g})")]
    events.extend(lines)
    runner = executed_by(record, local_peer)
    if record.started_at is not None and runner is not None:  # the attempt that holds (or held) the lease
        events.append((record.started_at, f"attempt {record.attempt} started by worker {record.worker} on {runner}"))
    if record.finished_at is not None and record.status is TaskStatus.COMPLETED:
        events.append((record.finished_at, "completed"))
    events.sort(key=lambda item: item[0])
    return [{"at": at, "event": text} for at, text in events]
