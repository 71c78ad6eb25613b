"""The queue's ops between peers: what the libp2p node must provide (``PeerRpc``), and every message body.

This module is the one place where queue messages are encoded and decoded;
a peer's body is untrusted input, so every decoder checks types and bounds
and raises ``BadRequest`` (answered ``invalid_arguments``).  Old peers that
send fewer fields keep working: every field added since the first version
of the protocol is optional (see docs/p2p-protocol.md, "queue.* ops").

    owner A                                             worker node B
      | -- queue.hint {types, ready} ---------------------> |  "A has claimable work"
      | <-------------------------- {accepted, free} ------ |  B's free slots for those types
      | <- queue.claim {worker, boot, types, max, free} --- |  only with free slots
      | -- {tasks: [lease...], lease_s, paused} ----------> |  one atomic claim in A's store
      | <- queue.heartbeat {worker, boot, leases,           |  every lease/3
      |                     progress} --------------------- |
      | -- {leases: {task_id: ok|cancelled|lost}} -------> |
      | <- queue.progress {worker, boot, progress} -------- |  an executor's progress, as it changes
      | -- queue.cancel {task_id, attempt} ---------------> |  best effort (the heartbeat says it too)
      | <- queue.complete {reports, free} ----------------- |  batched -> {verdicts}
      | <- queue.release {worker, leases, reason} --------- |  B stops without finishing
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from p2p_sidecar.settings import PEER_MESSAGE_FRAMING_BYTES
from p2p_sidecar.taskqueue.errors import InvalidRequest, SourceUnavailable
from p2p_sidecar.taskqueue.model import LeaseAnswer, Verdict
from p2p_sidecar.taskqueue.records import Lease, Progress, Report
from shared_schema.tracing import clean_traceparent

OpHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""``async handler(peer_id, body) -> reply body``; raise ``BadRequest`` for a malformed body."""

OP_CLAIM = "queue.claim"
OP_HEARTBEAT = "queue.heartbeat"
OP_COMPLETE = "queue.complete"
OP_RELEASE = "queue.release"
OP_PROGRESS = "queue.progress"
OP_HINT = "queue.hint"
OP_CANCEL = "queue.cancel"
OWNER_OPS = (OP_CLAIM, OP_HEARTBEAT, OP_COMPLETE, OP_RELEASE, OP_PROGRESS)
"""Served by a node for the tasks it owns."""
WORKER_OPS = (OP_HINT, OP_CANCEL)
"""Served by a node for the leases its workers hold."""

REQUEST_TIMEOUT_S = 5.0
MAX_BATCH = 256
MAX_BATCH_BYTES = 2 * 1024 * 1024
"""Payloads in one claim reply, results in one report batch (JSON bytes): one message stays a few MiB at most.

Lowered to what fits ``SIDECAR_P2P_MAX_MESSAGE_BYTES`` (see ``batch_budget``).  A single task may
exceed it and then travels alone; settings validation makes sure one task always fits a message.
"""
ITEM_OVERHEAD_BYTES = 1024
"""Room for what surrounds one lease or report in a batch: its task id, type, keys, numbers."""
MAX_ERROR_CHARS = 4096
MAX_TYPES = 256
MAX_LEASES = 4096


def batch_budget(max_message_bytes: int) -> int:
    """JSON bytes of payloads (or results) one claim reply (or report batch) may carry.

    Its msgpack form (at most 9/4 as large), plus the items' own overhead and the frame, stays
    within the node's message limit.
    """
    room = max_message_bytes - PEER_MESSAGE_FRAMING_BYTES - MAX_BATCH * ITEM_OVERHEAD_BYTES
    return max(1, min(MAX_BATCH_BYTES, room * 4 // 9))


# -- what the node provides -----------------------------------------------------------------------------------
class PeerRpcError(SourceUnavailable):
    """Root of what ``PeerRpc.request`` may raise.  To a worker, either kind means "that queue cannot answer now"."""


class PeerUnreachable(PeerRpcError):
    """No answer: not connected, the stream failed, or the timeout passed."""


class PeerOpFailed(PeerRpcError):
    """The peer answered with an error (it refused the op or the body)."""


class BadRequest(InvalidRequest):
    """Raised by an op handler for a malformed body; the node answers it ``invalid_arguments``."""


@runtime_checkable
class PeerRpc(Protocol):
    """What the task queue needs from the libp2p node (``peer_rpc.NodePeerRpc`` adapts the node to it)."""

    @property
    def local_peer_id(self) -> str: ...

    def register_op(self, op: str, handler: OpHandler) -> None:
        """Serve ``op`` for every connected peer from now on."""
        ...

    async def request(self, peer_id: str, op: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send ``body`` to ``peer_id``'s handler of ``op`` and return its reply.

        Raises ``PeerUnreachable`` (including on timeout) or ``PeerOpFailed``.
        """
        ...

    def peers_with_capability(self, capability: str) -> list[str]:
        """Live member peers (never this node) that currently advertise ``capability`` (a task type)."""
        ...

    def advertise(self, capabilities: Iterable[str]) -> None:
        """Replace the task types this node advertises to its peers."""
        ...


# -- field checks ---------------------------------------------------------------------------------------------
def _str(body: Mapping[str, Any], key: str, limit: int = 256) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise BadRequest(f"{key} must be a string of 1-{limit} characters")
    return value


def _int(body: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}")
    return value


def _str_list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or len(value) > MAX_TYPES or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{key} must be a list of at most {MAX_TYPES} strings")
    return value


def _counts(body: Mapping[str, Any], key: str) -> dict[str, int]:
    """An optional ``{type: count}`` map (absent from older peers: empty)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_TYPES:
        raise BadRequest(f"{key} must be a map of at most {MAX_TYPES} task types to counts")
    counts = {}
    for name, count in value.items():
        if not isinstance(name, str) or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadRequest(f"{key} must map task type names to non-negative integers")
        counts[name] = min(count, 1 << 30)
    return counts


def _leases(body: Mapping[str, Any]) -> list[tuple[str, int]]:
    value = body.get("leases")
    if not isinstance(value, list) or len(value) > MAX_LEASES:
        raise BadRequest(f"leases must be a list of [task_id, attempt] pairs (at most {MAX_LEASES})")
    leases = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
        ):
            raise BadRequest("each lease must be [task_id, attempt]")
        leases.append((item[0], item[1]))
    return leases


# -- messages -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hint:
    """An owner's notice that it has claimable tasks of these types (``ready``: how many it means for us)."""

    types: tuple[str, ...]
    ready: Mapping[str, int]

    def to_wire(self) -> dict[str, Any]:
        return {"types": list(self.types), "ready": dict(self.ready)}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Hint:
        return cls(tuple(_str_list(body, "types")), _counts(body, "ready"))


@dataclass(frozen=True, slots=True)
class HintReply:
    accepted: bool
    free: Mapping[str, int]
    """The worker node's free slots for the hinted types, when it said (older peers do not)."""

    def to_wire(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "free": dict(self.free)}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> HintReply:
        return cls(body.get("accepted") is True, _counts(body, "free"))


@dataclass(frozen=True, slots=True)
class Claim:
    worker: str
    boot: str
    types: tuple[str, ...]
    max: int
    free: Mapping[str, int]
    """Slots the worker node has free for these types beyond ``max`` (its credit after this claim)."""
    claim_id: str | None = None
    """Chosen by the worker; the same claim sent again (its answer was lost) gets the same leases back."""

    def to_wire(self) -> dict[str, Any]:
        body = {"worker": self.worker, "boot": self.boot, "types": list(self.types), "max": self.max}
        if self.claim_id is not None:
            body["claim_id"] = self.claim_id
        return {**body, "free": dict(self.free)}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Claim:
        return cls(
            _str(body, "worker"),
            _str(body, "boot"),
            tuple(_str_list(body, "types")),
            _int(body, "max", 1, MAX_BATCH),
            _counts(body, "free"),
            _str(body, "claim_id", 64) if body.get("claim_id") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ClaimReply:
    leases: tuple[Lease, ...]
    lease_s: float
    paused: bool
    limited: str | None = None

    def to_wire(self) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "tasks": [lease_to_wire(lease) for lease in self.leases],
            "lease_s": self.lease_s,
            "paused": self.paused,
        }
        if self.limited is not None:
            reply["limited"] = self.limited
        return reply

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> ClaimReply:
        """A reply from an owner; leases we cannot read are leases we cannot run (they expire at the owner)."""
        raw = body.get("tasks", [])
        if not isinstance(raw, list):
            raise BadRequest("tasks must be a list")
        lease_s = body.get("lease_s", 0.0)
        if isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not math.isfinite(lease_s):
            raise BadRequest("lease_s must be a number")
        limited = body.get("limited")
        return cls(
            tuple(lease_from_wire(item) for item in raw),
            float(lease_s),
            body.get("paused") is True,
            limited if isinstance(limited, str) else None,
        )


def lease_to_wire(lease: Lease) -> dict[str, Any]:
    wire = {
        "task_id": lease.task_id,
        "attempt": lease.attempt,
        "task_type": lease.task_type,
        "payload": lease.payload,
        "timeout_s": lease.timeout_s,
        "priority": lease.priority,
    }
    if lease.traceparent is not None:
        wire["tp"] = lease.traceparent
    if lease.submitted_at is not None:
        wire["submitted_at"] = lease.submitted_at
    return wire


def _finite(raw: dict[str, Any], name: str, default: float | None) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"lease {name} must be a finite number")
    return float(value)


def lease_from_wire(raw: Any) -> Lease:
    if not isinstance(raw, dict):
        raise BadRequest("each lease must be an object")
    return Lease(
        task_id=_str(raw, "task_id"),
        attempt=_int(raw, "attempt", 1, 1 << 31),
        task_type=_str(raw, "task_type"),
        payload=raw.get("payload"),
        timeout_s=_finite(raw, "timeout_s", None),
        priority=_finite(raw, "priority", 0.0),
        traceparent=clean_traceparent(raw.get("tp")),
        submitted_at=_advice_time(raw.get("submitted_at")),
    )


def _advice_time(value: Any) -> float | None:
    """An optional time that is only ever advice (where a span starts): a bad one is dropped, not refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker: str
    boot: str
    leases: tuple[tuple[str, int], ...]
    progress: tuple[tuple[str, int, Progress], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"worker": self.worker, "boot": self.boot, "leases": [list(k) for k in self.leases]}
        if self.progress:
            body["progress"] = progress_to_wire(self.progress)
        return body

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], *, now: float) -> Heartbeat:
        return cls(
            _str(body, "worker"),
            _str(body, "boot"),
            tuple(_leases(body)),
            progress_from_wire(body.get("progress"), now=now),
        )


def answers_to_wire(answers: Mapping[str, LeaseAnswer], lease_s: float) -> dict[str, Any]:
    return {"leases": {task_id: answer.value for task_id, answer in answers.items()}, "lease_s": lease_s}


def answers_from_wire(body: Mapping[str, Any]) -> dict[str, LeaseAnswer]:
    raw = body.get("leases")
    if not isinstance(raw, dict):
        return {}
    answers = {}
    for task_id, value in raw.items():
        try:
            answers[str(task_id)] = LeaseAnswer(value)
        except ValueError:
            answers[str(task_id)] = LeaseAnswer.LOST  # an answer we cannot read is no lease we can rely on
    return answers


def progress_to_wire(updates: Sequence[tuple[str, int, Progress]]) -> list[list[Any]]:
    return [
        [task_id, attempt, {"message": p.message, "done": p.done, "total": p.total}] for task_id, attempt, p in updates
    ]


def progress_from_wire(raw: Any, *, now: float) -> tuple[tuple[str, int, Progress], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_LEASES:
        raise BadRequest(
            f"progress must be a list of [task_id, attempt, {{message, done, total}}] (at most {MAX_LEASES})"
        )
    updates = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 3 or not isinstance(item[0], str):
            raise BadRequest("each progress entry must be [task_id, attempt, {message, done, total}]")
        if isinstance(item[1], bool) or not isinstance(item[1], int):
            raise BadRequest("a progress entry's attempt must be an integer")
        try:
            updates.append((item[0], item[1], Progress.parse(item[2], at=now)))
        except InvalidRequest as exc:
            raise BadRequest(exc.message) from None
    return tuple(updates)


def report_to_wire(report: Report) -> dict[str, Any]:
    if report.ok:
        return {"task_id": report.task_id, "attempt": report.attempt, "ok": True, "result": report.result}
    error = {"message": report.message[:MAX_ERROR_CHARS], "code": report.code, "retryable": report.retryable}
    return {"task_id": report.task_id, "attempt": report.attempt, "ok": False, "error": error}


def report_from_wire(raw: Any) -> Report:
    if not isinstance(raw, dict):
        raise BadRequest("each report must be an object")
    task_id = _str(raw, "task_id")
    attempt = _int(raw, "attempt", 1, 1 << 31)
    if raw.get("ok") is True:
        return Report(task_id, attempt, ok=True, result=raw.get("result"))
    error: dict[str, Any] = raw["error"] if isinstance(raw.get("error"), dict) else {}
    return Report(
        task_id,
        attempt,
        ok=False,
        message=str(error.get("message", "failed"))[:MAX_ERROR_CHARS],
        code=str(error.get("code", "task_error"))[:64],
        retryable=error.get("retryable", True) is not False,
    )


def reports_from_wire(body: Mapping[str, Any]) -> list[Report]:
    raw = body.get("reports")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BATCH:
        raise BadRequest(f"reports must be a list of 1-{MAX_BATCH} reports")
    return [report_from_wire(item) for item in raw]


def verdicts_from_wire(body: Mapping[str, Any], expected: int) -> list[Verdict]:
    raw = body.get("verdicts")
    if not isinstance(raw, list) or len(raw) != expected:
        raise BadRequest(f"verdicts must be a list of {expected}")
    try:
        return [Verdict(value) for value in raw]
    except ValueError:
        raise BadRequest("unknown verdict") from None


def release_from_wire(body: Mapping[str, Any]) -> tuple[list[tuple[str, int]], str]:
    return _leases(body), str(body.get("reason", "released by the worker"))[:200]


def cancel_from_wire(body: Mapping[str, Any]) -> tuple[str, int]:
    return _str(body, "task_id"), _int(body, "attempt", 1, 1 << 31)


def worker_boot_from_wire(body: Mapping[str, Any]) -> tuple[str, str]:
    return _str(body, "worker"), _str(body, "boot")


def free_from_wire(body: Mapping[str, Any]) -> dict[str, int]:
    return _counts(body, "free")
