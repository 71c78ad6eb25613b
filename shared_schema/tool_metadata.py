"""Tool metadata (the seed's ``ToolMetadata``) and the catalog entry built from it.

The field names and defaults are the ones the existing tool collections
already use in their ``@tool_metadata(...)`` decorators, so those modules load
unchanged.  A catalog entry (``ToolSpec``) is what the sidecar announces over
the bridge and what ``tools/list`` shows: name, description, input schema,
metadata and MCP annotations.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Runtime = Literal["fastapi", "trio", "auto"]
TaskSupport = Literal["forbidden", "optional", "required"]
P2P_RUNTIME: Runtime = "trio"

METADATA_ATTRIBUTE = "_mcp_metadata"
"""Where ``@tool_metadata`` leaves its ``ToolMetadata`` on the function."""
RUNTIME_ATTRIBUTE = "_mcp_runtime"
"""The older convention: ``fn._mcp_runtime = "trio"`` marks a P2P tool."""


class ToolMetadata(BaseModel):
    """How a tool wants to be run.  ``runtime="trio"`` or ``requires_p2p`` means: in the sidecar."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str | None = None
    runtime: Runtime = "auto"
    requires_p2p: bool = False
    category: str = "general"
    priority: int = 5
    timeout_seconds: float = Field(default=30.0, gt=0)
    retry_policy: str = "none"
    memory_intensive: bool = False
    cpu_intensive: bool = False
    io_intensive: bool = False
    mcp_schema: dict[str, Any] | None = None
    mcp_description: str | None = None
    cache_ttl: float | None = None
    schema_version: str = "1.0"
    deprecated: bool = False
    deprecation_message: str | None = None
    task_support: TaskSupport | None = None
    """Whether an MCP client may (``optional``) or must (``required``) run a call as a durable task
    (the MCP Tasks extension); unset, the gateway decides from the tool's timeout and runtime."""

    @property
    def runs_on_p2p(self) -> bool:
        return self.runtime == P2P_RUNTIME or self.requires_p2p


_F = TypeVar("_F", bound=Callable[..., Any])


def tool_metadata(**fields: Any) -> Callable[[_F], _F]:
    """Decorator used by tool modules: ``@tool_metadata(runtime="trio", requires_p2p=True)``.

    It only records the metadata on the function; registries read it when
    they load the function, so decorating never registers anything by itself.
    """
    metadata = ToolMetadata(**fields)

    def attach(fn: _F) -> _F:
        setattr(fn, METADATA_ATTRIBUTE, metadata)
        if metadata.runs_on_p2p:
            setattr(fn, RUNTIME_ATTRIBUTE, P2P_RUNTIME)
        return fn

    return attach


class ToolSpec(BaseModel):
    """One entry of a catalog: everything a client needs to call the tool."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    input_schema: dict[str, Any]
    metadata: ToolMetadata = ToolMetadata()
    annotations: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_wire(cls, raw: Any) -> ToolSpec:
        """Validate a catalog entry received from the other side (raises pydantic's ValidationError)."""
        return cls.model_validate(raw)
