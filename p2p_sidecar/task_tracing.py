"""Task executions as spans: each executor of the queue wrapped from outside, so the queue itself is unchanged.

An attempt runs in its worker's own task, which belongs to no call, so its
span is the root of a trace of its own (kind CONSUMER, with the task's id,
type, attempt and owner as attributes); whatever the executor calls, a
gateway tool over the bridge or a peer, is part of that trace.  Log lines
written during the attempt carry ``task:<id>`` as their call id, traced or not.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind

from p2p_sidecar.taskqueue.executors import Executor, ExecutorRegistry, TaskContext
from shared_schema import tracing


def traced_executors(registry: ExecutorRegistry) -> ExecutorRegistry:
    """The same task types, each executor run inside its span (when export is on) and call id."""
    wrapped: dict[str, Executor] = {}
    for task_type in registry.types:
        executor = registry.get(task_type)
        if executor is not None:
            wrapped[task_type] = _traced(task_type, executor)
    return ExecutorRegistry(wrapped)


def _traced(task_type: str, executor: Executor) -> Executor:
    async def run(payload: Any, context: TaskContext) -> Any:
        attributes = {
            "mcp_p2p.task.id": context.task_id,
            "mcp_p2p.task.type": task_type,
            "mcp_p2p.task.attempt": context.attempt,
            "mcp_p2p.task.owner": context.owner or "this node",
        }
        with tracing.served(
            f"task {task_type}",
            traceparent=None,
            call_id=f"task:{context.task_id}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ):
            return await executor(payload, context)

    validate = getattr(executor, "validate", None)
    if validate is not None:
        run.validate = validate  # type: ignore[attr-defined]
    run.__doc__ = executor.__doc__
    return run
