"""The gateway's catalog: its own local tools plus the sidecar's announced P2P tools.

Local tools are plain functions (sync or async) whose input schema comes from
their signature.  P2P tools are known only by the ``ToolSpec`` the sidecar
announced; the gateway has no definition of its own for any of them.  The
merged listing is sorted by name so ``tools/list`` is deterministic, and it is
rebuilt only when something changes (``revision``).

A mounted tool collection (``mount``) adds lazy entries: its modules are
imported in a worker thread when a listing needs tools the schema cache does
not know (``prepare_listing``) or when a call names one of them
(``resolve``).  Until then the listing shows their cached specs.  Which module
provides each name is ``ToolCollection``'s pure rule (``choose_providers``),
so the listing does not depend on the order of imports; the gateway's own
tools keep their names against any collection tool.  A collection tool marked
for the P2P runtime that the connected sidecar does not announce is listed
with an ``[UNAVAILABLE: ...]`` description, since every call to it would fail.
``listing_revision`` moves only when what a client could have seen changes, so
importing a module whose cached specs were right does not send "tools
changed" to anybody.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from shared_schema import ToolSpec
from shared_schema.compat import ToolCollection
from shared_schema.compat.collection import UNAVAILABLE_PREFIX, Clash, Provider, choose_providers
from shared_schema.function_tool import FunctionTool

log = logging.getLogger(__name__)


LocalTool = FunctionTool
"""A function the gateway runs itself."""


@dataclass
class Route:
    """Where a call to one tool name goes: a local function, or the bridge."""

    spec: ToolSpec
    local: LocalTool | None = None
    screen: LocalTool | None = None
    """For a P2P collection tool this gateway imported too: its lenient signature screens the arguments."""

    @property
    def is_p2p(self) -> bool:
        return self.local is None


NOT_SERVED = (
    "runs on the P2P runtime, and the connected sidecar does not serve it (load its module there: SIDECAR_TOOL_DIRS)"
)


@dataclass
class ToolRegistry:
    _local: dict[str, LocalTool] = field(default_factory=dict)
    """The gateway's own tools (built-in and meta tools): they keep their names against any collection tool."""
    _remote: dict[str, ToolSpec] = field(default_factory=dict)
    _remote_seen: bool = False
    _listeners: list[Callable[[], None]] = field(default_factory=list)
    _specs_cache: tuple[int, tuple[ToolSpec, ...]] | None = None
    _collection: ToolCollection | None = None
    _providers_cache: tuple[int, dict[str, Provider], list[Clash]] | None = None
    _reported: set[str] = field(default_factory=set)
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
        first = not self._remote_seen
        self._remote_seen = True  # from now on, a P2P-marked collection tool the sidecar lacks is unavailable
        if remote == self._remote:
            if first:
                self._changed()
            return first
        self._remote = remote
        shadowed = sorted(name for name in remote if self.local_tool(name) is not None)
        if shadowed:
            log.warning("sidecar tools shadowed by local tools of the same name: %s", ", ".join(shadowed))
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

    def _providers(self) -> dict[str, Provider]:
        """Who provides each collection name, recomputed only after an import (see ``choose_providers``)."""
        collection = self._collection
        if collection is None:
            return {}
        cached = self._providers_cache
        if cached is not None and cached[0] == self.revision:
            return cached[1]
        providers, clashes = choose_providers(collection.modules)
        for clash in clashes:
            if clash.name not in self._reported:
                self._reported.add(clash.name)
                log.warning(
                    "tool name %s clashes: %s provides it, %s ignored", clash.name, clash.kept, ", ".join(clash.ignored)
                )
        for name in providers.keys() & self._local.keys():
            if name not in self._reported:
                self._reported.add(name)
                log.warning("collection tool %s ignored: the gateway has a tool of that name", name)
        self._providers_cache = (self.revision, providers, clashes)
        return providers

    def clashes(self) -> list[Clash]:
        self._providers()
        return self._providers_cache[2] if self._providers_cache is not None else []

    def _provider(self, name: str) -> Provider | None:
        return None if name in self._local else self._providers().get(name)

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
                    self._imported()

    async def prepare_category(self, category: str) -> None:
        """Like ``prepare_listing``, for one category's modules only."""
        collection = self._collection
        if collection is None:
            return
        pending = [m for m in collection.modules_of(category) if m.resolution is None and m.cached is None]
        if pending:
            await anyio.to_thread.run_sync(collection.resolve_all, pending)
            self._imported()

    async def resolve(self, name: str) -> None:
        """Import what a call to ``name`` needs: the module providing it, or those that may (each at most once)."""
        collection = self._collection
        if collection is None or name in self._local:
            return
        for _ in range(len(collection.modules) + 1):  # each round imports at least one module, or stops
            provider = self._providers().get(name)
            if provider is not None and provider.module.resolution is None:
                await anyio.to_thread.run_sync(collection.resolve_all, [provider.module])
            elif (provider is None or provider.stand_in) and collection.has_candidates(name):
                await anyio.to_thread.run_sync(collection.resolve_name, name)
            else:
                return
            self._imported()

    def _imported(self) -> None:
        """Modules were imported (on the event loop thread, where listeners live): recompute, tell if it shows."""
        shown = self._specs_cache  # the latest listing computed, whatever its revision: what clients last saw
        self._changed(visible=False)
        if shown is not None and self.specs() != shown[1]:
            self.listing_revision += 1
            for listener in self._listeners:
                listener()

    def category_names(self) -> list[str]:
        """Every category, including a mounted collection's not yet imported ones."""
        names = set(self.categories())
        if self._collection is not None:
            names.update(self._collection.categories)
        return sorted(names)

    def category_description(self, category: str) -> str:
        return self._collection.categories.get(category, "") if self._collection is not None else ""

    def collection_status(self) -> dict[str, Any] | None:
        if self._collection is None:
            return None
        status: dict[str, Any] = dict(self._collection.status())
        providers = self._providers()
        status["tools"] = sum(1 for name in providers if name not in self._local)
        status["unavailable"] = sum(1 for name, p in providers.items() if p.stand_in and name not in self._local)
        status["clashes"] = [clash.to_wire() for clash in self.clashes()]
        return status

    # -- reading ----------------------------------------------------------
    def _collection_tool(self, provider: Provider) -> LocalTool | None:
        """The provider's tool when this gateway runs it: imported, not P2P, and no sidecar tool replaces a stand-in."""
        tool = provider.tool
        if tool is None or tool.metadata.runs_on_p2p or (provider.stand_in and tool.name in self._remote):
            return None
        return tool

    def route(self, name: str) -> Route | None:
        """Local non-P2P tools run here; everything else the sidecar announced goes over the bridge."""
        local = self._local.get(name)
        if local is not None and not local.metadata.runs_on_p2p:
            return Route(local.spec, local)
        provider = self._provider(name)
        tool = self._collection_tool(provider) if provider is not None else None
        if tool is not None:
            return Route(tool.spec, tool)
        screen = provider.tool if provider is not None and not provider.stand_in else None
        remote = self._remote.get(name)
        if remote is not None:
            return Route(remote, screen=screen if local is None else None)
        if local is not None:
            return Route(local.spec)
        if provider is not None:  # marked for P2P (or not imported yet), and no sidecar has announced it
            return Route(provider.spec, screen=screen)
        return None

    def announced(self, name: str) -> bool:
        """Whether the sidecar's catalog has ``name``."""
        return name in self._remote

    def local_tool(self, name: str) -> LocalTool | None:
        tool = self._local.get(name)
        if tool is not None:
            return None if tool.metadata.runs_on_p2p else tool
        provider = self._provider(name)
        return self._collection_tool(provider) if provider is not None else None

    def collection_function(self, name: str) -> LocalTool | None:
        """The gateway's own import of a collection tool, P2P-marked ones included (their signatures screen calls)."""
        provider = self._provider(name)
        return provider.tool if provider is not None and not provider.stand_in else None

    def specs(self) -> tuple[ToolSpec, ...]:
        """Every tool, each name once, sorted by name (see the module docstring for who wins a name)."""
        cache = self._specs_cache
        if cache is not None and cache[0] == self.revision:
            return cache[1]
        merged: dict[str, ToolSpec] = dict(self._remote)
        for tool in self._local.values():
            if not tool.metadata.runs_on_p2p or tool.name not in merged:
                merged[tool.name] = tool.spec
        for name, provider in self._providers().items():
            if name in self._local:
                continue
            spec = provider.spec
            if name in self._remote and (spec.metadata.runs_on_p2p or provider.stand_in):
                continue  # the sidecar's own spec of the tool it serves
            if spec.metadata.runs_on_p2p and self._remote_seen and not provider.stand_in:
                spec = spec.model_copy(update={"description": f"{UNAVAILABLE_PREFIX}{NOT_SERVED}] {spec.description}"})
            merged[name] = spec
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
