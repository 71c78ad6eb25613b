"""How a stored task reads in tool results: one shape for task_submit, task_status, task_list...

Kept apart from the store so the SQL stays about persistence and the
JSON a model reads stays in one place.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from p2p_sidecar.taskqueue.model import TaskStatus


def describe_task(
    row: sqlite3.Row,
    *,
    now: float,
    include_payload: bool = False,
    include_result: bool = False,
) -> dict[str, Any]:
    status = TaskStatus(row["status"])
    policy = json.loads(row["retry_policy"])
    view: dict[str, Any] = {
        "task_id": row["task_id"],
        "task_type": row["task_type"],
        "status": status.value,
        "priority": float(row["priority"]),
        "tags": json.loads(row["tags"]),
        "attempt": row["attempt"],
        "failures": row["failures"],
        "max_attempts": policy["max_attempts"],
        "retry_policy": policy,
        "timeout_s": float(row["timeout_s"]),
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }
    if row["worker"] is not None:
        view["worker"] = row["worker"]
        view["executed_by"] = row["worker_peer"] or "local"
    if status is TaskStatus.QUEUED and row["not_before"] > now:
        view["next_attempt_at"] = row["not_before"]
        view["next_attempt_in_s"] = round(row["not_before"] - now, 3)
    if status is TaskStatus.RUNNING and row["lease_expires"] is not None:
        view["lease_expires_in_s"] = round(row["lease_expires"] - now, 3)
    if row["error"] is not None:
        key = "error" if status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else "last_error"
        view[key] = json.loads(row["error"])
    if row["workflow_id"] is not None:
        view["workflow_id"] = row["workflow_id"]
        view["step_id"] = row["step_id"]
    metadata = json.loads(row["metadata"])
    if metadata:
        view["metadata"] = metadata
    if include_payload:
        view["payload"] = json.loads(row["payload"])
    if include_result and row["result"] is not None:
        view["result"] = json.loads(row["result"])
    return view


def task_metrics(row: sqlite3.Row, *, now: float) -> dict[str, Any]:
    created, started, finished = row["created_at"], row["started_at"], row["finished_at"]
    metrics: dict[str, Any] = {"attempts": row["attempt"], "failures": row["failures"]}
    if started is not None:
        metrics["queued_s"] = round(started - created, 6)
        metrics["run_s"] = round((finished if finished is not None else now) - started, 6)
    if finished is not None:
        metrics["total_s"] = round(finished - created, 6)
    if row["result"] is not None:
        metrics["result_bytes"] = len(row["result"].encode())
    metrics["payload_bytes"] = len(row["payload"].encode())
    return metrics


def task_logs(row: sqlite3.Row, lines: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """The task's history: the hot-path moments (from its timestamps) merged with logged events."""
    events = [(row["created_at"], f"submitted ({row['task_type']}, priority {row['priority']:g})")]
    events.extend(lines)
    if row["started_at"] is not None and row["worker"] is not None:  # the attempt that holds (or held) the lease
        who = row["worker_peer"] or "local"
        events.append((row["started_at"], f"attempt {row['attempt']} started by worker {row['worker']} on {who}"))
    status = row["status"]
    if row["finished_at"] is not None and status == TaskStatus.COMPLETED:
        events.append((row["finished_at"], "completed"))
    events.sort(key=lambda item: item[0])
    return [{"at": at, "event": text} for at, text in events]


def history(db: sqlite3.Connection) -> dict[str, Any]:
    """queue_stats(include_historical): aggregates over finished tasks (a full scan, so only on request)."""
    sql = (
        "SELECT status, COUNT(*), AVG(finished_at - created_at), AVG(finished_at - started_at), "
        "SUM(attempt), MIN(created_at), MAX(finished_at) FROM tasks "
        "WHERE status IN ('completed', 'failed', 'cancelled') GROUP BY status"
    )
    out: dict[str, Any] = {}
    for row in db.execute(sql):
        out[row[0]] = {
            "count": row[1],
            "avg_total_s": None if row[2] is None else round(row[2], 6),
            "avg_run_s": None if row[3] is None else round(row[3], 6),
            "attempts": row[4],
            "first_submitted_at": row[5],
            "last_finished_at": row[6],
        }
    return out
