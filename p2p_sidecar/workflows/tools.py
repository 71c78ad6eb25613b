"""The 6 workflow tools, with the names and arguments agents already use (see the README)."""

from __future__ import annotations

from typing import Any

from p2p_sidecar.taskqueue.errors import InvalidRequest
from p2p_sidecar.taskqueue.tools import READ_ONLY, translated
from p2p_sidecar.tools.catalog import ToolCatalog
from p2p_sidecar.workflows.dag import FORMATS, render
from p2p_sidecar.workflows.engine import WORKFLOW_STATUSES, WorkflowEngine


def _statuses(raw: str | list[str] | None) -> list[str]:
    if raw is None:
        return []
    items = [item.strip().lower() for item in (raw.split(",") if isinstance(raw, str) else raw) if item.strip()]
    unknown = sorted(set(items) - set(WORKFLOW_STATUSES))
    if unknown:
        raise InvalidRequest(f"status_filter: unknown statuses {unknown}; known: {list(WORKFLOW_STATUSES)}")
    return items


def register_workflow_tools(catalog: ToolCatalog, engine: WorkflowEngine) -> None:
    @translated
    async def workflow_submit(
        name: str,
        steps: list[dict[str, Any]],
        workflow_id: str | None = None,
        priority: float | None = None,
        tags: list[str] | None = None,
        dependencies: dict[str, list[str]] | list[Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run a DAG of tasks durably. Each step: {step_id, task_type, payload, depends_on?, priority?,
        timeout?, retry_policy?, metadata?}. A payload string "{{steps.A.output}}" or
        "{{steps.A.output.key}}" is replaced by that output of step A (and makes the step depend on A).
        Independent steps run in parallel; a step that fails after its retries fails the workflow.
        Cycles and unknown steps are refused here. Re-submitting an existing workflow_id returns it.
        """
        view, created = engine.submit(
            name=name,
            steps=steps,
            workflow_id=workflow_id,
            priority=priority,
            tags=tags,
            dependencies=dependencies,
            metadata=metadata,
        )
        return {**view, "created": created}

    @translated
    async def workflow_status(
        workflow_id: str, include_steps: bool = False, include_metrics: bool = False
    ) -> dict[str, Any]:
        """A workflow's status and step counts; optionally each step (task, status, peer) and timings."""
        return engine.describe(workflow_id, include_steps=include_steps, include_metrics=include_metrics)

    @translated
    async def workflow_cancel(workflow_id: str, reason: str | None = None, force: bool = False) -> dict[str, Any]:
        """Cancel a running workflow: its queued and running steps are cancelled, the others skipped.

        ``force`` is accepted for compatibility: running steps are always stopped.
        """
        before, view = engine.cancel(workflow_id, reason or "cancelled by workflow_cancel")
        return {**view, "cancelled": before == "running", "previous_status": before}

    @translated
    async def workflow_list(
        status_filter: str | list[str] | None = None,
        peer_filter: str | None = None,
        tag_filter: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """List workflows, newest first; peer_filter keeps those with a step run by that peer (its peer id;
        "local" or this node's peer id: this node)."""
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidRequest("limit must be 1-1000 and offset at least 0")
        workflows = engine.list(
            statuses=_statuses(status_filter), peer=peer_filter, tag=tag_filter, limit=limit, offset=offset
        )
        return {"workflows": workflows, "count": len(workflows), "counts": engine.counts()}

    @translated
    async def workflow_dependencies(workflow_id: str, fmt: str = "json") -> dict[str, Any]:
        """A workflow's DAG with each step's status: fmt "json" (steps, edges, parallel levels), "dot" or "mermaid"."""
        if fmt not in FORMATS:
            raise InvalidRequest(f"fmt must be one of {list(FORMATS)} (got {fmt!r})")
        dag = engine.dag(workflow_id)
        statuses = engine.step_statuses(workflow_id)
        graph = render(dag, fmt, title=workflow_id, statuses=statuses)
        if fmt == "json":
            return {"workflow_id": workflow_id, "fmt": fmt, **graph}
        return {"workflow_id": workflow_id, "fmt": fmt, "graph": graph}

    @translated
    async def workflow_result(
        workflow_id: str, include_outputs: bool = True, include_logs: bool = False
    ) -> dict[str, Any]:
        """A workflow's outcome: "output" (the final step's output, when there is one final step), every
        step's output, or the reason it failed."""
        return engine.result(workflow_id, include_outputs=include_outputs, include_logs=include_logs)

    catalog.add(workflow_submit, category="workflow", annotations={"idempotentHint": True, "openWorldHint": False})
    for fn in (workflow_status, workflow_list, workflow_dependencies, workflow_result):
        catalog.add(fn, category="workflow", annotations=READ_ONLY)
    catalog.add(workflow_cancel, category="workflow")
