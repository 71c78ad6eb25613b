"""The records that pass between the store, the owner, the workers and the tools: frozen, typed, no SQLite.

``TaskRecord`` is a stored task as every layer above the store sees it (the
store is the only code that reads rows); ``Placement`` says who may run a
task; ``Lease``, ``Report`` and ``Progress`` are what a worker holds and sends
back.  How they travel between peers is ``protocol.py``'s business.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from p2p_sidecar.taskqueue.errors import InvalidRequest
from p2p_sidecar.taskqueue.model import RetryPolicy, TaskState, TaskStatus


def dumps(value: Any) -> str:
    """The one JSON form the queue stores and measures (compact, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class PlacementKind(StrEnum):
    ANY = "any"
    """This node's workers first, then any peer that runs the type."""
    LOCAL = "local"
    """Only this node's own workers."""
    REMOTE = "remote"
    """Only other peers' workers."""
    PEER = "peer"
    """Only the named peer's workers."""


_PEER_PREFIX = "peer:"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task may run (``metadata.placement`` of ``task_submit``)."""

    kind: PlacementKind = PlacementKind.ANY
    peer: str | None = None

    @classmethod
    def parse(cls, raw: Any, *, local_peer: str | None) -> Placement:
        """From a tool argument: ``"any"``, ``"local"``, ``"remote"`` or ``{"peer": "<peer id>"}``.

        Naming this node's own peer id means ``local``.
        """
        if raw is None or raw == PlacementKind.ANY:
            return ANYWHERE
        if raw == PlacementKind.LOCAL:
            return cls(PlacementKind.LOCAL)
        if raw == PlacementKind.REMOTE:
            return cls(PlacementKind.REMOTE)
        if isinstance(raw, dict) and set(raw) == {"peer"} and isinstance(raw["peer"], str) and raw["peer"]:
            if len(raw["peer"]) > 128:
                raise InvalidRequest("metadata.placement.peer must be a peer id of at most 128 characters")
            return cls(PlacementKind.LOCAL) if raw["peer"] == local_peer else cls(PlacementKind.PEER, raw["peer"])
        raise InvalidRequest('metadata.placement must be "any", "local", "remote" or {"peer": "<peer id>"}')

    @classmethod
    def from_column(cls, value: str | None) -> Placement:
        """From the ``placement`` column (NULL, ``local``, ``remote``, ``peer:<id>``)."""
        if value is None:
            return ANYWHERE
        if value.startswith(_PEER_PREFIX):
            return cls(PlacementKind.PEER, value.removeprefix(_PEER_PREFIX))
        return cls(PlacementKind(value))

    def to_column(self) -> str | None:
        if self.kind is PlacementKind.ANY:
            return None
        if self.kind is PlacementKind.PEER:
            return f"{_PEER_PREFIX}{self.peer}"
        return self.kind.value

    def admits(self, peer: str | None) -> bool:
        """May a worker of ``peer`` run the task (``None``: one of this node's own workers)?"""
        if self.kind is PlacementKind.ANY:
            return True
        if peer is None:
            return self.kind is PlacementKind.LOCAL
        return self.kind is PlacementKind.REMOTE or (self.kind is PlacementKind.PEER and self.peer == peer)


ANYWHERE = Placement()


@dataclass(frozen=True, slots=True)
class Progress:
    """What an executor last said about how far its attempt got; shown with the task at its owner."""

    message: str | None = None
    done: float | None = None
    total: float | None = None
    at: float = 0.0

    MAX_MESSAGE = 1000

    @classmethod
    def parse(cls, raw: Any, *, at: float) -> Progress:
        """From an executor's call or a peer's message; refuses what is not a short text and finite numbers."""
        if not isinstance(raw, Mapping):
            raise InvalidRequest("progress must be an object {message?, done?, total?}")
        message = raw.get("message")
        if message is not None and not isinstance(message, str):
            raise InvalidRequest("progress.message must be a string")
        numbers = {}
        for key in ("done", "total"):
            value = raw.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0
            ):
                raise InvalidRequest(f"progress.{key} must be a non-negative number")
            numbers[key] = None if value is None else float(value)
        return cls(message[: cls.MAX_MESSAGE] if message else None, numbers["done"], numbers["total"], at)

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "done": self.done, "total": self.total, "at": self.at}


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: str
    task_type: str
    payload: Any
    priority: float
    timeout_s: float
    policy: RetryPolicy
    idem_key: str | None = None
    placement: Placement = ANYWHERE
    tags: Sequence[str] = ()
    metadata: dict[str, Any] | None = None
    workflow_id: str | None = None
    step_id: str | None = None
    traceparent: str | None = None
    """The W3C trace context the task was submitted in: its attempts run as part of that trace."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One stored task, decoded.  Payload and result stay JSON text until someone asks for them."""

    seq: int
    task_id: str
    task_type: str
    status: TaskStatus
    priority: float
    placement: Placement
    policy: RetryPolicy
    timeout_s: float
    attempt: int
    failures: int
    not_before: float
    created_at: float
    payload_json: str
    idem_key: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    worker_peer: str | None = None
    """The peer whose worker holds (or held) the lease; None for this node's own workers."""
    lease_boot: str | None = None
    lease_expires: float | None = None
    workflow_id: str | None = None
    step_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result_json: str | None = None
    error: dict[str, Any] | None = None
    progress: Progress | None = None
    traceparent: str | None = None

    @property
    def state(self) -> TaskState:
        return TaskState(self.status, self.attempt, self.failures, self.policy)

    def payload(self) -> Any:
        return json.loads(self.payload_json)

    def result(self) -> Any:
        return None if self.result_json is None else json.loads(self.result_json)


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed task as a worker receives it; ``(task_id, attempt)`` is what it reports under."""

    task_id: str
    attempt: int
    task_type: str
    payload: Any
    timeout_s: float
    priority: float
    traceparent: str | None = None
    """The trace the task was submitted in (an attempt's spans and log lines join it)."""
    submitted_at: float | None = None
    """When the owner accepted the task (its clock): where the attempt's "task queued" span starts."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.attempt)


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
    step_id: str | None = None


EndedHook = Callable[[list[Ended]], None]
