"""A slow P2P tool that reports its progress: what a task-augmented MCP call is for."""

from __future__ import annotations

import time
from typing import Any

import anyio

from shared_schema import report_progress, tool_metadata


@tool_metadata(runtime="trio", requires_p2p=True, timeout_seconds=300, task_support="optional")
def slow_steps(steps: int = 3, seconds_per_step: float = 0.5, label: str = "work") -> dict[str, Any]:
    """Works through ``steps`` steps of ``seconds_per_step`` each, reporting each one; returns what it did."""
    for step in range(steps):
        report_progress(step, steps, f"{label}: step {step + 1} of {steps}")
        time.sleep(seconds_per_step)
    report_progress(steps, steps, f"{label}: done")
    return {"label": label, "steps": steps, "seconds": steps * seconds_per_step}


@tool_metadata(runtime="fastapi", timeout_seconds=300, task_support="optional")
async def slow_steps_here(steps: int = 3, seconds_per_step: float = 0.5) -> dict[str, Any]:
    """``slow_steps`` as an async gateway tool: a cancelled task stops it at once."""
    for step in range(steps):
        report_progress(step, steps, f"step {step + 1} of {steps}")
        await anyio.sleep(seconds_per_step)
    return {"steps": steps, "seconds": steps * seconds_per_step}
