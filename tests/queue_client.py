"""Calling the task-queue and workflow tools of a real gateway through its REST face (end-to-end tests)."""

from __future__ import annotations

import time
from typing import Any

from tests.procs import http_json


def call(url: str, tool: str, /, **arguments: Any) -> Any:
    """Run a tool and return its result; any failure fails the test with the error body."""
    status, body = http_json("POST", f"{url}/tools/execute/{tool}", arguments, timeout=120)
    assert status == 200, (tool, arguments, status, body)
    return body["result"]


def refused(url: str, tool: str, /, **arguments: Any) -> tuple[int, dict[str, Any]]:
    """Run a tool that must fail; return (HTTP status, error object)."""
    status, body = http_json("POST", f"{url}/tools/execute/{tool}", arguments, timeout=120)
    assert status != 200, (tool, arguments, body)
    return status, body["error"]


def wait_done(url: str, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """task_wait until the task ends (task_wait itself returns early at most once per bridge deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        view = call(url, "task_wait", task_id=task_id, timeout_s=max(0.1, deadline - time.monotonic()))
        if view["done"] or time.monotonic() >= deadline:
            return view


def wait_status(url: str, task_id: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = call(url, "task_status", task_id=task_id)
        if view["status"] == status:
            return view
        assert time.monotonic() < deadline, f"task {task_id} never reached {status}: {view}"
        time.sleep(0.05)
