"""Task state transitions (pure): every (status, event) pair, retry policy parsing and backoff."""

from __future__ import annotations

import itertools

import pytest

from p2p_sidecar.taskqueue import model
from p2p_sidecar.taskqueue.errors import InvalidRequest
from p2p_sidecar.taskqueue.model import ALLOWED, Event, IllegalTransition, RetryPolicy, TaskState, TaskStatus

S = TaskStatus
POLICY = RetryPolicy(max_attempts=3, backoff_s=1.0, multiplier=2.0, max_backoff_s=60.0)


def apply(state: TaskState, event: Event) -> model.Outcome:
    if event is Event.CLAIM:
        return model.claim(state)
    if event is Event.COMPLETE:
        return model.complete(state)
    if event is Event.FAIL:
        return model.fail(state, message="boom")
    if event is Event.LOSE:
        return model.fail(state, message="lease expired", lost=True)
    if event is Event.RELEASE:
        return model.release(state)
    if event is Event.CANCEL:
        return model.cancel(state, "asked to")
    if event is Event.RETRY:
        return model.retry(state)
    return model.reprioritize(state)


EXPECTED = {
    (S.QUEUED, Event.CLAIM): S.RUNNING,
    (S.RUNNING, Event.COMPLETE): S.COMPLETED,
    (S.RUNNING, Event.FAIL): S.QUEUED,  # first failure of three allowed
    (S.RUNNING, Event.LOSE): S.QUEUED,
    (S.RUNNING, Event.RELEASE): S.QUEUED,
    (S.QUEUED, Event.CANCEL): S.CANCELLED,
    (S.RUNNING, Event.CANCEL): S.CANCELLED,
    (S.FAILED, Event.RETRY): S.QUEUED,
    (S.CANCELLED, Event.RETRY): S.QUEUED,
    (S.QUEUED, Event.REPRIORITIZE): S.QUEUED,
    (S.RUNNING, Event.REPRIORITIZE): S.RUNNING,
}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(TaskStatus, Event)))
def test_every_status_event_pair(status: TaskStatus, event: Event) -> None:
    state = TaskState(status, attempt=1, failures=0, policy=POLICY)
    expected = EXPECTED.get((status, event))
    if expected is None:
        assert status not in ALLOWED[event]
        with pytest.raises(IllegalTransition) as info:
            apply(state, event)
        assert status.value in str(info.value) and event.value in str(info.value)
    else:
        assert status in ALLOWED[event]
        assert apply(state, event).status is expected


def test_terminal_statuses_accept_only_retry() -> None:
    for status in model.TERMINAL:
        accepted = {event for event in Event if status in ALLOWED[event]}
        assert accepted <= {Event.RETRY}


def test_failures_count_until_the_policy_gives_up() -> None:
    state = TaskState(S.RUNNING, attempt=1, failures=0, policy=POLICY)
    first = model.fail(state, message="e1")
    assert (first.status, first.failures, first.delay_s) == (S.QUEUED, 1, 1.0)
    second = model.fail(TaskState(S.RUNNING, 2, 1, POLICY), message="e2")
    assert (second.status, second.failures, second.delay_s) == (S.QUEUED, 2, 2.0)
    third = model.fail(TaskState(S.RUNNING, 3, 2, POLICY), message="e3")
    assert third.status is S.FAILED and third.failures == 3
    assert third.error == {"code": "task_error", "message": "e3", "attempt": 3, "failures": 3}
    assert "3 of 3 attempts failed" in third.note


def test_not_retryable_fails_at_once() -> None:
    outcome = model.fail(TaskState(S.RUNNING, 1, 0, POLICY), message="bad payload", retryable=False, code="x")
    assert (
        outcome.status is S.FAILED
        and outcome.error is not None
        and outcome.error["code"] == "x"
        and "not retryable" in outcome.note
    )


def test_lost_leases_requeue_without_backoff_but_count() -> None:
    outcome = model.fail(TaskState(S.RUNNING, 1, 0, POLICY), message="gone", lost=True)
    assert (outcome.status, outcome.failures, outcome.delay_s) == (S.QUEUED, 1, 0.0)
    final = model.fail(TaskState(S.RUNNING, 5, 2, POLICY), message="gone", lost=True)
    assert final.status is S.FAILED


def test_release_and_retry_do_not_count_failures() -> None:
    assert model.release(TaskState(S.RUNNING, 4, 2, POLICY)).failures == 2
    assert model.retry(TaskState(S.FAILED, 4, 3, POLICY)).failures == 0


@pytest.mark.parametrize(
    ("status", "current", "reported", "verdict"),
    [
        (S.RUNNING, 2, 2, "recorded"),
        (S.RUNNING, 3, 2, "rejected"),  # the task was claimed again: the old attempt's report is stale
        (S.COMPLETED, 2, 2, "duplicate"),  # a retried report of the attempt that already recorded
        (S.COMPLETED, 3, 2, "rejected"),
        (S.CANCELLED, 2, 2, "rejected"),
        (S.QUEUED, 2, 2, "rejected"),  # lease expired and the task went back to the queue
        (S.FAILED, 2, 2, "rejected"),
    ],
)
def test_completion_verdicts(status: TaskStatus, current: int, reported: int, verdict: str) -> None:
    assert model.completion_verdict(status, current, reported) == verdict


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_s=0.5, multiplier=3.0, max_backoff_s=10.0)
    assert [policy.delay_after(n) for n in range(0, 6)] == [0.0, 0.5, 1.5, 4.5, 10.0, 10.0]
    assert RetryPolicy(max_attempts=100, multiplier=10.0).delay_after(100) == 60.0


def test_retry_policy_parsing() -> None:
    assert RetryPolicy.parse(None) == RetryPolicy()
    assert RetryPolicy.parse({"max_attempts": 5}).max_attempts == 5
    assert RetryPolicy.parse({"max_retries": 0}).max_attempts == 1
    assert RetryPolicy.parse({"backoff_s": 0}, RetryPolicy(max_attempts=7)) == RetryPolicy(7, 0.0)
    for bad, words in [
        ("3", "must be an object"),
        ({"max_attempts": 0}, "between 1 and 100"),
        ({"max_attempts": 2.5}, "whole number"),
        ({"backoff_s": "1"}, "must be a number"),
        ({"backoff_s": float("nan")}, "must be a number"),
        ({"multiplier": 0.5}, "between 1 and 10"),
        ({"retries": 3}, "unknown keys ['retries']"),
        ({"max_retries": 1, "max_attempts": 2}, "not both"),
        ({"max_attempts": True}, "must be a number"),
    ]:
        with pytest.raises(InvalidRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
            RetryPolicy.parse(bad)
