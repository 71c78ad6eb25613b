"""MCP Tasks (io.modelcontextprotocol/tasks) served from the sidecar's durable queue, with real clients.

The requester is the extension's own package (@modelcontextprotocol/ext-tasks) on the TypeScript SDK
client (tests/js/tasks_requester.mjs); raw HTTP checks the wire details; the processes are real and
get killed with SIGKILL where durability is the point.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.mcp_server import _error_result, result_to_mcp
from gateway.mcp_tasks import EXTENSION_ID, QueueTasksExtension
from gateway.registry import ToolRegistry
from tests.js_clients import FIXTURE_TOOLS, JS_DIR, ensure_installed, node_env, run_node
from tests.procs import Proc, gateway_proc, running, sidecar_proc, wait_for

pytestmark = pytest.mark.e2e
REQUESTER = JS_DIR / "tasks_requester.mjs"
MODERN = "2026-07-28"
SLOW = "testkit.slow_steps"


def _sidecar(tmp: Path) -> Proc:
    # A short lease, so a task whose worker died with its sidecar is picked up again soon after the restart.
    return sidecar_proc(tmp, SIDECAR_TOOL_DIRS=str(FIXTURE_TOOLS), SIDECAR_QUEUE_LEASE_SECONDS="3")


def _gateway(tmp: Path, sidecar: Proc, name: str = "gateway") -> Proc:
    gateway = gateway_proc(
        tmp,
        name,
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_TOOL_DIRS=str(FIXTURE_TOOLS),
        GATEWAY_TOOL_CACHE_DIR="off",
        GATEWAY_MCP_TASK_POLL_INTERVAL="0.2",
    )
    gateway.health_url = gateway.extra["url"] + "/health/ready"
    return gateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    tmp = tmp_path_factory.mktemp("mcp-tasks")
    sidecar = _sidecar(tmp)
    gateway = _gateway(tmp, sidecar)
    with running(sidecar, gateway):
        gateway.wait_healthy(30)
        yield gateway, sidecar


def _rpc(gateway: Proc, method: str, params: dict[str, Any], *, declare: bool = True) -> tuple[int, dict[str, Any]]:
    """One 2026-07-28 request, declaring the Tasks extension unless told not to."""
    capabilities: dict[str, Any] = {"extensions": {EXTENSION_ID: {}}} if declare else {}
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
    }
    name = params.get("name") or params.get("taskId")
    if name:
        headers["mcp-name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    answer = httpx.post(gateway.extra["url"] + "/mcp", json=body, headers=headers, timeout=30)
    return answer.status_code, answer.json()


def _tool(gateway: Proc, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{gateway.extra['url']}/tools/execute/{name}", json=arguments, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]


def _metrics(base_url: str) -> str:
    return httpx.get(base_url + "/metrics", timeout=10).text


def _requester(gateway: Proc, mode: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    url = gateway.extra["url"] + "/mcp"
    done = run_node(REQUESTER, url, mode, tool, json.dumps(arguments), timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wait_task(gateway: Proc, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def terminal() -> dict[str, Any] | None:
        status, body = _rpc(gateway, "tasks/get", {"taskId": task_id})
        result = body.get("result") or {}
        return result if status == 200 and result.get("status") in ("completed", "failed", "cancelled") else None

    return wait_for(terminal, timeout, 0.2, what=f"task {task_id} ends")


def test_requester_gets_a_handle_at_once_and_polls_to_the_tool_result(stack: tuple[Proc, Proc]) -> None:
    gateway, _ = stack
    answer = _requester(gateway, "complete", SLOW, {"steps": 4, "seconds_per_step": 0.5, "label": "ts"})
    assert answer["kind"] == "task" and answer["status"] == "completed", answer
    assert answer["handleMs"] < 1000, answer  # the handle comes back long before the 2 s of work is done
    result = answer["result"]
    assert result["isError"] is False and result["structuredContent"] == {"label": "ts", "steps": 4, "seconds": 2.0}
    # the queue shows it like any other task, tagged as an MCP task
    view = _tool(gateway, "task_status", {"task_id": answer["taskId"]})
    assert view["task_type"] == "tool" and view["status"] == "completed" and view["tags"] == ["mcp"]
    assert view["metadata"]["mcp"]["tool"] == SLOW
    listed = _tool(gateway, "task_list", {"tag_filter": "mcp"})["tasks"]
    assert answer["taskId"] in {task["task_id"] for task in listed}


@pytest.mark.parametrize("tool", [SLOW, "testkit.slow_steps_here"])
def test_requester_cancels_a_running_task(stack: tuple[Proc, Proc], tool: str) -> None:
    """A P2P tool (run by the sidecar's worker) and a gateway tool (run through the bridge) alike."""
    gateway, _ = stack
    answer = _requester(gateway, "cancel", tool, {"steps": 40, "seconds_per_step": 0.5})
    assert answer["kind"] == "task" and answer["status"] == "cancelled", answer
    assert _tool(gateway, "task_status", {"task_id": answer["taskId"]})["status"] == "cancelled"
    status, body = _rpc(gateway, "tasks/get", {"taskId": answer["taskId"]})
    assert status == 200 and body["result"]["status"] == "cancelled"
    if tool != SLOW:  # the work stopped too: the worker's call into the gateway was cancelled there
        wait_for(lambda: 'gateway_inbound_calls_total{outcome="cancelled"}' in _metrics(gateway.extra["url"]), 10)


def test_clients_without_the_extension_get_plain_calls_or_32021(stack: tuple[Proc, Proc]) -> None:
    gateway, _ = stack
    plain = _requester(gateway, "plain", SLOW, {"steps": 1, "seconds_per_step": 0.1})
    assert plain["era"] == "modern" and plain["result"]["structuredContent"]["steps"] == 1, plain
    refused = _requester(gateway, "plain", "testkit.needs_task", {"text": "x"})
    error = refused["error"]
    assert error["code"] == -32021 and error["data"] == {"requiredCapabilities": {"extensions": {EXTENSION_ID: {}}}}
    # declared, the task-only tool runs as a task
    status, body = _rpc(gateway, "tools/call", {"name": "testkit.needs_task", "arguments": {"text": "x"}})
    assert status == 200 and body["result"]["resultType"] == "task", body
    done = _wait_task(gateway, body["result"]["taskId"])
    assert done["status"] == "completed" and done["result"]["structuredContent"] == {"text": "X"}
    # tasks/* without the extension, and quick tools even with it
    status, body = _rpc(gateway, "tasks/get", {"taskId": done["taskId"]}, declare=False)
    assert status == 400 and body["error"]["code"] == -32021
    status, body = _rpc(gateway, "tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    assert status == 200 and body["result"]["resultType"] == "complete" and not body["result"]["isError"]


def test_wire_details_of_tasks(stack: tuple[Proc, Proc]) -> None:
    gateway, _ = stack
    status, body = _rpc(gateway, "server/discover", {})
    assert body["result"]["capabilities"]["extensions"] == {EXTENSION_ID: {}}
    status, body = _rpc(gateway, "tools/list", {})
    support = {tool["name"]: tool["_meta"].get("io.github.mcp-p2p/taskSupport") for tool in body["result"]["tools"]}
    assert support[SLOW] == "optional" and support["testkit.needs_task"] == "required"
    assert support["p2p_remote_call_tool"] == "optional"
    assert support["echo"] is None and support["task_submit"] is None
    status, body = _rpc(gateway, "tasks/get", {"taskId": "0" * 32})
    assert status == 400 and body["error"]["code"] == -32602 and "not found" in body["error"]["message"]
    status, body = _rpc(gateway, "tools/call", {"name": SLOW, "arguments": {"steps": 1, "seconds_per_step": 0.1}})
    created = body["result"]
    assert created["resultType"] == "task" and created["status"] == "working" and created["ttlMs"] is None
    assert created["pollIntervalMs"] == 200 and created["createdAt"].endswith("Z")
    assert len(created["taskId"]) == 32  # the queue's random 128-bit id
    # tasks/update is acknowledged (nothing here ever waits for input)
    status, body = _rpc(gateway, "tasks/update", {"taskId": created["taskId"], "inputResponses": {}})
    assert status == 200 and body["result"]["resultType"] == "complete"
    done = _wait_task(gateway, created["taskId"])
    assert done["status"] == "completed" and done["lastUpdatedAt"] >= done["createdAt"]
    # a tool task submitted straight to the queue is an MCP task too
    submitted = _tool(
        gateway, "task_submit", {"task_type": "tool", "payload": {"tool": "echo", "arguments": {"message": "q"}}}
    )
    done = _wait_task(gateway, submitted["task_id"])
    assert done["status"] == "completed" and done["result"]["structuredContent"]["echo"] == "q"
    # a tool that fails in the task is a completed task with an isError result, as the blocking call would be
    submitted = _tool(
        gateway, "task_submit", {"task_type": "tool", "payload": {"tool": "echo", "arguments": {"message": 5}}}
    )
    done = _wait_task(gateway, submitted["task_id"])
    assert done["status"] == "completed" and done["result"]["isError"] is True, done
    # the handshake era never gets a task (the extension is 2026-07-28 only)
    with httpx.Client(timeout=30) as http:
        url = gateway.extra["url"] + "/mcp"
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        answer = http.post(
            url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, headers=headers
        )
        assert "extensions" not in answer.json()["result"]["capabilities"]
        headers["mcp-session-id"] = answer.headers["mcp-session-id"]
        call = {"name": SLOW, "arguments": {"steps": 1, "seconds_per_step": 0.1}}
        answer = http.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}, headers=headers
        )
        assert answer.json()["result"]["structuredContent"]["steps"] == 1


def test_a_task_outlives_kill_9_of_the_sidecar(tmp_path: Path) -> None:
    """Started through the requester, the sidecar SIGKILLed mid-run and restarted: the same task completes."""
    sidecar = _sidecar(tmp_path)
    gateway = _gateway(tmp_path, sidecar)
    ensure_installed()
    with running(sidecar, gateway):
        gateway.wait_healthy(30)
        requester = subprocess.Popen(
            [
                "node",
                str(REQUESTER),
                gateway.extra["url"] + "/mcp",
                "outlive",
                SLOW,
                '{"steps": 6, "seconds_per_step": 0.5}',
            ],
            cwd=JS_DIR,
            env=node_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert requester.stdout is not None and requester.stdin is not None
            task_id = requester.stdout.readline().split()[1]
            wait_for(lambda: _tool(gateway, "task_status", {"task_id": task_id})["status"] == "running", 10)
            sidecar.kill9()
            requester.stdin.write("go\n")  # the requester keeps polling through the outage
            requester.stdin.flush()
            status, body = _rpc(gateway, "tasks/get", {"taskId": task_id})
            assert status == 200 and body["result"]["status"] == "working", body  # kept in the queue, not lost
            sidecar.start()
            out, _ = requester.communicate(timeout=90)
        finally:
            if requester.poll() is None:
                requester.kill()
                requester.wait()
        answer = json.loads(out.strip().splitlines()[-1])
        assert answer["taskId"] == task_id and answer["status"] == "completed", answer
        assert answer["result"]["structuredContent"]["steps"] == 6
        assert _tool(gateway, "task_status", {"task_id": task_id})["attempt"] >= 2  # it ran again after the restart


def test_any_gateway_of_the_sidecar_answers_and_the_task_outlives_kill_9_of_the_gateway(tmp_path: Path) -> None:
    sidecar = _sidecar(tmp_path)
    first, second = _gateway(tmp_path, sidecar, "gateway-a"), _gateway(tmp_path, sidecar, "gateway-b")
    with running(sidecar, first, second):
        first.wait_healthy(30)
        second.wait_healthy(30)
        status, body = _rpc(first, "tools/call", {"name": SLOW, "arguments": {"steps": 6, "seconds_per_step": 0.5}})
        task_id = body["result"]["taskId"]
        status, body = _rpc(second, "tasks/get", {"taskId": task_id})
        assert status == 200 and body["result"]["status"] == "working"
        wait_for(lambda: _tool(second, "task_status", {"task_id": task_id})["status"] == "running", 10)
        first.kill9()
        done = _wait_task(second, task_id, timeout=90)
        assert done["status"] == "completed" and done["result"]["structuredContent"]["steps"] == 6, done


def _extension() -> QueueTasksExtension:
    async def no_queue(tool: str, arguments: dict[str, Any]) -> Any:
        raise AssertionError("not called")

    return QueueTasksExtension(
        ToolRegistry(), no_queue, to_result=result_to_mcp, error_result=_error_result, poll_interval=1, min_timeout=60
    )


def test_status_and_progress_mapping() -> None:
    """The queue's view -> the extension's Task, including progress reported by the worker on any peer."""
    task = _extension()._task
    base = {"task_id": "t1", "task_type": "tool", "created_at": 1_700_000_000.0, "metadata": {"mcp": {"tool": "x"}}}
    queued = task({**base, "status": "queued"}, detailed=True)
    assert queued["status"] == "working" and queued["statusMessage"] == "queued: waiting for a worker"
    progress = {"message": "step 3 of 5", "done": 3, "total": 5, "at": 1_700_000_010.0}
    running_ = task({**base, "status": "running", "started_at": 1_700_000_001.0, "progress": progress}, detailed=True)
    assert running_["status"] == "working" and running_["statusMessage"] == "step 3 of 5 (3 of 5)"
    assert running_["lastUpdatedAt"] == "2023-11-14T22:13:30.000Z"
    steps = task({**base, "status": "running", "progress": {"done": 2, "total": 7, "at": 1_700_000_002.0}})
    assert steps["statusMessage"] == "2 of 7"
    completed = task(
        {**base, "status": "completed", "result": {"answer": 42}, "finished_at": 1_700_000_020.0}, detailed=True
    )
    assert completed["status"] == "completed" and completed["result"]["structuredContent"] == {"answer": 42}
    tool_failed = {"status": "failed", "error": {"message": "gateway tool 'x': boom", "code": "tool_error"}}
    failed = task({**base, **tool_failed}, detailed=True)
    assert failed["status"] == "completed" and failed["result"]["isError"] is True
    assert failed["result"]["content"][0]["text"] == "tool_error: boom"
    unknown = task(
        {**base, "status": "failed", "error": {"message": "no such tool", "code": "unknown_tool"}}, detailed=True
    )
    assert unknown["status"] == "failed" and unknown["error"] == {"code": -32602, "message": "no such tool"}
    assert task({**base, "status": "cancelled"})["status"] == "cancelled"


@pytest.mark.parametrize("tool", [SLOW, "testkit.slow_steps_here"])
def test_a_tools_own_progress_is_the_tasks_status_message(stack: tuple[Proc, Proc], tool: str) -> None:
    """A P2P tool run by the sidecar's worker, and a gateway tool run through the bridge: what the tool reports
    reaches the queue's record at its owner and the extension's statusMessage while the task runs."""
    gateway, _ = stack
    status, body = _rpc(gateway, "tools/call", {"name": tool, "arguments": {"steps": 6, "seconds_per_step": 0.4}})
    assert status == 200 and body["result"]["resultType"] == "task", body
    task_id = body["result"]["taskId"]

    def reported() -> str | None:
        _, got = _rpc(gateway, "tasks/get", {"taskId": task_id})
        message = (got.get("result") or {}).get("statusMessage") or ""
        return message if "of 6" in message else None

    message = wait_for(reported, 20, 0.1, what="the tool's progress in tasks/get")
    assert "step" in message, message
    view = _tool(gateway, "task_status", {"task_id": task_id})
    assert view["progress"]["total"] == 6 and 0 <= view["progress"]["done"] <= 6, view
    assert _wait_task(gateway, task_id)["status"] == "completed"
