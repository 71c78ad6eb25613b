"""Durable workflows: DAGs of steps, each step one task in the queue.

State lives in the queue's SQLite database, beside the tasks.  The engine
moves a workflow forward whenever one of its tasks ends (the queue calls it
after the transaction that ended the task commits) and, at start-up, for
every workflow still running, so a crash between "task ended" and "next step
queued" loses nothing.  Advancing is idempotent: each step's task is
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
from typing import Any

from p2p_sidecar.taskqueue.errors import NotFound, QueueError
from p2p_sidecar.taskqueue.model import RetryPolicy, TaskStatus
from p2p_sidecar.taskqueue.records import Ended, dumps
from p2p_sidecar.taskqueue.service import QueueService
from p2p_sidecar.taskqueue.views import task_logs
from p2p_sidecar.workflows import dag as dags

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    seq INTEGER PRIMARY KEY,
    workflow_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    priority REAL,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS workflows_running ON workflows(status) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS workflow_steps (
    workflow_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    task_id TEXT,
    status TEXT NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);
"""

WORKFLOW_STATUSES = ("running", "completed", "failed", "cancelled")
PENDING = "pending"
SKIPPED = "skipped"


class WorkflowEngine:
    def __init__(self, queue: QueueService) -> None:
        self.queue = queue
        self.store = queue.store
        self.db = queue.store.db
        self.db.executescript(_SCHEMA)
        self._advancing = False
        self._pending: dict[str, None] = {}
        queue.on_task_end(self._on_task_end)
        running = [row[0] for row in self.db.execute("SELECT workflow_id FROM workflows WHERE status = 'running'")]
        for workflow_id in running:
            self._schedule(workflow_id)

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
            existing = self._row(workflow_id)
            if existing is not None:
                return self.describe(workflow_id), False
        dag = dags.parse(steps, dependencies)
        for step in dag.steps.values():
            self._precheck(step)
        workflow_id = workflow_id or uuid.uuid4().hex
        now = self.queue.clock()
        with self.store.transaction():
            self.db.execute(
                "INSERT INTO workflows (workflow_id, name, status, priority, tags, metadata, created_at) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (workflow_id, name, priority, dumps(list(tags or [])), dumps(metadata or {}), now),
            )
            for position, step in enumerate(dag.steps.values()):
                self.db.execute(
                    "INSERT INTO workflow_steps (workflow_id, position, step_id, spec, depends_on, status) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (workflow_id, position, step.step_id, dumps(step.to_spec()), dumps(list(step.depends_on)), PENDING),
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
            if item.workflow_id is not None:
                self._schedule(item.workflow_id)
        self._drain()

    def _schedule(self, workflow_id: str) -> None:
        self._pending[workflow_id] = None

    def _drain(self) -> None:
        """Advance every workflow that has news; re-entrant calls (a cancel inside an advance) just queue."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._pending:
                workflow_id = next(iter(self._pending))
                del self._pending[workflow_id]
                try:
                    with self.store.transaction():
                        self._advance(workflow_id)
                except QueueError as exc:  # e.g. the store refused a write; the workflow stays as it was
                    log.error("workflow %s could not advance: %s", workflow_id, exc)
        finally:
            self._advancing = False

    def _advance(self, workflow_id: str) -> None:
        workflow = self._row(workflow_id)
        if workflow is None:
            return
        steps = self._steps(workflow_id)
        self._sync_step_statuses(workflow_id, steps)
        if workflow["status"] != "running":
            self._stop_steps(workflow_id, steps, f"workflow {workflow['status']}")
            return
        for step in steps:
            if step["status"] == TaskStatus.FAILED:
                error = step["task_error"] or {}
                reason = (
                    f"step {step['step_id']!r} failed after {step['task_failures']} attempt(s): "
                    f"{error.get('message', 'unknown error')}"
                )
                self._finish(workflow_id, "failed", reason, steps)
                return
            if step["status"] == TaskStatus.CANCELLED:
                self._finish(workflow_id, "cancelled", f"step {step['step_id']!r} was cancelled", steps)
                return
        if all(step["status"] == TaskStatus.COMPLETED for step in steps):
            self._finish(workflow_id, "completed", None, steps)
            return
        done = {step["step_id"] for step in steps if step["status"] == TaskStatus.COMPLETED}
        outputs: dict[str, Any] | None = None
        for step in steps:
            if step["status"] != PENDING or not set(step["depends_on"]) <= done:
                continue
            if outputs is None:
                outputs = self._outputs(workflow_id)
            spec = step["spec"]
            try:
                payload = dags.resolve(spec["payload"], outputs)
            except dags.TemplateError as exc:
                self._finish(workflow_id, "failed", f"step {step['step_id']!r} input: {exc}", steps)
                return
            metadata = {**(spec.get("metadata") or {}), "idempotency_key": f"wf:{workflow_id}:{step['step_id']}"}
            priority = spec.get("priority")
            if priority is None:
                priority = workflow["priority"] if workflow["priority"] is not None else 1.0
            try:
                view, _ = self.queue.submit(
                    task_type=spec["task_type"],
                    payload=payload,
                    priority=priority,
                    tags=spec.get("tags") or None,
                    timeout=spec.get("timeout"),
                    retry_policy=spec.get("retry_policy"),
                    metadata=metadata,
                    workflow_id=workflow_id,
                    step_id=step["step_id"],
                )
            except QueueError as exc:
                self._finish(workflow_id, "failed", f"step {step['step_id']!r} could not be queued: {exc}", steps)
                return
            self.db.execute(
                "UPDATE workflow_steps SET task_id = ?, status = ? WHERE workflow_id = ? AND step_id = ?",
                (view["task_id"], view["status"], workflow_id, step["step_id"]),
            )
            step["status"] = view["status"]
            step["task_id"] = view["task_id"]

    def _sync_step_statuses(self, workflow_id: str, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            task_status = step["task_status"]
            if task_status is not None and task_status != step["status"] and step["status"] != SKIPPED:
                step["status"] = task_status
                self.db.execute(
                    "UPDATE workflow_steps SET status = ? WHERE workflow_id = ? AND step_id = ?",
                    (task_status, workflow_id, step["step_id"]),
                )

    def _finish(self, workflow_id: str, status: str, error: str | None, steps: list[dict[str, Any]]) -> None:
        self.db.execute(
            "UPDATE workflows SET status = ?, finished_at = ?, error = ? WHERE workflow_id = ?",
            (status, self.queue.clock(), error, workflow_id),
        )
        log.info("workflow %s %s%s", workflow_id, status, f": {error}" if error else "")
        self._stop_steps(workflow_id, steps, error or f"workflow {status}")

    def _stop_steps(self, workflow_id: str, steps: list[dict[str, Any]], reason: str) -> None:
        """Cancel the steps still queued or running; mark the ones never started as skipped."""
        for step in steps:
            if step["status"] == PENDING:
                step["status"] = SKIPPED
                self.db.execute(
                    "UPDATE workflow_steps SET status = ? WHERE workflow_id = ? AND step_id = ?",
                    (SKIPPED, workflow_id, step["step_id"]),
                )
            elif step["task_id"] is not None and step["task_status"] in (TaskStatus.QUEUED, TaskStatus.RUNNING):
                self.queue.cancel(step["task_id"], f"workflow {workflow_id}: {reason}")
                step["task_status"] = TaskStatus.CANCELLED

    # -- reading ---------------------------------------------------------------------------------------------------
    def _row(self, workflow_id: str) -> Any:
        return self.db.execute("SELECT * FROM workflows WHERE workflow_id = ?", (workflow_id,)).fetchone()

    def require(self, workflow_id: str) -> Any:
        row = self._row(workflow_id)
        if row is None:
            raise NotFound(f"no workflow with id {workflow_id!r} on this node")
        return row

    def _steps(self, workflow_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT s.step_id, s.spec, s.depends_on, s.task_id, s.status, t.status AS task_status, "
            "t.error AS task_error, t.failures AS task_failures, t.attempt AS task_attempt, "
            "t.worker_peer AS task_peer, t.worker AS task_worker, t.started_at, t.finished_at "
            "FROM workflow_steps s LEFT JOIN tasks t ON t.task_id = s.task_id "
            "WHERE s.workflow_id = ? ORDER BY s.position",
            (workflow_id,),
        ).fetchall()
        steps = []
        for row in rows:
            step = dict(row)
            step["spec"] = json.loads(row["spec"])
            step["depends_on"] = json.loads(row["depends_on"])
            step["task_error"] = json.loads(row["task_error"]) if row["task_error"] else None
            steps.append(step)
        return steps

    def _outputs(self, workflow_id: str) -> dict[str, Any]:
        rows = self.db.execute(
            "SELECT step_id, result FROM tasks WHERE workflow_id = ? AND status = 'completed'", (workflow_id,)
        )
        return {row[0]: json.loads(row[1]) for row in rows if row[1] is not None}

    def dag(self, workflow_id: str) -> dags.Dag:
        self.require(workflow_id)
        return dags.dag_from_stored((s["step_id"], s["spec"], s["depends_on"]) for s in self._steps(workflow_id))

    def describe(
        self, workflow_id: str, *, include_steps: bool = False, include_metrics: bool = False
    ) -> dict[str, Any]:
        row = self.require(workflow_id)
        steps = self.describe_steps(workflow_id)
        by_status: dict[str, int] = {}
        for step in steps:
            by_status[step["live_status"]] = by_status.get(step["live_status"], 0) + 1
        view: dict[str, Any] = {
            "workflow_id": workflow_id,
            "name": row["name"],
            "status": row["status"],
            "priority": row["priority"],
            "tags": json.loads(row["tags"]),
            "created_at": row["created_at"],
            "finished_at": row["finished_at"],
            "steps_total": len(steps),
            "steps_by_status": by_status,
        }
        metadata = json.loads(row["metadata"])
        if metadata:
            view["metadata"] = metadata
        if row["error"] is not None:
            view["error"] = row["error"]
        if include_steps:
            view["steps"] = [
                {
                    "step_id": step["step_id"],
                    "task_type": step["spec"]["task_type"],
                    "status": step["live_status"],
                    "depends_on": step["depends_on"],
                    "task_id": step["task_id"],
                    "attempt": step["task_attempt"],
                    "executed_by": (step["task_peer"] or "local") if step["task_worker"] else None,
                    **({"error": step["task_error"]} if step["task_error"] else {}),
                }
                for step in steps
            ]
        if include_metrics:
            finished = row["finished_at"] if row["finished_at"] is not None else self.queue.clock()
            runs = {
                step["step_id"]: round(step["finished_at"] - step["started_at"], 6)
                for step in steps
                if step["started_at"] is not None and step["finished_at"] is not None
            }
            peers = sorted({(step["task_peer"] or "local") for step in steps if step["task_worker"]})
            view["metrics"] = {
                "duration_s": round(finished - row["created_at"], 6),
                "step_run_s": runs,
                "executed_on": peers,
                "parallel_levels": len(
                    dags.dag_from_stored((s["step_id"], s["spec"], s["depends_on"]) for s in steps).levels()
                ),
            }
        return view

    def statuses(self, workflow_id: str) -> dict[str, str]:
        return {s["step_id"]: s["live_status"] for s in self.describe_steps(workflow_id)}

    def describe_steps(self, workflow_id: str) -> list[dict[str, Any]]:
        """Stored steps with ``live_status``: the task's status once queued, else pending or skipped."""
        steps = self._steps(workflow_id)
        for step in steps:
            live = step["task_status"] if step["task_status"] and step["status"] != SKIPPED else step["status"]
            step["live_status"] = live
        return steps

    def result(self, workflow_id: str, *, include_outputs: bool, include_logs: bool) -> dict[str, Any]:
        row = self.require(workflow_id)
        dag = self.dag(workflow_id)
        outputs = self._outputs(workflow_id)
        answer: dict[str, Any] = {
            "workflow_id": workflow_id,
            "status": row["status"],
            "ready": row["status"] != "running",
        }
        if row["error"] is not None:
            answer["error"] = row["error"]
        sinks = dag.sinks()
        if include_outputs:
            if row["status"] == "completed" and len(sinks) == 1:
                answer["output"] = outputs.get(sinks[0])
            answer["outputs"] = outputs
        answer["final_steps"] = sinks
        if include_logs:
            logs = {}
            for step in self._steps(workflow_id):
                if step["task_id"] is not None:
                    task = self.store.get(step["task_id"])
                    if task is not None:
                        logs[step["step_id"]] = task_logs(task, self.store.log_lines(task["seq"]))
            answer["logs"] = logs
        return answer

    def cancel(self, workflow_id: str, reason: str) -> tuple[str, dict[str, Any]]:
        row = self.require(workflow_id)
        before = row["status"]
        if before == "running":
            with self.store.transaction():
                self._finish(workflow_id, "cancelled", reason, self._steps(workflow_id))
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
        clauses, params = [], []
        if statuses:
            clauses.append(f"w.status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(w.tags) WHERE json_each.value = ?)")
            params.append(tag)
        if peer is not None:
            clauses.append(
                "EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id AND t.worker IS NOT NULL "
                "AND COALESCE(t.worker_peer, 'local') = ?)"
            )
            params.append(peer)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.execute(
            f"SELECT workflow_id FROM workflows w {where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*params, limit, offset]
        ).fetchall()
        return [self.describe(row[0]) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(WORKFLOW_STATUSES, 0)
        for row in self.db.execute("SELECT status, COUNT(*) FROM workflows GROUP BY status"):
            counts[row[0]] = row[1]
        return counts
