"""The records that pass between the store, the workers and the network: tasks, leases, reports.

Plain frozen dataclasses, with the wire form of the two that travel between
peers (``Lease`` in a claim reply; ``Report`` is encoded by ``distribution``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2p_sidecar.taskqueue.model import RetryPolicy, TaskStatus


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: str
    task_type: str
    payload: Any
    priority: float
    timeout_s: float
    policy: RetryPolicy
    idem_key: str | None = None
    placement: str | None = None
    tags: Sequence[str] = ()
    metadata: dict[str, Any] | None = None
    workflow_id: str | None = None
    step_id: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed task as a worker receives it."""

    task_id: str
    attempt: int
    task_type: str
    payload: Any
    timeout_s: float
    priority: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "task_type": self.task_type,
            "payload": self.payload,
            "timeout_s": self.timeout_s,
            "priority": self.priority,
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Lease:
        return cls(
            task_id=str(raw["task_id"]),
            attempt=int(raw["attempt"]),
            task_type=str(raw["task_type"]),
            payload=raw.get("payload"),
            timeout_s=float(raw["timeout_s"]),
            priority=float(raw.get("priority", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Report:
    """A lease holder's account of one attempt: a result, or an error."""

    task_id: str
    attempt: int
    ok: bool
    result: Any = None
    message: str = ""
    code: str = "task_error"
    retryable: bool = True
    size: int = 0
    """Bytes of the result as JSON, when the reporter measured it (bounds batches on the network)."""


@dataclass(frozen=True, slots=True)
class Ended:
    """A task that reached a terminal status in the transaction that just committed."""

    task_id: str
    status: TaskStatus
    workflow_id: str | None


EndedHook = Callable[[list[Ended]], None]
