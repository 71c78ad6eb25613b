"""Workflows through a real gateway + sidecar: a diamond whose steps feed each other, rejections, cancel, failure."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.procs import Proc, gateway_proc, running, sidecar_proc, wait_for
from tests.queue_client import call, refused

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("workflows")
    sidecar: Proc = sidecar_proc(tmp, SIDECAR_WORKER_CONCURRENCY="4")
    gateway = gateway_proc(tmp, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield gateway.extra["url"]


def finished(url: str, workflow_id: str, timeout: float = 60.0) -> dict[str, Any]:
    wait_for(lambda: call(url, "workflow_status", workflow_id=workflow_id)["status"] != "running", timeout)
    return call(url, "workflow_result", workflow_id=workflow_id)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_diamond_whose_steps_feed_each_other(url: str) -> None:
    steps = [
        {"step_id": "A", "task_type": "hash", "payload": {"data": "seed"}},
        {"step_id": "B", "task_type": "hash", "payload": {"data": "left:{{steps.A.output.digest}}"}},
        {"step_id": "C", "task_type": "sleep", "payload": {"seconds": 0.2, "result": "{{steps.A.output.size}}"}},
        {
            "step_id": "D",
            "task_type": "hash",
            "payload": {"data": "{{steps.B.output.digest}}+{{steps.C.output.result}}"},
        },
    ]
    submitted = call(url, "workflow_submit", name="diamond", steps=steps, tags=["diamond"])
    assert submitted["created"] and submitted["status"] == "running" and submitted["steps_total"] == 4
    result = finished(url, submitted["workflow_id"])
    a = sha("seed")
    b = sha(f"left:{a}")
    assert result["status"] == "completed" and result["final_steps"] == ["D"]
    assert result["outputs"]["C"]["result"] == 4  # typed: the whole string was one reference to an int
    assert result["output"]["digest"] == sha(f"{b}+4")
    status = call(
        url, "workflow_status", workflow_id=submitted["workflow_id"], include_steps=True, include_metrics=True
    )
    assert [step["status"] for step in status["steps"]] == ["completed"] * 4
    node = call(url, "queue_stats")["node"]  # executed_by names this node by its peer id
    assert status["metrics"]["parallel_levels"] == 3 and status["metrics"]["executed_on"] == [node]
    tasks = {step["step_id"]: call(url, "task_status", task_id=step["task_id"]) for step in status["steps"]}
    # B and C were queued together, as soon as A was done: independent branches run in parallel
    assert tasks["B"]["created_at"] == pytest.approx(tasks["C"]["created_at"], abs=0.05)
    assert tasks["B"]["created_at"] >= tasks["A"]["finished_at"]
    assert tasks["D"]["created_at"] >= max(tasks["B"]["finished_at"], tasks["C"]["finished_at"])
    again = call(url, "workflow_submit", name="diamond", steps=steps, workflow_id=submitted["workflow_id"])
    assert not again["created"] and again["status"] == "completed"


def test_dependencies_render_as_json_dot_and_mermaid(url: str) -> None:
    steps = [
        {"step_id": "fetch", "task_type": "echo", "payload": 1},
        {"step_id": "parse", "task_type": "echo", "payload": 2, "depends_on": ["fetch"]},
        {"step_id": "index", "task_type": "echo", "payload": 3},
    ]
    wid = call(url, "workflow_submit", name="render", steps=steps, dependencies={"index": ["parse"]})["workflow_id"]
    finished(url, wid)
    as_json = call(url, "workflow_dependencies", workflow_id=wid)
    assert as_json["edges"] == [{"from": "fetch", "to": "parse"}, {"from": "parse", "to": "index"}]
    assert as_json["levels"] == [["fetch"], ["parse"], ["index"]]
    dot = call(url, "workflow_dependencies", workflow_id=wid, fmt="dot")["graph"]
    assert '"fetch" -> "parse";' in dot and "completed" in dot
    mermaid = call(url, "workflow_dependencies", workflow_id=wid, fmt="mermaid")["graph"]
    assert mermaid.startswith("flowchart TD") and "s1 --> s2" in mermaid
    status, error = refused(url, "workflow_dependencies", workflow_id=wid, fmt="png")
    assert status == 422 and "fmt must be one of" in error["message"]


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        (
            [
                {"step_id": "A", "task_type": "echo", "depends_on": ["C"]},
                {"step_id": "B", "task_type": "echo", "depends_on": ["A"]},
                {"step_id": "C", "task_type": "echo", "depends_on": ["B"]},
            ],
            "workflow has a cycle: ",
        ),
        ([{"step_id": "A", "task_type": "echo", "payload": "{{steps.ghost.output}}"}], "unknown step 'ghost'"),
        ([{"step_id": "A", "task_type": "echo", "depends_on": ["ghost"]}], "depends on unknown step 'ghost'"),
        ([{"step_id": "A", "task_type": "echo"}, {"step_id": "A", "task_type": "echo"}], "duplicate step id 'A'"),
        ([{"step_id": "A", "task_type": "teleport"}], "step 'A': unknown task_type 'teleport'"),
        ([{"step_id": "A", "task_type": "sleep", "payload": {}}], "step 'A': a sleep task needs payload.seconds"),
    ],
)
def test_invalid_workflows_are_rejected_at_submit(url: str, steps: list[dict[str, Any]], words: str) -> None:
    before = call(url, "workflow_list")["counts"]
    status, error = refused(url, "workflow_submit", name="bad", steps=steps)
    assert status == 422 and error["code"] == "invalid_arguments" and words in error["message"], error
    assert call(url, "workflow_list")["counts"] == before  # nothing was stored


def test_a_failed_step_fails_the_workflow_and_cancels_the_rest(url: str) -> None:
    steps = [
        {"step_id": "slow", "task_type": "sleep", "payload": {"seconds": 30}},
        {
            "step_id": "bad",
            "task_type": "fail",
            "payload": {"message": "disk on fire"},
            "retry_policy": {"max_attempts": 2, "backoff_s": 0.1},
        },
        {"step_id": "never", "task_type": "echo", "payload": "{{steps.bad.output}}"},
    ]
    wid = call(url, "workflow_submit", name="doomed", steps=steps)["workflow_id"]
    result = finished(url, wid)
    assert result["status"] == "failed"
    assert result["error"] == "step 'bad' failed after 2 attempt(s): disk on fire"
    status = call(url, "workflow_status", workflow_id=wid, include_steps=True)
    by_step = {step["step_id"]: step["status"] for step in status["steps"]}
    assert by_step == {"slow": "cancelled", "bad": "failed", "never": "skipped"}


def test_cancelling_a_workflow_cancels_its_running_and_queued_steps(url: str) -> None:
    steps = [
        {"step_id": "one", "task_type": "sleep", "payload": {"seconds": 60}},
        {"step_id": "two", "task_type": "sleep", "payload": {"seconds": 60}},
        {"step_id": "three", "task_type": "echo", "payload": 3, "depends_on": ["one", "two"]},
    ]
    wid = call(url, "workflow_submit", name="cancel me", steps=steps, tags=["to-cancel"])["workflow_id"]
    wait_for(lambda: call(url, "workflow_status", workflow_id=wid)["steps_by_status"].get("running") == 2, 30)
    started = time.monotonic()
    cancelled = call(url, "workflow_cancel", workflow_id=wid, reason="no longer needed")
    assert cancelled["cancelled"] and cancelled["status"] == "cancelled" and cancelled["error"] == "no longer needed"
    assert {step["step_id"]: step["status"] for step in cancelled["steps"]} == {
        "one": "cancelled",
        "two": "cancelled",
        "three": "skipped",
    }
    wait_for(lambda: call(url, "queue_stats")["running_here"] == 0, 10, what="steps stopped on their worker")
    assert time.monotonic() - started < 10
    listed = call(url, "workflow_list", status_filter="cancelled", tag_filter="to-cancel")
    assert [workflow["workflow_id"] for workflow in listed["workflows"]] == [wid]
    assert call(url, "workflow_cancel", workflow_id=wid)["cancelled"] is False
    assert refused(url, "workflow_status", workflow_id="nope")[0] == 404
    assert call(url, "workflow_list", peer_filter="local", limit=1)["count"] == 1


def test_a_workflow_of_the_largest_size_runs_and_a_cycle_of_it_is_refused(url: str) -> None:
    """1000 steps, listed last step first: accepted and run in order; the same steps in a ring: a clear refusal."""
    chain = [
        {"step_id": f"s{index}", "task_type": "echo", "payload": {"n": index}, "depends_on": [f"s{index + 1}"]}
        for index in range(999)
    ] + [{"step_id": "s999", "task_type": "echo", "payload": {"n": 999}}]
    submitted = call(url, "workflow_submit", name="long chain", steps=chain)
    assert submitted["created"] and submitted["steps_total"] == 1000
    result = finished(url, submitted["workflow_id"], timeout=120)
    assert result["status"] == "completed" and result["final_steps"] == ["s0"] and result["output"] == {"n": 0}
    ring = [{**step, "depends_on": [f"s{(index + 1) % 1000}"]} for index, step in enumerate(chain)]
    status, error = refused(url, "workflow_submit", name="ring", steps=ring)
    assert status == 422 and error["message"].startswith("workflow has a cycle: s"), error
