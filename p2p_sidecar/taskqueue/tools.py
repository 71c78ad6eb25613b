"""The 15 task-queue tools, with the names and arguments agents already use (see the README).

Each is a thin function over ``QueueService``; this module is the one
boundary where a ``QueueError`` becomes a ``BridgeError`` the gateway maps to
an HTTP status or a JSON-RPC answer.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio

from p2p_sidecar.taskqueue.errors import Conflict, InvalidRequest, NotFound, QueueError
from p2p_sidecar.taskqueue.model import TERMINAL, TaskStatus
from p2p_sidecar.taskqueue.service import QueueService
from p2p_sidecar.taskqueue.store import storage_error
from p2p_sidecar.taskqueue.views import task_logs, task_metrics
from p2p_sidecar.taskqueue.worker import WorkerSpec
from p2p_sidecar.tools.catalog import ToolCatalog

P = ParamSpec("P")
R = TypeVar("R")

READ_ONLY = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
WAIT_MARGIN_S = 0.5


def translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let a tool raise ``QueueError``; the caller sees the matching ``BridgeError``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except QueueError as exc:
            raise exc.to_bridge() from None
        except sqlite3.Error as exc:  # a read outside a transaction (writes become StorageError in the store)
            raise storage_error(None, exc).to_bridge() from None

    return wrapper


def parse_statuses(raw: str | list[str] | None, name: str = "status_filter") -> list[TaskStatus]:
    """A status, a comma-separated list of them, or a JSON list; ``None`` means no filter."""
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else raw
    statuses = []
    for item in items:
        text = item.strip().lower()
        if not text:
            continue
        try:
            statuses.append(TaskStatus(text))
        except ValueError:
            known = ", ".join(status.value for status in TaskStatus)
            raise InvalidRequest(f"{name}: unknown status {item!r}; known: {known}") from None
    return statuses


def wait_budget(requested: float) -> float:
    """How long a blocking tool may wait: what was asked, but ending before the bridge call's own deadline."""
    if not math.isfinite(requested) or requested < 0:
        raise InvalidRequest("timeout must be a non-negative number of seconds")
    remaining = trio.current_effective_deadline() - trio.current_time()
    margin = min(WAIT_MARGIN_S, remaining * 0.1)
    return max(0.0, min(requested, remaining - margin))


def register_queue_tools(catalog: ToolCatalog, queue: QueueService) -> None:
    @translated
    async def task_submit(
        task_type: str,
        payload: Any,
        task_id: str | None = None,
        priority: float = 1.0,
        tags: list[str] | None = None,
        timeout: float | None = None,
        retry_policy: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a task durably and return it (status "queued"); higher priority runs first.

        task_type: echo, sleep, hash, tool, fail, or a plugin type (queue_stats lists them).
        retry_policy: {max_attempts: 3, backoff_s: 1.0, multiplier: 2.0, max_backoff_s: 60}.
        metadata.idempotency_key (or a task_id you choose) makes re-submission return the existing
        task instead of a duplicate. metadata.placement: "any" (default), "local", "remote" or
        {"peer": "<peer id>"}. Use task_wait to block until it ends.
        """
        record, created = queue.submit(
            task_type=task_type,
            payload=payload,
            task_id=task_id,
            priority=priority,
            tags=tags,
            timeout=timeout,
            retry_policy=retry_policy,
            metadata=metadata,
        )
        return {**queue.view(record), "created": created}

    @translated
    async def task_status(task_id: str, include_logs: bool = False, include_metrics: bool = False) -> dict[str, Any]:
        """A task's state: status, attempts, worker, timings, last error; optionally its history and metrics."""
        record = queue.get(task_id)
        view = queue.view(record)
        if include_logs:
            view["logs"] = task_logs(record, queue.store.log_lines(record.seq), local_peer=queue.local_peer)
        if include_metrics:
            view["metrics"] = task_metrics(record, now=queue.clock())
        return view

    @translated
    async def task_cancel(task_id: str, reason: str | None = None, force: bool = False) -> dict[str, Any]:
        """Cancel a queued or running task; a running one is stopped on its worker at once.

        Cancelling an already cancelled task is a no-op; a completed or failed task cannot be cancelled.
        ``force`` is accepted for compatibility: running tasks are always stopped.
        """
        record = queue.get(task_id)
        if record.status is TaskStatus.CANCELLED:
            return {**queue.view(record), "cancelled": False, "previous_status": record.status.value}
        if record.status in TERMINAL:
            raise Conflict(f"task {task_id} already {record.status.value}; there is nothing to cancel")
        before = queue.cancel(task_id, reason or "cancelled by task_cancel")
        return {**queue.view(queue.get(task_id)), "cancelled": True, "previous_status": before.status.value}

    @translated
    async def task_list(
        status_filter: str | list[str] | None = None,
        worker_filter: str | None = None,
        tag_filter: str | None = None,
        priority_min: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """List tasks, newest first; filter by status (one, a comma list or a list), worker or peer, tag, priority."""
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidRequest("limit must be 1-1000 and offset at least 0")
        records = queue.store.list(
            statuses=parse_statuses(status_filter),
            worker=worker_filter,
            tag=tag_filter,
            priority_min=priority_min,
            local_peer=queue.local_peer,
            limit=limit,
            offset=offset,
        )
        tasks = [queue.view(record) for record in records]
        return {"tasks": tasks, "count": len(tasks), "limit": limit, "offset": offset, "counts": queue.store.counts()}

    @translated
    async def task_priority(task_id: str, new_priority: float, requeue: bool = False) -> dict[str, Any]:
        """Change a queued or running task's priority (higher runs first); requeue=true also re-queues
        a failed or cancelled task with the new priority."""
        return queue.view(queue.set_priority(task_id, new_priority, requeue))

    @translated
    async def task_result(task_id: str, include_output: bool = True, include_logs: bool = False) -> dict[str, Any]:
        """A task's outcome: its one recorded result once completed, its error once failed or cancelled."""
        record = queue.get(task_id)
        answer: dict[str, Any] = {"task_id": task_id, "status": record.status.value, "ready": record.status in TERMINAL}
        view = queue.view(record, include_result=include_output)
        for key in ("result", "error", "attempt", "failures", "executed_by", "finished_at", "progress"):
            if key in view:
                answer[key] = view[key]
        if include_logs:
            answer["logs"] = task_logs(record, queue.store.log_lines(record.seq), local_peer=queue.local_peer)
        return answer

    @translated
    async def task_wait(task_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until a task ends (completed, failed or cancelled) or timeout_s passes; no polling needed.

        Returns the task with done=true and its result, or done=false if it is still queued or running.
        """
        record = await queue.wait(task_id, wait_budget(timeout_s))
        done = record.status in TERMINAL
        return {**queue.view(record, include_result=done), "done": done}

    @translated
    async def queue_stats(include_worker_stats: bool = False, include_historical: bool = False) -> dict[str, Any]:
        """Counts by status, pause state, workers and slots, task types, recent throughput."""
        return queue.stats(include_workers=include_worker_stats, include_historical=include_historical)

    @translated
    async def queue_pause(reason: str | None = None) -> dict[str, Any]:
        """Stop handing out tasks (to this node's workers and to peers); running tasks finish. Survives restarts."""
        queue.pause(reason)
        return {
            "paused": True,
            "reason": queue.owner.paused_reason,
            "running": queue.store.count(TaskStatus.RUNNING),
        }

    @translated
    async def queue_resume(reorder_by_priority: bool = False) -> dict[str, Any]:
        """Hand out tasks again. The queue is always served highest priority first, then oldest first,
        so reorder_by_priority changes nothing and is accepted for compatibility."""
        was_paused = queue.resume()
        return {"paused": False, "was_paused": was_paused, "queued": queue.store.count(TaskStatus.QUEUED)}

    @translated
    async def queue_clear(status_filter: str | list[str] | None = None, confirm: bool = False) -> dict[str, Any]:
        """Clear tasks by status (default: queued). Queued tasks are cancelled; completed, failed and cancelled
        ones are deleted. Running tasks are left alone (use task_cancel). Without confirm=true, only reports
        what would be cleared."""
        statuses = parse_statuses(status_filter) or [TaskStatus.QUEUED]
        if TaskStatus.RUNNING in statuses:
            raise InvalidRequest("queue_clear does not touch running tasks; cancel them with task_cancel")
        counts = queue.store.counts()
        matching = {status.value: counts[status.value] for status in statuses}
        if not confirm:
            return {"dry_run": True, "would_clear": matching, "message": "pass confirm=true to clear these tasks"}
        return {"dry_run": False, "cleared": queue.clear(statuses), "counts": queue.store.counts()}

    @translated
    async def task_retry(task_id: str, retry_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a failed or cancelled task again (its failure count starts over), optionally with a new retry policy."""
        return queue.view(queue.retry(task_id, retry_config))

    @translated
    async def worker_register(
        worker_id: str,
        capabilities: list[str],
        max_concurrent_tasks: int = 5,
        resource_limits: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add a worker on this node that runs the given task types, up to max_concurrent_tasks at once.

        It starts pulling at once (from this node's queue and, on a P2P network, from peers with work)
        and is re-created after a restart until unregistered. resource_limits is recorded, not enforced.
        """
        if not isinstance(worker_id, str) or not 0 < len(worker_id) <= 128:
            raise InvalidRequest("worker_id must be a string of 1-128 characters")
        if not capabilities:
            raise InvalidRequest("capabilities must name at least one task type")
        if not 1 <= max_concurrent_tasks <= 1024:
            raise InvalidRequest("max_concurrent_tasks must be 1-1024")
        spec = WorkerSpec(
            worker_id,
            tuple(dict.fromkeys(capabilities)),
            max_concurrent_tasks,
            resource_limits=resource_limits or {},
            metadata=metadata or {},
            registered=True,
        )
        worker = await queue.add_worker(spec)
        return {"registered": True, **worker.describe()}

    @translated
    async def worker_unregister(worker_id: str, graceful: bool = True, timeout: float = 300) -> dict[str, Any]:
        """Remove a worker. graceful: it takes no new tasks and its running ones may finish (up to timeout
        seconds); what is still running then, or at once when not graceful, goes back to the queue."""
        outcome = await queue.remove_worker(worker_id, graceful=graceful, timeout=wait_budget(timeout))
        return {"worker_id": worker_id, "unregistered": True, **outcome}

    @translated
    async def worker_status(
        worker_id: str, include_tasks: bool = False, include_metrics: bool = False
    ) -> dict[str, Any]:
        """A worker's state, capabilities and slots; optionally its running tasks and its counters."""
        worker = queue.pool.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker named {worker_id!r} on this node; queue_stats lists them")
        return worker.describe(include_tasks=include_tasks, include_metrics=include_metrics)

    catalog.add(task_submit, category="taskqueue", annotations={"idempotentHint": True, "openWorldHint": False})
    for reader in (task_status, task_list, task_result, queue_stats, worker_status):
        catalog.add(reader, category="taskqueue", annotations=READ_ONLY)
    catalog.add(task_wait, category="taskqueue", timeout_seconds=300.0, annotations=READ_ONLY)
    catalog.add(worker_unregister, category="taskqueue", timeout_seconds=300.0)
    for writer in (task_cancel, task_priority, queue_pause, queue_resume, queue_clear, task_retry, worker_register):
        catalog.add(writer, category="taskqueue")
