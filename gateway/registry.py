"""The gateway's catalog: its own local tools plus the sidecar's announced P2P tools.

Local tools are plain functions (sync or async) whose input schema comes from
their signature.  P2P tools are known only by the ``ToolSpec`` the sidecar
announced; the gateway has no definition of its own for any of them.  The
merged listing is sorted by name so ``tools/list`` is deterministic, and it is
rebuilt only when something changes (``revision``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared_schema import ToolSpec
from shared_schema.function_tool import FunctionTool

log = logging.getLogger(__name__)


LocalTool = FunctionTool
"""A function the gateway runs itself."""


@dataclass
class Route:
    """Where a call to one tool name goes: a local function, or the bridge."""

    spec: ToolSpec
    local: LocalTool | None = None

    @property
    def is_p2p(self) -> bool:
        return self.local is None


@dataclass
class ToolRegistry:
    _local: dict[str, LocalTool] = field(default_factory=dict)
    _remote: dict[str, ToolSpec] = field(default_factory=dict)
    _listeners: list[Callable[[], None]] = field(default_factory=list)
    _specs_cache: tuple[int, tuple[ToolSpec, ...]] | None = None
    revision: int = 0

    # -- building ---------------------------------------------------------
    def add(self, tool: LocalTool) -> LocalTool:
        if tool.name in self._local:
            raise ValueError(f"a local tool named {tool.name!r} is already registered")
        self._local[tool.name] = tool
        self._changed()
        return tool

    def add_function(self, fn: Callable[..., Any], **kwargs: Any) -> LocalTool:
        return self.add(LocalTool.from_function(fn, **kwargs))

    def replace_remote(self, specs: Iterable[ToolSpec]) -> bool:
        """Install the sidecar's catalog; returns whether the listing changed."""
        remote = {spec.name: spec for spec in specs}
        if remote == self._remote:
            return False
        shadowed = sorted(name for name in remote if name in self._local and not self._local[name].metadata.runs_on_p2p)
        if shadowed:
            log.warning("sidecar tools shadowed by local tools of the same name: %s", ", ".join(shadowed))
        self._remote = remote
        self._changed()
        return True

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.revision += 1
        for listener in self._listeners:
            listener()

    # -- reading ----------------------------------------------------------
    def route(self, name: str) -> Route | None:
        """Local non-P2P tools run here; everything else the sidecar announced goes over the bridge."""
        local = self._local.get(name)
        if local is not None and not local.metadata.runs_on_p2p:
            return Route(local.spec, local)
        remote = self._remote.get(name)
        if remote is not None:
            return Route(remote)
        if local is not None:  # marked for P2P, but no sidecar has announced it (yet)
            return Route(local.spec)
        return None

    def local_tool(self, name: str) -> LocalTool | None:
        tool = self._local.get(name)
        return tool if tool is not None and not tool.metadata.runs_on_p2p else None

    def specs(self) -> tuple[ToolSpec, ...]:
        """Every tool, each name once (local wins a clash), sorted by name."""
        cache = self._specs_cache
        if cache is not None and cache[0] == self.revision:
            return cache[1]
        merged: dict[str, ToolSpec] = dict(self._remote)
        for name, tool in self._local.items():
            if not tool.metadata.runs_on_p2p or name not in merged:
                merged[name] = tool.spec
        specs = tuple(merged[name] for name in sorted(merged))
        self._specs_cache = (self.revision, specs)
        return specs

    def categories(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for spec in self.specs():
            grouped.setdefault(spec.metadata.category, []).append(spec.name)
        return dict(sorted(grouped.items()))

    def __len__(self) -> int:
        return len(self.specs())
