"""A tool that misbehaves on purpose: its result is something JSON cannot carry."""

from __future__ import annotations

from typing import Any

from shared_schema import tool_metadata


@tool_metadata(runtime="fastapi")
def not_json(kind: str = "loop") -> Any:
    """Returns a result JSON cannot carry: ``loop`` (a list that contains itself) or ``object`` (a plain object)."""
    if kind == "loop":
        looped: list[Any] = []
        looped.append(looped)
        return {"looped": looped}
    return {"value": object()}
