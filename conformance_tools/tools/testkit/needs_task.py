"""A tool that only runs as a task (MCP Tasks): a client must take a task handle for it."""

from __future__ import annotations

from typing import Any

from shared_schema import tool_metadata


@tool_metadata(runtime="fastapi", task_support="required", timeout_seconds=120)
def needs_task(text: str = "hello") -> dict[str, Any]:
    """Upper-cases ``text``; declared task-only, so a client must take a task handle for it."""
    return {"text": text.upper()}
