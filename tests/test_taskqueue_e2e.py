"""The task queue through a real gateway + sidecar: task types, waiting, retries, cancel, limits, plugins."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.mcp_results import first_text
from tests.procs import Proc, gateway_proc, running, sidecar_proc
from tests.queue_client import call, refused, wait_done, wait_status

pytestmark = pytest.mark.e2e
CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"  # "hello world"


def make_plugin(root: Path) -> Path:
    """A package that adds task type ``shout`` through the entry point group, found on PYTHONPATH."""
    root.mkdir()
    (root / "qtest_plugin.py").write_text(
        "async def shout(payload, context):\n"
        "    return {'shout': str(payload.get('text', '')).upper(), 'attempt': context.attempt}\n"
    )
    info = root / "qtest_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qtest-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mcp_p2p.task_executors]\nshout = qtest_plugin:shout\n")
    return root


@pytest.fixture(scope="module")
def queue_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    tmp = tmp_path_factory.mktemp("queue")
    plugin = make_plugin(tmp / "plugin")
    sidecar = sidecar_proc(
        tmp,
        SIDECAR_WORKER_CONCURRENCY="4",
        SIDECAR_TASK_MAX_RESULT_BYTES="4096",
        SIDECAR_QUEUE_LEASE_SECONDS="5",
        PYTHONPATH=str(plugin),
    )
    gateway = gateway_proc(tmp, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield gateway.extra["url"], sidecar


def test_builtin_task_types_run_to_their_result(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    submitted = {
        "echo": call(url, "task_submit", task_type="echo", payload={"any": ["json", 1]}),
        "sleep": call(url, "task_submit", task_type="sleep", payload={"seconds": 0.2, "result": "rested"}),
        "hash": call(url, "task_submit", task_type="hash", payload={"data": "abc", "iterations": 3}),
        "tool": call(
            url, "task_submit", task_type="tool", payload={"tool": "hash_content", "arguments": {"data": "hello world"}}
        ),
    }
    assert all(view["status"] == "queued" and view["created"] for view in submitted.values())
    results = {name: wait_done(url, view["task_id"]) for name, view in submitted.items()}
    assert all(view["status"] == "completed" and view["attempt"] == 1 for view in results.values()), results
    assert results["echo"]["result"] == {"any": ["json", 1]}
    assert results["sleep"]["result"] == {"slept_s": 0.2, "result": "rested"}
    chained = hashlib.sha256(hashlib.sha256(hashlib.sha256(b"abc").digest()).digest()).hexdigest()
    assert results["hash"]["result"]["digest"] == chained and results["hash"]["result"]["size"] == 3
    assert results["tool"]["result"]["cid"] == CID  # the gateway's own hash_content, called through the bridge
    again = call(url, "task_result", task_id=submitted["hash"]["task_id"])
    assert again["ready"] and again["result"] == results["hash"]["result"]


def test_task_wait_returns_when_the_task_ends_or_at_its_timeout(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    quick = call(url, "task_submit", task_type="sleep", payload={"seconds": 0.5})
    started = time.monotonic()
    view = call(url, "task_wait", task_id=quick["task_id"], timeout_s=30)
    assert view["done"] and view["status"] == "completed" and time.monotonic() - started < 20
    slow = call(url, "task_submit", task_type="sleep", payload={"seconds": 30})
    started = time.monotonic()
    view = call(url, "task_wait", task_id=slow["task_id"], timeout_s=0.3)
    assert not view["done"] and view["status"] in ("queued", "running") and time.monotonic() - started >= 0.3
    call(url, "task_cancel", task_id=slow["task_id"])


def test_retries_follow_the_backoff_then_succeed_or_fail(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    policy = {"max_attempts": 3, "backoff_s": 0.4, "multiplier": 2.0}
    flaky = call(
        url, "task_submit", task_type="fail", payload={"fail_times": 2, "result": "third time"}, retry_policy=policy
    )
    done = wait_done(url, flaky["task_id"])
    assert done["status"] == "completed" and done["result"] == {"attempt": 3, "result": "third time"}
    assert (done["attempt"], done["failures"]) == (3, 2)
    logs = call(url, "task_status", task_id=flaky["task_id"], include_logs=True)["logs"]
    failures = [entry for entry in logs if "failed" in entry["event"]]
    assert len(failures) == 2 and "retry 1 of 2 in 0.4s" in failures[0]["event"] and "in 0.8s" in failures[1]["event"]
    # the wait before attempt 3 is at least the second backoff (0.8 s) after the second failure
    assert done["started_at"] - failures[1]["at"] >= 0.8 - 0.01

    doomed = call(
        url,
        "task_submit",
        task_type="fail",
        payload={"message": "always broken"},
        retry_policy={"max_attempts": 2, "backoff_s": 0.1},
    )
    done = wait_done(url, doomed["task_id"])
    assert done["status"] == "failed" and (done["attempt"], done["failures"]) == (2, 2)
    assert done["error"]["message"] == "always broken"
    final = call(url, "task_result", task_id=doomed["task_id"])
    assert final["ready"] and final["error"]["message"] == "always broken" and "result" not in final

    fatal = call(url, "task_submit", task_type="fail", payload={"retryable": False, "message": "no point"})
    done = wait_done(url, fatal["task_id"])
    assert done["status"] == "failed" and done["attempt"] == 1  # not retryable: one attempt, whatever the policy

    retried = call(url, "task_retry", task_id=doomed["task_id"], retry_config={"max_attempts": 1})
    assert retried["status"] == "queued" and retried["failures"] == 0 and retried["max_attempts"] == 1
    assert wait_done(url, doomed["task_id"])["attempt"] == 3


def test_cancel_a_running_task_stops_it(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    view = call(url, "task_submit", task_type="sleep", payload={"seconds": 60})
    wait_status(url, view["task_id"], "running")
    cancelled = call(url, "task_cancel", task_id=view["task_id"], reason="changed my mind")
    assert cancelled["cancelled"] and cancelled["previous_status"] == "running" and cancelled["status"] == "cancelled"
    assert cancelled["error"]["message"] == "changed my mind"
    waited = call(url, "task_wait", task_id=view["task_id"], timeout_s=5)
    assert waited["done"] and waited["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while call(url, "worker_status", worker_id="local", include_tasks=True)["tasks"]:
        assert time.monotonic() < deadline, "the cancelled task kept its worker slot"
        time.sleep(0.05)
    again = call(url, "task_cancel", task_id=view["task_id"])
    assert again["cancelled"] is False and again["status"] == "cancelled"


def test_results_over_the_limit_fail_the_task_clearly(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    view = call(url, "task_submit", task_type="echo", payload={"blob": "x" * 5000})
    done = wait_done(url, view["task_id"])
    assert done["status"] == "failed" and done["attempt"] == 1
    assert done["error"]["code"] == "too_large" and "4096" in done["error"]["message"]


def test_idempotency_key_and_task_id_make_resubmission_safe(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    first = call(url, "task_submit", task_type="echo", payload=1, metadata={"idempotency_key": "order-42"})
    second = call(url, "task_submit", task_type="echo", payload=2, metadata={"idempotency_key": "order-42"})
    assert first["created"] and not second["created"] and second["task_id"] == first["task_id"]
    mine = call(url, "task_submit", task_type="echo", payload=3, task_id="my-task-1")
    again = call(url, "task_submit", task_type="echo", payload=3, task_id="my-task-1")
    assert mine["task_id"] == "my-task-1" and mine["created"] and not again["created"]
    assert wait_done(url, "my-task-1")["result"] == 3


@pytest.mark.parametrize(
    ("tool", "arguments", "status", "code", "words"),
    [
        (
            "task_submit",
            {"task_type": "teleport", "payload": {}},
            422,
            "invalid_arguments",
            "unknown task_type 'teleport'",
        ),
        ("task_submit", {"task_type": "sleep", "payload": {}}, 422, "invalid_arguments", "payload.seconds"),
        (
            "task_submit",
            {"task_type": "echo", "payload": 1, "retry_policy": {"max_attempts": 0}},
            422,
            "invalid_arguments",
            "max_attempts",
        ),
        ("task_submit", {"task_type": "echo", "payload": 1, "priority": "high"}, 422, "invalid_arguments", "priority"),
        (
            "task_submit",
            {"task_type": "echo", "payload": "x" * 1_100_000},
            422,
            "invalid_arguments",
            "SIDECAR_TASK_MAX_PAYLOAD_BYTES",
        ),
        (
            "task_submit",
            {"task_type": "echo", "payload": 1, "metadata": {"placement": {"peer": 5}}},
            422,
            "invalid_arguments",
            "placement",
        ),
        (
            "task_submit",
            {"task_type": "echo", "payload": 1, "metadata": {"placement": "moon"}},
            422,
            "invalid_arguments",
            "placement",
        ),
        ("task_status", {"task_id": "nope"}, 404, "not_found", "no task with id 'nope'"),
        ("task_wait", {"task_id": "nope"}, 404, "not_found", "no task"),
        ("task_list", {"status_filter": "sleeping"}, 422, "invalid_arguments", "unknown status 'sleeping'"),
        ("queue_clear", {"status_filter": "running", "confirm": True}, 422, "invalid_arguments", "task_cancel"),
        ("worker_status", {"worker_id": "ghost"}, 404, "not_found", "ghost"),
        ("worker_register", {"worker_id": "w", "capabilities": ["teleport"]}, 422, "invalid_arguments", "teleport"),
        ("worker_unregister", {"worker_id": "ghost"}, 404, "not_found", "ghost"),
    ],
)
def test_bad_requests_get_clear_errors(
    queue_stack: tuple[str, Proc], tool: str, arguments: dict[str, Any], status: int, code: str, words: str
) -> None:
    url, _ = queue_stack
    got_status, error = refused(url, tool, **arguments)
    assert (got_status, error["code"]) == (status, code), error
    assert words in error["message"]


def test_a_task_placed_on_other_peers_waits_for_one_on_a_lone_node(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    view = call(url, "task_submit", task_type="echo", payload=1, metadata={"placement": "remote"})
    assert view["created"] and view["status"] == "queued"
    done = call(url, "task_wait", task_id=view["task_id"], timeout_s=1.0)
    assert not done["done"] and done["status"] == "queued"  # this node's own worker never takes it
    assert call(url, "task_cancel", task_id=view["task_id"])["cancelled"]


def test_finished_tasks_cannot_be_cancelled_or_retried(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    view = call(url, "task_submit", task_type="echo", payload=1)
    wait_done(url, view["task_id"])
    assert refused(url, "task_cancel", task_id=view["task_id"])[0] == 409
    status, error = refused(url, "task_retry", task_id=view["task_id"])
    assert status == 409 and "only failed or cancelled" in error["message"]
    assert refused(url, "task_priority", task_id=view["task_id"], new_priority=3)[0] == 409


def test_a_plugin_task_type_from_the_entry_point_group(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    assert "shout" in call(url, "queue_stats")["task_types"]
    view = call(url, "task_submit", task_type="shout", payload={"text": "quiet please"})
    assert wait_done(url, view["task_id"])["result"] == {"shout": "QUIET PLEASE", "attempt": 1}


def test_registered_workers_take_their_types_and_leave_gracefully(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    registered = call(
        url,
        "worker_register",
        worker_id="sleeper",
        capabilities=["sleep"],
        max_concurrent_tasks=2,
        metadata={"team": "a"},
    )
    assert registered["registered"] and registered["state"] == "running" and registered["capabilities"] == ["sleep"]
    status, _ = refused(url, "worker_register", worker_id="sleeper", capabilities=["sleep"])
    assert status == 409
    tasks = [call(url, "task_submit", task_type="sleep", payload={"seconds": 0.3})["task_id"] for _ in range(8)]
    workers = {wait_done(url, task_id)["worker"] for task_id in tasks}
    assert workers <= {"local", "sleeper"}
    stats = call(url, "queue_stats", include_worker_stats=True)
    assert {worker["worker_id"] for worker in stats["worker_stats"]} >= {"local", "sleeper"}
    long = call(url, "task_submit", task_type="sleep", payload={"seconds": 0.5}, metadata={})
    status = call(url, "worker_status", worker_id="sleeper", include_tasks=True, include_metrics=True)
    assert status["max_concurrent_tasks"] == 2 and "metrics" in status
    gone = call(url, "worker_unregister", worker_id="sleeper", graceful=True, timeout=10)
    assert gone["unregistered"] and gone["released"] == 0
    assert refused(url, "worker_status", worker_id="sleeper")[0] == 404
    assert wait_done(url, long["task_id"])["status"] == "completed"


def test_list_and_stats_agree(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack
    tag = f"batch-{time.monotonic_ns()}"
    ids = [call(url, "task_submit", task_type="echo", payload=i, tags=[tag], priority=i)["task_id"] for i in range(5)]
    for task_id in ids:
        wait_done(url, task_id)
    listed = call(url, "task_list", tag_filter=tag, status_filter="completed")
    assert sorted(task["task_id"] for task in listed["tasks"]) == sorted(ids)
    assert [task["task_id"] for task in call(url, "task_list", tag_filter=tag, priority_min=3)["tasks"]] == ids[:2:-1]
    assert call(url, "task_list", tag_filter=tag, limit=2, offset=1)["count"] == 2
    stats = call(url, "queue_stats", include_historical=True)
    assert stats["counts"] == listed["counts"] and stats["total"] == sum(stats["counts"].values())
    assert stats["historical"]["completed"]["count"] == stats["counts"]["completed"]
    metrics = call(url, "task_status", task_id=ids[0], include_metrics=True)["metrics"]
    assert metrics["attempts"] == 1 and metrics["total_s"] >= metrics["run_s"] >= 0


def test_the_official_mcp_client_submits_and_waits(queue_stack: tuple[str, Proc]) -> None:
    url, _ = queue_stack

    async def scenario() -> None:
        async with Client(url + "/mcp") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"task_submit", "task_wait", "queue_stats", "workflow_submit", "workflow_dependencies"} <= names
            submitted = await client.call_tool("task_submit", {"task_type": "hash", "payload": {"data": "hello world"}})
            assert not submitted.is_error
            task_id = submitted.structured_content["task_id"]
            waited = await client.call_tool("task_wait", {"task_id": task_id, "timeout_s": 30})
            assert not waited.is_error and waited.structured_content["result"]["cid"] == CID
            missing = await client.call_tool("task_status", {"task_id": "nope"})
            assert missing.is_error and "no task with id" in first_text(missing)

    anyio.run(scenario)
