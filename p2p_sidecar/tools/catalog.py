"""The sidecar's own tool catalog: what it serves, and the revision gateways track.

Subsystems (service status, peers, task queue, workflows) each register their
tools here at start-up; every change bumps ``revision`` and notifies the bridge
server, which pushes the new catalog to every connected gateway.  Adding a P2P
tool therefore never touches the gateway.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from shared_schema import BridgeError, ErrorCode, ToolMetadata, ToolSpec
from shared_schema.function_tool import FunctionTool, metadata_of
from shared_schema.progress import Sink


class ToolCatalog:
    def __init__(self) -> None:
        self._tools: dict[str, FunctionTool] = {}
        self._listeners: list[Callable[[], None]] = []
        self._boot = os.urandom(4).hex()
        self._counter = 0

    @property
    def revision(self) -> str:
        """Changes whenever the catalog does, and across restarts (a new boot id)."""
        return f"{self._boot}.{self._counter}"

    def add(
        self,
        fn: Callable[..., Any],
        *,
        category: str,
        name: str | None = None,
        timeout_seconds: float | None = None,
        annotations: dict[str, Any] | None = None,
        metadata: ToolMetadata | None = None,
    ) -> FunctionTool:
        """Register one P2P tool; its metadata always says it runs on the P2P runtime."""
        overrides: dict[str, Any] = {"runtime": "trio", "requires_p2p": True, "category": category}
        if timeout_seconds is not None:
            overrides["timeout_seconds"] = timeout_seconds
        base = metadata or metadata_of(fn)
        tool = FunctionTool.from_function(
            fn, name=name, metadata=base.model_copy(update=overrides), annotations=annotations
        )
        if tool.name in self._tools:
            raise ValueError(f"a P2P tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        self._changed()
        return tool

    def add_tools(self, tools: Iterable[FunctionTool]) -> list[str]:
        """Register ready-made P2P tools (a mounted collection's) with one change; returns names skipped as taken."""
        taken = []
        added = False
        for tool in tools:
            if not tool.metadata.runs_on_p2p:
                raise ValueError(f"{tool.name!r} is not marked for the P2P runtime")
            if tool.name in self._tools:
                taken.append(tool.name)
                continue
            self._tools[tool.name] = tool
            added = True
        if added:
            self._changed()
        return taken

    def get(self, name: str) -> FunctionTool | None:
        return self._tools.get(name)

    def specs(self) -> list[ToolSpec]:
        return [self._tools[name].spec for name in sorted(self._tools)]

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._counter += 1
        for listener in self._listeners:
            listener()

    def __len__(self) -> int:
        return len(self._tools)


class CatalogTools:
    """The catalog as a ``tool`` task sees it (``taskqueue.executors.LocalTools``): this sidecar's own tools."""

    def __init__(self, catalog: ToolCatalog) -> None:
        self._catalog = catalog

    def has(self, name: str) -> bool:
        return self._catalog.get(name) is not None

    async def call(self, name: str, arguments: dict[str, Any], *, timeout: float, progress: Sink | None = None) -> Any:
        """Run one of this sidecar's tools; ``progress`` receives what it reports (``report_progress``)."""
        tool = self._catalog.get(name)
        if tool is None:
            raise BridgeError(ErrorCode.UNKNOWN_TOOL, f"unknown P2P tool: {name}")
        return await tool.invoke(arguments, timeout, progress)
