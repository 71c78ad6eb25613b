"""The gateway's catalog: its own local tools plus the sidecar's announced P2P tools.

Local tools are plain functions (sync or async) whose input schema comes from
their signature.  P2P tools are known only by the ``ToolSpec`` the sidecar
announced; the gateway has no definition of its own for any of them.  The
merged listing is sorted by name so ``tools/list`` is deterministic, and it is
rebuilt only when something changes (``revision``).

A mounted tool collection (``mount``) adds lazy entries: its modules are
imported in a worker thread when a listing needs tools the schema cache does
not know (``prepare_listing``) or when a call names one of them
(``resolve``), and their tools then join the local ones.  Until then the
listing shows their cached specs.  ``listing_revision`` moves only when what a
client could have seen changes, so importing a module whose cached specs were
right does not send "tools changed" to anybody.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from shared_schema import ToolSpec
from shared_schema.compat import LazyModule, ToolCollection, is_stand_in
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
    _collection: ToolCollection | None = None
    _installed: set[int] = field(default_factory=set)
    _listing_lock: anyio.Lock | None = None
    revision: int = 0
    listing_revision: int = 0

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
        shadowed = sorted(name for name in remote if name in self._local and self.local_tool(name) is not None)
        if shadowed:
            log.warning("sidecar tools shadowed by local tools of the same name: %s", ", ".join(shadowed))
        self._remote = remote
        self._changed()
        return True

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self, *, visible: bool = True) -> None:
        self.revision += 1
        if visible:
            self.listing_revision += 1
        for listener in self._listeners:
            listener()

    # -- a mounted tool collection (lazy entries) ------------------------
    def mount(self, collection: ToolCollection) -> None:
        """Add a collection's modules; nothing is imported here."""
        self._collection = collection
        self._changed()

    async def prepare_listing(self) -> None:
        """Import the modules whose tools the listing cannot show yet (no cached specs), once."""
        collection = self._collection
        if collection is None:
            return
        if collection.unknown():
            if self._listing_lock is None:
                self._listing_lock = anyio.Lock()
            async with self._listing_lock:
                pending = collection.unknown()
                if pending:
                    await anyio.to_thread.run_sync(collection.resolve_all, pending)
        self._install(collection.modules)

    async def prepare_category(self, category: str) -> None:
        """Like ``prepare_listing``, for one category's modules only."""
        collection = self._collection
        if collection is None:
            return
        pending = [m for m in collection.modules_of(category) if m.resolution is None and m.cached is None]
        if pending:
            await anyio.to_thread.run_sync(collection.resolve_all, pending)
        self._install(collection.modules_of(category))

    async def resolve(self, name: str) -> None:
        """Make sure tool ``name`` is loaded if a collection module provides it (imports at most once)."""
        collection = self._collection
        if collection is None or name in self._local:
            return
        if collection.has_candidates(name):
            self._install(await anyio.to_thread.run_sync(collection.resolve_name, name))
        self._install(collection.modules_of(name.partition(".")[0]))

    def _install(self, modules: Iterable[LazyModule]) -> None:
        """Add the tools of newly imported modules (on the event loop thread, where listeners live)."""
        changed = visible = False
        for module in modules:
            resolution = module.resolution
            if resolution is None or id(module) in self._installed:
                continue
            self._installed.add(id(module))
            changed = True
            for tool in resolution.tools:
                if tool.name in self._local:
                    log.warning("tool %s from %s ignored: that name is taken", tool.name, module.source.label)
                    continue
                self._local[tool.name] = tool
            if module.cached is not None and not visible:
                visible = [s.to_wire() for s in module.cached] != [t.spec.to_wire() for t in resolution.tools]
        if changed:
            self._changed(visible=visible)

    def category_names(self) -> list[str]:
        """Every category, including a mounted collection's not yet imported ones."""
        names = set(self.categories())
        if self._collection is not None:
            names.update(self._collection.categories)
        return sorted(names)

    def category_description(self, category: str) -> str:
        return self._collection.categories.get(category, "") if self._collection is not None else ""

    def collection_status(self) -> dict[str, int] | None:
        return self._collection.status() if self._collection is not None else None

    # -- reading ----------------------------------------------------------
    def route(self, name: str) -> Route | None:
        """Local non-P2P tools run here; everything else the sidecar announced goes over the bridge."""
        local = self._local.get(name)
        if local is not None and not local.metadata.runs_on_p2p and not (is_stand_in(local) and name in self._remote):
            return Route(local.spec, local)
        remote = self._remote.get(name)
        if remote is not None:
            return Route(remote)
        if local is not None:  # marked for P2P, but no sidecar has announced it (yet)
            return Route(local.spec)
        return None

    def announced(self, name: str) -> bool:
        """Whether the sidecar's catalog has ``name``."""
        return name in self._remote

    def local_tool(self, name: str) -> LocalTool | None:
        tool = self._local.get(name)
        if tool is None or tool.metadata.runs_on_p2p or (is_stand_in(tool) and name in self._remote):
            return None
        return tool

    def specs(self) -> tuple[ToolSpec, ...]:
        """Every tool, each name once (local wins a clash), sorted by name."""
        cache = self._specs_cache
        if cache is not None and cache[0] == self.revision:
            return cache[1]
        merged: dict[str, ToolSpec] = dict(self._remote)
        # (spec, whether it yields to a sidecar tool of the same name): P2P-marked tools and stand-ins do
        local = [(tool.spec, tool.metadata.runs_on_p2p or is_stand_in(tool)) for tool in self._local.values()]
        if self._collection is not None:  # not imported yet: shown from the schema cache
            for module in self._collection.modules:
                if id(module) not in self._installed and module.cached is not None:
                    cached = (spec for spec in module.cached if spec.name not in self._local)
                    local.extend((spec, spec.metadata.runs_on_p2p) for spec in cached)
        for spec, yields in local:
            if not yields or spec.name not in merged:
                merged[spec.name] = spec
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
