"""What the tests read from an MCP SDK result."""

from __future__ import annotations

from mcp.types import CallToolResult, TextContent


def first_text(result: CallToolResult) -> str:
    """The text of a result's first content block, which the tests expect to be text."""
    block = result.content[0]
    assert isinstance(block, TextContent), block
    return block.text
