"""Durability: kill -9 of the sidecar with work queued and running, SIGTERM with work running.

Each test restarts the same sidecar (same data directory, same ports); the
gateway stays up and reconnects by itself.  Whatever the store holds at the
end is checked directly in its SQLite file once the sidecar has stopped.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for
from tests.queue_client import call, refused, wait_done, wait_status

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Proc]]:
    env = getattr(request, "param", {})
    sidecar = sidecar_proc(tmp_path, **env)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield gateway.extra["url"], sidecar


def restart(url: str, sidecar: Proc) -> None:
    sidecar.start()
    wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 30, what="gateway reconnected")


def stored(sidecar: Proc) -> list[sqlite3.Row]:
    db = sqlite3.connect(Path(sidecar.extra["data_dir"]) / "queue.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM tasks ORDER BY seq").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("stack", [{"SIDECAR_WORKER_CONCURRENCY": "2"}], indirect=True)
def test_200_tasks_survive_kill9_of_the_submitting_sidecar(stack: tuple[str, Proc]) -> None:
    url, sidecar = stack
    call(url, "queue_pause")
    keys = [f"job-{i}" for i in range(200)]
    ids = [
        call(
            url,
            "task_submit",
            task_type="sleep",
            payload={"seconds": 0.03, "result": i},
            metadata={"idempotency_key": key},
        )["task_id"]
        for i, key in enumerate(keys)
    ]
    assert call(url, "queue_stats")["counts"]["queued"] == 200
    call(url, "queue_resume")
    wait_for(lambda: call(url, "queue_stats")["counts"]["completed"] >= 10, 30, what="some tasks done")
    sidecar.kill9()  # most of the 200 still queued, two running
    restart(url, sidecar)
    # A client that is unsure which submits landed sends them all again: nothing is duplicated.
    again = [
        call(
            url,
            "task_submit",
            task_type="sleep",
            payload={"seconds": 0.03, "result": i},
            metadata={"idempotency_key": key},
        )
        for i, key in enumerate(keys)
    ]
    assert [view["task_id"] for view in again] == ids and not any(view["created"] for view in again)
    for i, task_id in enumerate(ids):
        done = wait_done(url, task_id)
        assert done["status"] == "completed" and done["result"] == {"slept_s": 0.03, "result": i}, done
    stats = call(url, "queue_stats")
    assert stats["counts"] == {"queued": 0, "running": 0, "completed": 200, "failed": 0, "cancelled": 0}
    sidecar.stop()
    rows = stored(sidecar)
    assert len(rows) == 200 and len({row["idem_key"] for row in rows}) == 200
    assert all(row["status"] == "completed" and row["result"] is not None for row in rows)
    assert [json.loads(row["result"])["result"] for row in rows] == list(range(200))
    rerun = [row for row in rows if row["attempt"] > 1]
    assert len(rerun) <= 2  # only what was running at the kill ran again
    assert all(row["failures"] == 1 for row in rerun)


@pytest.mark.parametrize("stack", [{"SIDECAR_QUEUE_LEASE_SECONDS": "120"}], indirect=True)
def test_a_task_running_when_its_sidecar_dies_runs_again_once_after_restart(stack: tuple[str, Proc]) -> None:
    url, sidecar = stack
    task_id = call(url, "task_submit", task_type="sleep", payload={"seconds": 2, "result": "done"})["task_id"]
    wait_status(url, task_id, "running")
    sidecar.kill9()
    restarted = time.monotonic()
    restart(url, sidecar)
    done = wait_done(url, task_id)
    # back in the queue at once on start-up, not after the 120 s lease
    assert time.monotonic() - restarted < 60
    assert done["status"] == "completed" and done["result"] == {"slept_s": 2, "result": "done"}
    assert (done["attempt"], done["failures"]) == (2, 1)
    logs = call(url, "task_status", task_id=task_id, include_logs=True)["logs"]
    assert any("sidecar restarted while the task ran" in entry["event"] for entry in logs), logs


@pytest.mark.parametrize(
    "stack", [{"SIDECAR_WORKER_CONCURRENCY": "2", "SIDECAR_SHUTDOWN_GRACE_SECONDS": "1.5"}], indirect=True
)
def test_sigterm_lets_short_tasks_finish_and_hands_long_ones_back(stack: tuple[str, Proc]) -> None:
    url, sidecar = stack
    short = call(url, "task_submit", task_type="sleep", payload={"seconds": 0.5})["task_id"]
    long = call(url, "task_submit", task_type="sleep", payload={"seconds": 60})["task_id"]
    wait_status(url, short, "running")
    wait_status(url, long, "running")
    sidecar.signal(signal.SIGTERM)
    # draining: not ready any more, and from the same step on it accepts no new work
    wait_for(lambda: http_json("GET", sidecar.health_url)[0] == 503, 5, what="the sidecar draining")
    status, error = refused(url, "task_submit", task_type="echo", payload=1)
    assert status == 503 and error["code"] == "unavailable"
    assert sidecar.exit_code(15) == 0
    rows = {row["task_id"]: row for row in stored(sidecar)}
    assert rows[short]["status"] == "completed"
    assert (rows[long]["status"], rows[long]["failures"]) == ("queued", 0)  # handed back, not counted as failed
    restart(url, sidecar)
    again = wait_status(url, long, "running")
    assert (again["attempt"], again["failures"]) == (2, 0)
    call(url, "task_cancel", task_id=long)


def test_a_workflow_survives_kill9_mid_step(stack: tuple[str, Proc]) -> None:
    url, sidecar = stack
    steps = [
        {"step_id": "slow", "task_type": "sleep", "payload": {"seconds": 1.5, "result": "from slow"}},
        {"step_id": "after", "task_type": "echo", "payload": {"got": "{{steps.slow.output.result}}"}},
    ]
    workflow = call(url, "workflow_submit", name="durable", steps=steps)
    wid = workflow["workflow_id"]
    wait_for(lambda: call(url, "workflow_status", workflow_id=wid)["steps_by_status"].get("running") == 1, 30)
    sidecar.kill9()
    restart(url, sidecar)
    wait_for(lambda: call(url, "workflow_status", workflow_id=wid)["status"] != "running", 60, what="workflow done")
    result = call(url, "workflow_result", workflow_id=wid)
    assert result["status"] == "completed" and result["output"] == {"got": "from slow"}


def test_a_second_sidecar_on_the_same_data_dir_refuses_to_start(stack: tuple[str, Proc], tmp_path: Path) -> None:
    _, sidecar = stack
    twin = sidecar_proc(tmp_path, "twin")
    twin.env["SIDECAR_DATA_DIR"] = str(sidecar.extra["data_dir"])
    twin.start(wait=False)
    assert twin.exit_code(30) == 1
    assert "another sidecar is using this data directory" in twin.log_path.read_text()
