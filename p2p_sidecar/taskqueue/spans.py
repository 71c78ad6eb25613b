"""An attempt as part of the trace its task was submitted in, wherever it runs.

The owner keeps the submitting call's W3C ``traceparent`` with the task and
hands it out with every lease (``Lease.traceparent``, and when the task was
accepted, ``Lease.submitted_at``).  The worker runs the attempt inside that
context: the attempt's log lines carry the trace id (and ``task:<id>`` as
their call id), the calls it makes (a ``tool`` task's call to its gateway)
carry the trace on, and when this process exports traces the attempt is a
``task <type>`` span under the submitting span, after a ``task queued`` span
from acceptance to the start of the attempt (the owner's clock at one end,
this node's at the other).  With export off no span is made.
"""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind

from p2p_sidecar.taskqueue.records import Lease
from shared_schema import tracing


def attempt_context(lease: Lease, owner: str | None) -> tracing.served:
    """Enter around an executor's run (``with attempt_context(lease, owner): ...``)."""
    attributes: dict[str, str | int] | None = None
    if tracing.enabled():
        attributes = {
            "mcp_p2p.task.id": lease.task_id,
            "mcp_p2p.task.type": lease.task_type,
            "mcp_p2p.task.attempt": lease.attempt,
            "mcp_p2p.task.owner": owner or "this node",
        }
        if lease.traceparent is not None and lease.submitted_at is not None:
            started_ns = time.time_ns()
            queued = tracing.tracer().start_span(
                "task queued",
                context=tracing.parent_from(lease.traceparent),
                attributes=attributes,
                start_time=min(int(lease.submitted_at * 1e9), started_ns),
            )
            queued.end(end_time=started_ns)
    return tracing.served(
        f"task {lease.task_type}",
        traceparent=lease.traceparent,
        call_id=f"task:{lease.task_id}",
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
