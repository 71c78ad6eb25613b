"""Tasks in the trace that submitted them: from outside the queue, which is not changed for it.

A task is submitted inside a call (``task_submit``, ``workflow_submit``) and
runs later, perhaps on another peer.  To keep the two in one trace:

* ``TracedQueue.submit`` (the composition root builds this subclass instead
  of ``QueueService``) remembers, for each task it creates inside a trace, the
  submitting span's ``traceparent`` and the submit time, in a bounded
  in-memory table on the owner (trace context is advisory: after a restart a
  task simply runs as a trace of its own);
* the owner answers ``trace.task`` requests from peers with that entry;
* every executor is wrapped (``traced_executors``): when this node exports
  traces, the wrapper looks the task's entry up (in its own table for its
  own tasks, with one ``trace.task`` request to the owner for another peer's)
  and runs the executor as a ``task <type>`` CONSUMER span under the
  submitting span, after a ``task queued`` span from the submit time to the
  start of the attempt (the owner's clock at one end, this node's at the
  other).  With export off nothing is looked up and no span is made; the
  attempt's log lines carry ``task:<id>`` as their call id either way.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind

from p2p_sidecar.node.rpc_server import RpcContext
from p2p_sidecar.taskqueue import QueueService
from p2p_sidecar.taskqueue.executors import Executor, ExecutorRegistry, TaskContext
from p2p_sidecar.taskqueue.records import TaskRecord
from shared_schema import BridgeError, tracing

log = logging.getLogger(__name__)

OP = "trace.task"
"""Peer op: ``{"task_id": str}`` -> ``{"traceparent"?: str, "submitted_at"?: float}`` (empty when unknown)."""
MAX_REMEMBERED = 10_000
LOOKUP_TIMEOUT_S = 1.0

PeerCall = Callable[[str, str, dict[str, Any], float], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class TaskTrace:
    traceparent: str
    submitted_at: float


class TaskTraces:
    """The trace each of this node's recent tasks was submitted in (bounded: the oldest are forgotten)."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._traces: collections.OrderedDict[str, TaskTrace] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._traces)

    def remember(self, task_id: str, submitted_at: float) -> None:
        traceparent = tracing.traceparent_of_current()
        if traceparent is None:
            return
        self._traces[task_id] = TaskTrace(traceparent, submitted_at)
        self._traces.move_to_end(task_id)
        while len(self._traces) > self._limit:
            self._traces.popitem(last=False)

    def get(self, task_id: str) -> TaskTrace | None:
        return self._traces.get(task_id)

    async def op_trace_task(self, context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
        task_id = args.get("task_id")
        found = self._traces.get(task_id) if isinstance(task_id, str) else None
        return {} if found is None else {"traceparent": found.traceparent, "submitted_at": found.submitted_at}


class TracedQueue(QueueService):
    """The queue, remembering the trace each new task was submitted in (see the module docstring)."""

    def __init__(self, *args: Any, traces: TaskTraces, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.traces = traces

    def submit(self, **kwargs: Any) -> tuple[TaskRecord, bool]:
        record, created = super().submit(**kwargs)
        if created:
            self.traces.remember(record.task_id, record.created_at)
        return record, created


def traced_executors(registry: ExecutorRegistry, traces: TaskTraces, call_peer: PeerCall) -> ExecutorRegistry:
    """The same task types, each executor run under its task's trace (when export is on) and call id."""
    wrapped: dict[str, Executor] = {}
    for task_type in registry.types:
        executor = registry.get(task_type)
        if executor is not None:
            wrapped[task_type] = _traced(task_type, executor, traces, call_peer)
    return ExecutorRegistry(wrapped)


async def _origin(context: TaskContext, traces: TaskTraces, call_peer: PeerCall) -> TaskTrace | None:
    if context.owner is None:
        return traces.get(context.task_id)
    try:
        found = await call_peer(context.owner, OP, {"task_id": context.task_id}, LOOKUP_TIMEOUT_S)
    except BridgeError as exc:  # an owner without the op, or unreachable: the attempt is a trace of its own
        log.debug("trace of task %s not known: %s", context.task_id, exc)
        return None
    traceparent = tracing.clean_traceparent(found.get("traceparent")) if isinstance(found, dict) else None
    submitted_at = found.get("submitted_at") if isinstance(found, dict) else None
    if traceparent is None or isinstance(submitted_at, bool) or not isinstance(submitted_at, int | float):
        return None
    return TaskTrace(traceparent, float(submitted_at))


def _traced(task_type: str, executor: Executor, traces: TaskTraces, call_peer: PeerCall) -> Executor:
    @functools.wraps(executor)  # keeps its docstring and its ``validate``, which task_submit calls
    async def run(payload: Any, context: TaskContext) -> Any:
        call_id = f"task:{context.task_id}"
        if not tracing.enabled():
            with tracing.served(f"task {task_type}", traceparent=None, call_id=call_id):
                return await executor(payload, context)
        origin = await _origin(context, traces, call_peer)
        attributes: dict[str, str | int] = {
            "mcp_p2p.task.id": context.task_id,
            "mcp_p2p.task.type": task_type,
            "mcp_p2p.task.attempt": context.attempt,
            "mcp_p2p.task.owner": context.owner or "this node",
        }
        if origin is not None:
            parent = tracing.parent_from(origin.traceparent)
            started_ns = time.time_ns()
            queued = tracing.tracer().start_span(
                "task queued",
                context=parent,
                attributes=attributes,
                start_time=min(int(origin.submitted_at * 1e9), started_ns),
            )
            queued.end(end_time=started_ns)
        with tracing.served(
            f"task {task_type}",
            traceparent=origin.traceparent if origin is not None else None,
            call_id=call_id,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ):
            return await executor(payload, context)

    return run
