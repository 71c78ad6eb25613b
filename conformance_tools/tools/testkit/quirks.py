"""Tools that misbehave on purpose, and one that only runs as a task."""

from __future__ import annotations

from typing import Any

from shared_schema import tool_metadata


@tool_metadata(runtime="fastapi")
def not_json(kind: str = "nan") -> Any:
    """Returns a result JSON cannot carry: ``nan`` (a float NaN) or ``loop`` (a list that contains itself)."""
    if kind == "loop":
        looped: list[Any] = []
        looped.append(looped)
        return {"looped": looped}
    return {"value": float("nan")}


@tool_metadata(runtime="fastapi", task_support="required", timeout_seconds=120)
def needs_task(text: str = "hello") -> dict[str, Any]:
    """Upper-cases ``text``; declared task-only, so a client must take a task handle for it."""
    return {"text": text.upper()}
