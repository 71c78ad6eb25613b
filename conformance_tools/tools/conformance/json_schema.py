"""The conformance suite's JSON Schema 2020-12 tool: its input schema keeps ``$schema``, ``$defs`` and the rest."""

from __future__ import annotations

import os
from typing import Any

from shared_schema import tool_metadata

RUNTIME = os.environ.get("CONFORMANCE_TOOLS_RUNTIME", "fastapi")


@tool_metadata(
    runtime=RUNTIME,
    mcp_description="Tool with JSON Schema 2020-12 features",
    mcp_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
        },
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    },
)
def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None) -> dict[str, Any]:
    """Echoes what it was given; its input schema carries 2020-12 keywords verbatim."""
    return {"content": [{"type": "text", "text": f"name={name!r} address={address!r}"}]}
