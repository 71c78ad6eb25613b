"""What a task is and how its state may change: pure functions, no I/O, no clock.

The store applies these decisions inside its transactions; keeping them here,
synchronous and free of SQLite, is what lets every (state, event) pair be
tested exhaustively.

Two counters matter and are kept apart on purpose:

* ``attempt`` counts claims.  It only ever grows, and it is the lease's
  fencing token: a completion is recorded only for the attempt that holds the
  current lease, so a late or duplicate report from an earlier attempt is
  refused.  That is how execution is at-least-once while exactly one result is
  recorded.
* ``failures`` counts attempts that ended badly (the executor failed, timed
  out, or its worker vanished with the lease).  The retry policy is judged on
  it.  An attempt handed back on purpose (``release``: graceful shutdown,
  worker unregistered) is not a failure and costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from p2p_sidecar.taskqueue.errors import InvalidRequest


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[TaskStatus] = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
ACTIVE: frozenset[TaskStatus] = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})


class Event(StrEnum):
    """Everything that can happen to a task."""

    CLAIM = "claim"  # a worker takes it (queued -> running)
    COMPLETE = "complete"  # the lease holder reports a result
    FAIL = "fail"  # the lease holder reports a failure (or the run timed out)
    LOSE = "lose"  # the lease expired, or its worker's process restarted
    RELEASE = "release"  # the lease holder hands it back unfinished, on purpose
    CANCEL = "cancel"  # task_cancel, queue_clear, a cancelled workflow
    RETRY = "retry"  # task_retry: run a failed or cancelled task again
    REPRIORITIZE = "reprioritize"  # task_priority


ALLOWED: dict[Event, frozenset[TaskStatus]] = {
    Event.CLAIM: frozenset({TaskStatus.QUEUED}),
    Event.COMPLETE: frozenset({TaskStatus.RUNNING}),
    Event.FAIL: frozenset({TaskStatus.RUNNING}),
    Event.LOSE: frozenset({TaskStatus.RUNNING}),
    Event.RELEASE: frozenset({TaskStatus.RUNNING}),
    Event.CANCEL: ACTIVE,
    Event.RETRY: frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED}),
    Event.REPRIORITIZE: ACTIVE,
}
"""In which statuses each event is accepted; anything else is refused (``IllegalTransition``)."""


class IllegalTransition(InvalidRequest):
    def __init__(self, status: TaskStatus, event: Event) -> None:
        allowed = ", ".join(sorted(ALLOWED[event]))
        super().__init__(f"cannot {event.value} a task that is {status.value} (only when {allowed})")
        self.status = status
        self.event = event


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a task may fail and how long to wait between tries.

    ``max_attempts`` counts failed attempts: 3 means a task that keeps failing
    runs three times and is then failed.  The wait before retry *n* (n >= 1)
    is ``backoff_s * multiplier ** (n - 1)``, capped at ``max_backoff_s``.
    """

    max_attempts: int = 3
    backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 60.0

    _LIMITS = {
        "max_attempts": (1, 100),
        "backoff_s": (0.0, 3600.0),
        "multiplier": (1.0, 10.0),
        "max_backoff_s": (0.0, 86400.0),
    }

    def delay_after(self, failures: int) -> float:
        """Seconds to wait before the attempt that follows ``failures`` failures."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 64)  # far past any cap; keeps the float finite
        return min(self.backoff_s * self.multiplier**exponent, self.max_backoff_s)

    def to_dict(self) -> dict[str, Any]:
        # by hand rather than dataclasses.asdict, which deep-copies: this runs for every task stored and shown
        return {
            "max_attempts": self.max_attempts,
            "backoff_s": self.backoff_s,
            "multiplier": self.multiplier,
            "max_backoff_s": self.max_backoff_s,
        }

    @classmethod
    def parse(cls, raw: Any, base: RetryPolicy | None = None) -> RetryPolicy:
        """Build a policy from a tool argument; missing keys come from ``base`` (the defaults).

        ``max_retries`` is accepted as another spelling (``max_attempts = max_retries + 1``).
        Unknown keys and out-of-range values are refused with a message naming them.
        """
        base = base or cls()
        if raw is None:
            return base
        if not isinstance(raw, dict):
            raise InvalidRequest('retry_policy must be an object, e.g. {"max_attempts": 3, "backoff_s": 1.0}')
        values = dict(raw)
        if "max_retries" in values:
            retries = values.pop("max_retries")
            if "max_attempts" in values:
                raise InvalidRequest("retry_policy: give max_attempts or max_retries, not both")
            if isinstance(retries, bool) or not isinstance(retries, int):
                raise InvalidRequest("retry_policy.max_retries must be an integer")
            values["max_attempts"] = retries + 1
        unknown = sorted(set(values) - set(cls._LIMITS))
        if unknown:
            known = ", ".join([*cls._LIMITS, "max_retries"])
            raise InvalidRequest(f"retry_policy has unknown keys {unknown}; known: {known}")
        fields = base.to_dict()
        for key, value in values.items():
            low, high = cls._LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidRequest(f"retry_policy.{key} must be a number")
            if key == "max_attempts" and not float(value).is_integer():
                raise InvalidRequest("retry_policy.max_attempts must be a whole number")
            if not low <= value <= high:
                raise InvalidRequest(f"retry_policy.{key} must be between {low:g} and {high:g} (got {value:g})")
            fields[key] = int(value) if key == "max_attempts" else float(value)
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class TaskState:
    """The part of a task record that decides its next status."""

    status: TaskStatus
    attempt: int = 0
    failures: int = 0
    policy: RetryPolicy = RetryPolicy()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one event: the new status and what the store must write.

    ``delay_s`` is how long a re-queued task waits before it may be claimed;
    ``error`` is the task's final error when the outcome is terminal.
    """

    status: TaskStatus
    failures: int
    delay_s: float = 0.0
    error: dict[str, Any] | None = None
    note: str = ""


def check(state: TaskState, event: Event) -> None:
    if state.status not in ALLOWED[event]:
        raise IllegalTransition(state.status, event)


def claim(state: TaskState) -> Outcome:
    check(state, Event.CLAIM)
    return Outcome(TaskStatus.RUNNING, state.failures, note=f"claimed (attempt {state.attempt + 1})")


def complete(state: TaskState) -> Outcome:
    check(state, Event.COMPLETE)
    return Outcome(TaskStatus.COMPLETED, state.failures, note="completed")


def fail(
    state: TaskState, *, message: str, code: str = "task_error", retryable: bool = True, lost: bool = False
) -> Outcome:
    """An attempt ended badly: re-queue after the policy's backoff, or fail the task for good.

    ``lost`` marks an attempt whose worker vanished (lease expired, process
    restarted): it is re-queued at once, because waiting does not make a dead
    worker's work any likelier to succeed, but it still counts as a failure so
    that a task which kills its worker cannot loop forever.
    """
    check(state, Event.LOSE if lost else Event.FAIL)
    failures = state.failures + 1
    limit = state.policy.max_attempts
    if retryable and failures < limit:
        delay = 0.0 if lost else state.policy.delay_after(failures)
        note = f"attempt {state.attempt} failed ({message}); retry {failures} of {limit - 1} in {delay:.3g}s"
        return Outcome(TaskStatus.QUEUED, failures, delay_s=delay, note=note)
    why = "not retryable" if not retryable else f"{failures} of {limit} attempts failed"
    error = {"code": code, "message": message, "attempt": state.attempt, "failures": failures}
    return Outcome(TaskStatus.FAILED, failures, error=error, note=f"failed: {message} ({why})")


def release(state: TaskState) -> Outcome:
    check(state, Event.RELEASE)
    return Outcome(TaskStatus.QUEUED, state.failures, note=f"attempt {state.attempt} handed back unfinished")


def cancel(state: TaskState, reason: str) -> Outcome:
    check(state, Event.CANCEL)
    error = {"code": "cancelled", "message": reason, "attempt": state.attempt, "failures": state.failures}
    return Outcome(TaskStatus.CANCELLED, state.failures, error=error, note=f"cancelled: {reason}")


def retry(state: TaskState) -> Outcome:
    """task_retry: a fresh start for a failed or cancelled task (its failure count is reset)."""
    check(state, Event.RETRY)
    return Outcome(TaskStatus.QUEUED, 0, note="queued again by task_retry")


def reprioritize(state: TaskState) -> Outcome:
    check(state, Event.REPRIORITIZE)
    return Outcome(state.status, state.failures, note="priority changed")


class Verdict(StrEnum):
    """What the owner made of a lease holder's report of one attempt."""

    RECORDED = "recorded"
    """The report held the lease: its result (or failure) is now the task's."""
    DUPLICATE = "duplicate"
    """The same attempt already recorded its result (a retried report); the reporter is done too."""
    REJECTED = "rejected"
    """The lease is gone (expired, cancelled, claimed again): the result was discarded."""


class LeaseAnswer(StrEnum):
    """The owner's answer for one lease in a heartbeat."""

    OK = "ok"
    """Still held; extended by one lease period."""
    CANCELLED = "cancelled"
    """The task was cancelled: stop the attempt."""
    LOST = "lost"
    """Not held any more (expired, re-claimed, unknown): stop the attempt; its result would be refused."""


def completion_verdict(status: TaskStatus, current_attempt: int, reported_attempt: int) -> Verdict:
    """What a completion report means for the task in its present state (see ``Verdict``)."""
    if reported_attempt != current_attempt:
        return Verdict.REJECTED
    if status is TaskStatus.RUNNING:
        return Verdict.RECORDED
    if status is TaskStatus.COMPLETED:
        return Verdict.DUPLICATE
    return Verdict.REJECTED
