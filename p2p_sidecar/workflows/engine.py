"""Durable workflows: DAGs of steps, each step one task in the queue.

State lives in the queue's SQLite database, in the ``workflows`` and
``workflow_steps`` tables (this module is the only one that writes them, in
the store's transactions; tasks it reads through the store's records).  The
engine moves a workflow forward whenever one of its tasks ends (the queue
calls it after the transaction that ended the task commits) and, at start-up,
for every workflow still running, so a crash between "task ended" and "next
step queued" loses nothing.  Advancing is idempotent: each step's task is
submitted with the idempotency key ``wf:<workflow>:<step>``, so advancing
twice never queues a step twice.

Steps whose dependencies are all completed are queued together, which is
how independent branches run in parallel (on this node's workers and on any
peer that pulls them).  A step that fails after its retry policy fails the
workflow with a reason naming it, and the rest is cancelled.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2p_sidecar.taskqueue.errors import NotFound, QueueError
from p2p_sidecar.taskqueue.model import RetryPolicy, TaskStatus
from p2p_sidecar.taskqueue.records import Ended, TaskRecord, dumps
from p2p_sidecar.taskqueue.service import QueueService
from p2p_sidecar.taskqueue.views import executed_by, task_logs
from p2p_sidecar.workflows import dag as dags

log = logging.getLogger(__name__)

WORKFLOW_STATUSES = ("running", "completed", "failed", "cancelled")
PENDING = "pending"
SKIPPED = "skipped"


@dataclass
class StepState:
    """One stored step with its task (once queued)."""

    step_id: str
    spec: dict[str, Any]
    depends_on: list[str]
    task_id: str | None
    status: str
    """pending, skipped, or the status of its task when last synced."""
    task: TaskRecord | None

    @property
    def live_status(self) -> str:
        """The task's status once queued, else pending or skipped."""
        if self.task is not None and self.status != SKIPPED:
            return self.task.status.value
        return self.status


class WorkflowEngine:
    def __init__(self, queue: QueueService) -> None:
        self.queue = queue
        self.store = queue.store
        self._advancing = False
        self._pending: dict[str, list[str] | None] = {}
        """Workflows with news: the steps that completed since (advanced incrementally), or None (look at all)."""
        queue.owner.on_task_end(self._on_task_end)
        for row in self.store.query("SELECT workflow_id FROM workflows WHERE status = 'running'"):
            self._schedule(row[0])
        self._drain()

    # -- submit ---------------------------------------------------------------------------------------------
    def submit(
        self,
        *,
        name: str,
        steps: Any,
        workflow_id: str | None = None,
        priority: float | None = None,
        tags: Sequence[str] | None = None,
        dependencies: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        if workflow_id is not None:
            if not isinstance(workflow_id, str) or not 0 < len(workflow_id) <= 128:
                raise dags.DagError("workflow_id must be a string of 1-128 characters")
            if self._row(workflow_id) is not None:
                return self.describe(workflow_id), False
        dag = dags.parse(steps, dependencies)
        for step in dag.steps.values():
            self._precheck(step)
        workflow_id = workflow_id or uuid.uuid4().hex
        now = self.queue.clock()
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO workflows (workflow_id, name, status, priority, tags, metadata, created_at) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (workflow_id, name, priority, dumps(list(tags or [])), dumps(metadata or {}), now),
            )
            db.executemany(
                "INSERT INTO workflow_steps (workflow_id, position, step_id, spec, depends_on, status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (workflow_id, position, step.step_id, dumps(step.to_spec()), dumps(list(step.depends_on)), PENDING)
                    for position, step in enumerate(dag.steps.values())
                ],
            )
            self._advance(workflow_id)
        self._drain()
        return self.describe(workflow_id), True

    def _precheck(self, step: dags.Step) -> None:
        """What can be refused before anything runs: the type, and the payload if it has no references."""
        try:
            self.queue.check_type(step.task_type)
            if not step.has_references:
                self.queue.executors.validate(step.task_type, step.payload)
            RetryPolicy.parse(step.retry_policy)
        except QueueError as exc:
            raise dags.DagError(f"step {step.step_id!r}: {exc.message}") from None

    # -- advancing -----------------------------------------------------------------------------------------------
    def _on_task_end(self, ended: list[Ended]) -> None:
        for item in ended:
            if item.workflow_id is None:
                continue
            if item.status is TaskStatus.COMPLETED and item.step_id is not None:
                self._schedule(item.workflow_id, item.step_id)
            else:
                self._schedule(item.workflow_id)
        self._drain()

    def _schedule(self, workflow_id: str, completed_step: str | None = None) -> None:
        if completed_step is None:
            self._pending[workflow_id] = None
            return
        steps = self._pending.setdefault(workflow_id, [])
        if steps is not None:
            steps.append(completed_step)

    def _drain(self) -> None:
        """Advance every workflow that has news; re-entrant calls (a cancel inside an advance) just queue."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._pending:
                workflow_id = next(iter(self._pending))
                completed = self._pending.pop(workflow_id)
                try:
                    with self.store.transaction():
                        if completed is None:
                            self._advance(workflow_id)
                        else:
                            self._steps_completed(workflow_id, completed)
                except QueueError as exc:  # e.g. the store refused a write; the workflow stays as it was
                    log.error("workflow %s could not advance: %s", workflow_id, exc)
        finally:
            self._advancing = False

    def _set_step(self, workflow_id: str, step_id: str, task_id: str | None, status: str) -> None:
        self.store.db.execute(
            "UPDATE workflow_steps SET task_id = ?, status = ? WHERE workflow_id = ? AND step_id = ?",
            (task_id, status, workflow_id, step_id),
        )

    def _advance(self, workflow_id: str) -> None:
        """Sync step statuses from their tasks, finish the workflow or queue every step whose dependencies are done.

        Runs on every task end of the workflow, so it reads only what decides: each step's row and its task's
        status (no payloads, no results but those the next steps take as input).
        """
        workflow = self._row(workflow_id)
        if workflow is None:
            return
        rows = self.store.query(
            "SELECT step_id, spec, depends_on, task_id, status FROM workflow_steps WHERE workflow_id = ? "
            "ORDER BY position",
            (workflow_id,),
        )
        tasks = self.store.workflow_task_states(workflow_id)
        status = {row["step_id"]: row["status"] for row in rows}
        for row in rows:
            task = tasks.get(row["step_id"]) if row["task_id"] is not None else None
            if task is not None and row["status"] not in (SKIPPED, task[0].value):
                status[row["step_id"]] = task[0].value
                self._set_step(workflow_id, row["step_id"], row["task_id"], task[0].value)
        if workflow["status"] != "running":
            self._stop_steps(workflow_id, rows, status, f"workflow {workflow['status']}")
            return
        for row in rows:
            step_id = row["step_id"]
            if status[step_id] == TaskStatus.FAILED:
                _, failures, error = tasks[step_id]
                message = (error or {}).get("message", "unknown error")
                reason = f"step {step_id!r} failed after {failures} attempt(s): {message}"
                self._finish(workflow_id, "failed", reason, rows, status)
                return
            if status[step_id] == TaskStatus.CANCELLED:
                self._finish(workflow_id, "cancelled", f"step {step_id!r} was cancelled", rows, status)
                return
        if all(value == TaskStatus.COMPLETED for value in status.values()):
            self._finish(workflow_id, "completed", None, rows, status)
            return
        for row in rows:
            step_id = row["step_id"]
            if status[step_id] != PENDING:
                continue
            depends_on = json.loads(row["depends_on"])
            if any(status[dep] != TaskStatus.COMPLETED for dep in depends_on):
                continue
            if not self._queue_step(workflow, row, depends_on, status):
                return

    def _steps_completed(self, workflow_id: str, step_ids: list[str]) -> None:
        """Steps completed: queue those of their dependents that wait for nothing else; finish when all are done.

        The common case of a task ending, and the reason a long chain costs the same per step as a short one:
        only the completed steps' dependents are read, not every step of the workflow.
        """
        workflow = self._row(workflow_id)
        if workflow is None or workflow["status"] != "running":
            self._advance(workflow_id)
            return
        db = self.store.db
        for step_id in step_ids:
            db.execute(
                "UPDATE workflow_steps SET status = ? WHERE workflow_id = ? AND step_id = ?",
                (TaskStatus.COMPLETED.value, workflow_id, step_id),
            )
        left = db.execute(
            "SELECT COUNT(*) FROM workflow_steps WHERE workflow_id = ? AND status != ?",
            (workflow_id, TaskStatus.COMPLETED.value),
        ).fetchone()[0]
        if left == 0:
            self._advance(workflow_id)  # all done: the full pass records the outcome
            return
        marks = ",".join("?" * len(step_ids))
        dependents = self.store.query(
            "SELECT step_id, spec, depends_on, task_id, status FROM workflow_steps s WHERE workflow_id = ? "
            "AND status = ? AND EXISTS (SELECT 1 FROM json_each(s.depends_on) "
            f"WHERE json_each.value IN ({marks})) ORDER BY position",
            (workflow_id, PENDING, *step_ids),
        )
        for row in dependents:
            depends_on = json.loads(row["depends_on"])
            waiting = db.execute(
                "SELECT COUNT(*) FROM workflow_steps WHERE workflow_id = ? AND status != ? "
                f"AND step_id IN ({','.join('?' * len(depends_on))})",
                (workflow_id, TaskStatus.COMPLETED.value, *depends_on),
            ).fetchone()[0]
            if waiting == 0 and not self._queue_step(workflow, row, depends_on, None):
                return

    def _queue_step(self, workflow: Any, row: Any, depends_on: list[str], status: dict[str, str] | None) -> bool:
        """Submit one step whose dependencies are done; False if that failed the workflow instead."""
        workflow_id, step_id = workflow["workflow_id"], row["step_id"]
        spec = json.loads(row["spec"])
        try:
            payload = dags.resolve(spec["payload"], self.store.step_results(workflow_id, depends_on))
        except dags.TemplateError as exc:
            self._fail_later(workflow_id, f"step {step_id!r} input: {exc}")
            return False
        metadata = {**(spec.get("metadata") or {}), "idempotency_key": f"wf:{workflow_id}:{step_id}"}
        priority = spec.get("priority")
        if priority is None:
            priority = workflow["priority"] if workflow["priority"] is not None else 1.0
        try:
            record, _ = self.queue.submit(
                task_type=spec["task_type"],
                payload=payload,
                priority=priority,
                tags=spec.get("tags") or None,
                timeout=spec.get("timeout"),
                retry_policy=spec.get("retry_policy"),
                metadata=metadata,
                workflow_id=workflow_id,
                step_id=step_id,
            )
        except QueueError as exc:
            self._fail_later(workflow_id, f"step {step_id!r} could not be queued: {exc}")
            return False
        if status is not None:
            status[step_id] = record.status.value
        self._set_step(workflow_id, step_id, record.task_id, record.status.value)
        return True

    def _fail_later(self, workflow_id: str, reason: str) -> None:
        """Fail the workflow; its steps are stopped by the full pass that follows (in this drain)."""
        self.store.db.execute(
            "UPDATE workflows SET status = 'failed', finished_at = ?, error = ? WHERE workflow_id = ?",
            (self.queue.clock(), reason, workflow_id),
        )
        log.info("workflow %s failed: %s", workflow_id, reason)
        self._schedule(workflow_id)

    def _finish(
        self, workflow_id: str, result: str, error: str | None, rows: list[Any], status: dict[str, str]
    ) -> None:
        self.store.db.execute(
            "UPDATE workflows SET status = ?, finished_at = ?, error = ? WHERE workflow_id = ?",
            (result, self.queue.clock(), error, workflow_id),
        )
        log.info("workflow %s %s%s", workflow_id, result, f": {error}" if error else "")
        self._stop_steps(workflow_id, rows, status, error or f"workflow {result}")

    def _stop_steps(self, workflow_id: str, rows: list[Any], status: dict[str, str], reason: str) -> None:
        """Cancel the steps still queued or running; mark the ones never started as skipped."""
        for row in rows:
            step_id = row["step_id"]
            if status[step_id] == PENDING:
                status[step_id] = SKIPPED
                self._set_step(workflow_id, step_id, None, SKIPPED)
            elif row["task_id"] is not None and status[step_id] in (TaskStatus.QUEUED, TaskStatus.RUNNING):
                self.queue.cancel(row["task_id"], f"workflow {workflow_id}: {reason}")

    # -- reading ---------------------------------------------------------------------------------------------------
    def _row(self, workflow_id: str) -> Any:
        rows = self.store.query("SELECT * FROM workflows WHERE workflow_id = ?", (workflow_id,))
        return rows[0] if rows else None

    def require(self, workflow_id: str) -> Any:
        row = self._row(workflow_id)
        if row is None:
            raise NotFound(f"no workflow with id {workflow_id!r} on this node")
        return row

    def _steps(self, workflow_id: str) -> list[StepState]:
        rows = self.store.query(
            "SELECT step_id, spec, depends_on, task_id, status FROM workflow_steps WHERE workflow_id = ? "
            "ORDER BY position",
            (workflow_id,),
        )
        tasks = self.store.workflow_tasks(workflow_id)
        return [
            StepState(
                row["step_id"],
                json.loads(row["spec"]),
                json.loads(row["depends_on"]),
                row["task_id"],
                row["status"],
                tasks.get(row["step_id"]) if row["task_id"] is not None else None,
            )
            for row in rows
        ]

    @staticmethod
    def _outputs(steps: list[StepState]) -> dict[str, Any]:
        return {
            step.step_id: step.task.result()
            for step in steps
            if step.task is not None and step.task.status is TaskStatus.COMPLETED and step.task.result_json is not None
        }

    def dag(self, workflow_id: str) -> dags.Dag:
        self.require(workflow_id)
        return self._dag(self._steps(workflow_id))

    @staticmethod
    def _dag(steps: list[StepState]) -> dags.Dag:
        return dags.dag_from_stored((step.step_id, step.spec, step.depends_on) for step in steps)

    def _ran_on(self, step: StepState) -> str | None:
        return executed_by(step.task, self.queue.local_peer) if step.task is not None else None

    def describe(
        self, workflow_id: str, *, include_steps: bool = False, include_metrics: bool = False
    ) -> dict[str, Any]:
        row = self.require(workflow_id)
        steps = self._steps(workflow_id)
        by_status: dict[str, int] = {}
        for step in steps:
            by_status[step.live_status] = by_status.get(step.live_status, 0) + 1
        view: dict[str, Any] = {
            "workflow_id": workflow_id,
            "name": row["name"],
            "status": row["status"],
            "priority": row["priority"],
            "tags": json.loads(row["tags"]),
            "created_at": row["created_at"],
            "finished_at": row["finished_at"],
            "steps_total": len(steps),
            "steps_done": by_status.get(TaskStatus.COMPLETED.value, 0),
            "steps_by_status": by_status,
        }
        metadata = json.loads(row["metadata"])
        if metadata:
            view["metadata"] = metadata
        if row["error"] is not None:
            view["error"] = row["error"]
        if include_steps:
            view["steps"] = [self._describe_step(step) for step in steps]
        if include_metrics:
            finished = row["finished_at"] if row["finished_at"] is not None else self.queue.clock()
            runs = {
                step.step_id: round(step.task.finished_at - step.task.started_at, 6)
                for step in steps
                if step.task is not None and step.task.started_at is not None and step.task.finished_at is not None
            }
            peers = sorted({peer for peer in map(self._ran_on, steps) if peer is not None})
            view["metrics"] = {
                "duration_s": round(finished - row["created_at"], 6),
                "step_run_s": runs,
                "executed_on": peers,
                "parallel_levels": len(self._dag(steps).levels()),
            }
        return view

    def _describe_step(self, step: StepState) -> dict[str, Any]:
        task = step.task
        described: dict[str, Any] = {
            "step_id": step.step_id,
            "task_type": step.spec["task_type"],
            "status": step.live_status,
            "depends_on": step.depends_on,
            "task_id": step.task_id,
            "attempt": task.attempt if task is not None else None,
            "executed_by": self._ran_on(step),
        }
        if task is not None and task.error:
            described["error"] = task.error
        if task is not None and task.progress is not None:
            described["progress"] = task.progress.to_dict()
        return described

    def step_statuses(self, workflow_id: str) -> dict[str, str]:
        return {step.step_id: step.live_status for step in self._steps(workflow_id)}

    def result(self, workflow_id: str, *, include_outputs: bool, include_logs: bool) -> dict[str, Any]:
        row = self.require(workflow_id)
        steps = self._steps(workflow_id)
        outputs = self._outputs(steps)
        answer: dict[str, Any] = {
            "workflow_id": workflow_id,
            "status": row["status"],
            "ready": row["status"] != "running",
        }
        if row["error"] is not None:
            answer["error"] = row["error"]
        sinks = self._dag(steps).sinks()
        if include_outputs:
            if row["status"] == "completed" and len(sinks) == 1:
                answer["output"] = outputs.get(sinks[0])
            answer["outputs"] = outputs
        answer["final_steps"] = sinks
        if include_logs:
            answer["logs"] = {
                step.step_id: task_logs(
                    step.task, self.store.log_lines(step.task.seq), local_peer=self.queue.local_peer
                )
                for step in steps
                if step.task is not None
            }
        return answer

    def cancel(self, workflow_id: str, reason: str) -> tuple[str, dict[str, Any]]:
        row = self.require(workflow_id)
        before = row["status"]
        if before == "running":
            with self.store.transaction():
                self.store.db.execute(
                    "UPDATE workflows SET status = 'cancelled', finished_at = ?, error = ? WHERE workflow_id = ?",
                    (self.queue.clock(), reason, workflow_id),
                )
                log.info("workflow %s cancelled: %s", workflow_id, reason)
                self._advance(workflow_id)  # stops its steps: queued and running ones cancelled, the rest skipped
            self._drain()
        return before, self.describe(workflow_id, include_steps=True)

    def list(
        self,
        *,
        statuses: Sequence[str] = (),
        peer: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(workflows.tags) WHERE json_each.value = ?)")
            params.append(tag)
        if peer is not None:
            this_node = peer in ("local", self.queue.local_peer)
            ran_there = self.store.workflows_run_on(None if this_node else peer)
            clauses.append(f"workflow_id IN ({','.join('?' * len(ran_there))})")
            params.extend(sorted(ran_there))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.store.query(
            f"SELECT workflow_id FROM workflows {where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return [self.describe(row[0]) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(WORKFLOW_STATUSES, 0)
        for row in self.store.query("SELECT status, COUNT(*) FROM workflows GROUP BY status"):
            counts[row[0]] = row[1]
        return counts
