"""A mounted tool collection: its modules, each imported once, on first need, from any thread.

Both processes use it.  The gateway builds one over ``GATEWAY_TOOL_DIRS`` and
installed entry points and resolves modules when a listing or a call needs
them; the sidecar builds one over the P2P candidates of ``SIDECAR_TOOL_DIRS``
and resolves them all before it opens its bridge.  Resolution is blocking
(imports, schema building) and meant for a worker thread; a lock per module
makes concurrent callers share one import.

A module that fails to import resolves to a placeholder tool named
``<category>.<module>`` (or the entry point's tool name, or, when the schema
cache listed the module before, one under each name it listed) whose
description starts with ``[UNAVAILABLE: ...]`` and whose every call answers a
``tool_unavailable`` error with the reason; the traceback is logged once.  A
function whose signature cannot become a schema gets the same treatment under
its own name.  Neither is retried until the process restarts.

Which module provides a name is decided by ``providers``, from each module's
tools as imported or as cached, never from the order modules happened to be
imported in: a real tool beats a stand-in of the same name, and between two
real tools of one name the module first in scan order (sorted paths) wins; the
others are reported as clashes (in the log and in ``/health``).  So a listing
is the same after a cold start, a cached restart, or imports in any order.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared_schema.compat.cache import SchemaCache
from shared_schema.compat.flavour import Host, adapt_for_host
from shared_schema.compat.guard import acting_for
from shared_schema.compat.loader import ModuleLoadError, load
from shared_schema.compat.rules import Selection, select_functions, tool_metadata_for
from shared_schema.compat.scan import ModuleSource, ScanResult
from shared_schema.errors import BridgeError, ErrorCode
from shared_schema.function_tool import FunctionTool
from shared_schema.tool_metadata import ToolMetadata, ToolSpec

log = logging.getLogger(__name__)

UNAVAILABLE_PREFIX = "[UNAVAILABLE: "


def unavailable_tool(name: str, category: str, reason: str) -> FunctionTool:
    """A listed stand-in for a tool that cannot be loaded: every call says why."""

    async def unavailable(**_arguments: Any) -> Any:
        raise BridgeError(ErrorCode.TOOL_UNAVAILABLE, f"tool {name!r} is unavailable: {reason}")

    unavailable.__dict__["unavailable_reason"] = reason  # what is_unavailable looks for
    metadata = ToolMetadata(
        name=name, category=category, runtime="fastapi", mcp_description=f"{UNAVAILABLE_PREFIX}{reason}]"
    )
    return FunctionTool.from_function(unavailable, name=name, metadata=metadata)


def is_stand_in(tool: FunctionTool) -> bool:
    """Whether ``tool`` only stands in for one that could not be loaded (a real tool of its name wins)."""
    return getattr(tool.fn, "unavailable_reason", None) is not None


def _acting_for_tool(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` run as collection code (``guard.acting_for``): a package install it starts is refused or logged."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with acting_for(f"tool {name}"):
                return await fn(*args, **kwargs)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with acting_for(f"tool {name}"):
            return fn(*args, **kwargs)

    return run


def build_tool(name: str, fn: Callable[..., Any], source: ModuleSource, host: Host) -> FunctionTool:
    """A collection function as a tool: its metadata by the rules, its loop adapted to the host.

    Its arguments are judged leniently (``Signature``), as the server the collection was written for did.
    """
    try:
        metadata = tool_metadata_for(fn, tool_name=name, source=source)
        runnable = _acting_for_tool(adapt_for_host(fn, host, metadata.timeout_seconds), name)
        return FunctionTool.from_function(runnable, name=name, metadata=metadata, lenient=True)
    except Exception as exc:  # boundary: foreign signatures pydantic cannot turn into a schema
        reason = f"cannot derive its input schema from {source.label}: {type(exc).__name__}: {exc}"
        log.exception("tool %s is unavailable: %s", name, reason.splitlines()[0])
        return unavailable_tool(name, source.category, reason.splitlines()[0][:300])


@dataclass(frozen=True)
class Resolution:
    tools: tuple[FunctionTool, ...]
    error: ModuleLoadError | None = None
    complete: bool = True
    """False when the module or one of its functions could not be loaded (their stand-ins are listed instead)."""

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.tools)


def spec_is_stand_in(spec: ToolSpec) -> bool:
    return (spec.description or "").startswith(UNAVAILABLE_PREFIX)


class LazyModule:
    def __init__(
        self,
        source: ModuleSource,
        cached: tuple[ToolSpec, ...] | None,
        host: Host,
        selection: Selection = "original",
    ) -> None:
        self.source = source
        self.cached = cached
        self._host = host
        self._selection = selection
        self._lock = threading.Lock()
        self._resolution: Resolution | None = None

    @property
    def resolution(self) -> Resolution | None:
        return self._resolution

    def known_names(self) -> frozenset[str] | None:
        if self._resolution is not None:
            return self._resolution.names
        if self.cached is not None:
            return frozenset(spec.name for spec in self.cached)
        return None

    def known(self) -> list[tuple[ToolSpec, FunctionTool | None]]:
        """The module's tools as far as they are known: imported (spec and tool) or cached (spec only)."""
        if self._resolution is not None:
            return [(tool.spec, tool) for tool in self._resolution.tools]
        return [(spec, None) for spec in self.cached or ()]

    def resolve(self) -> Resolution:
        """Import the module and build its tools, once; later calls return the same result."""
        if self._resolution is None:
            with self._lock:
                if self._resolution is None:
                    self._resolution = self._load()
        return self._resolution

    def _load(self) -> Resolution:
        source = self.source
        started = time.perf_counter()
        try:
            loaded = load(source)
        except ModuleLoadError as exc:
            log.error("tool module %s failed to import: %s\n%s", source.label, exc.reason, exc.details.rstrip())
            reason = f"module {source.label} failed to import: {exc.reason}"
            # The names it was listed under (from the cache), or, never having been seen, the module's own.
            own = source.tool_name or (source.stem if source.bare_names else f"{source.category}.{source.stem}")
            names = [spec.name for spec in self.cached or ()] or [own]
            stand_ins = tuple(unavailable_tool(name, source.category, reason) for name in names)
            return Resolution(stand_ins, exc, complete=False)
        selected = select_functions(loaded, source, self._selection)
        tools = tuple(build_tool(name, fn, source, self._host) for name, fn in selected)
        complete = not any(spec_is_stand_in(tool.spec) for tool in tools)
        if not tools:
            log.info("tool module %s defines no tools", source.label)
        log.debug("loaded %s: %d tools in %.1f ms", source.label, len(tools), 1000 * (time.perf_counter() - started))
        return Resolution(tools, complete=complete)


@dataclass(frozen=True)
class Provider:
    """The module that provides one tool name, with the tool's spec, and the tool once the module is imported."""

    module: LazyModule
    spec: ToolSpec
    tool: FunctionTool | None
    stand_in: bool


@dataclass(frozen=True)
class Clash:
    """Two or more modules of a category providing different tools under one name; ``kept`` wins."""

    name: str
    kept: str
    ignored: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "kept": self.kept, "ignored": list(self.ignored)}


def choose_providers(modules: Iterable[LazyModule]) -> tuple[dict[str, Provider], list[Clash]]:
    """Who provides each name, from ``modules`` in scan order: a pure function of their known tools.

    A real tool beats a stand-in; between real tools the first module wins,
    and a different spec under the same name from a later module is a clash
    (the same function re-exported by a second module gives the same spec,
    and is not one).
    """
    chosen: dict[str, Provider] = {}
    ignored: dict[str, list[str]] = {}
    for module in modules:
        for spec, tool in module.known():
            stand_in = is_stand_in(tool) if tool is not None else spec_is_stand_in(spec)
            current = chosen.get(spec.name)
            if current is None or (current.stand_in and not stand_in):
                chosen[spec.name] = Provider(module, spec, tool, stand_in)
            elif not stand_in and current.module is not module and current.spec != spec:
                ignored.setdefault(spec.name, []).append(module.source.label)
    clashes = [Clash(name, chosen[name].module.source.label, tuple(labels)) for name, labels in sorted(ignored.items())]
    return chosen, clashes


class ToolCollection:
    def __init__(
        self,
        scan: ScanResult,
        *,
        host: Host,
        cache: SchemaCache | None = None,
        selection: Selection = "original",
    ) -> None:
        self.categories = dict(scan.categories)
        self._cache = cache
        self.selection = selection
        self.modules = [LazyModule(s, cache.lookup(s) if cache else None, host, selection) for s in scan.sources]
        self._by_category: dict[str, list[LazyModule]] = {}
        for module in self.modules:
            self._by_category.setdefault(module.source.category, []).append(module)
        self._bare = [module for module in self.modules if module.source.bare_names]
        """Modules of bare-named categories: a name without a dot may be any of theirs."""

    def modules_of(self, category: str) -> list[LazyModule]:
        return self._by_category.get(category, [])

    def unknown(self) -> list[LazyModule]:
        """Unimported modules whose tools are not known from the cache: a complete listing needs them."""
        return [m for m in self.modules if m.resolution is None and m.cached is None]

    def _pending(self, name: str) -> list[LazyModule]:
        """Unimported modules that may provide ``name`` (never one whose cached specs lack it)."""
        category, dot, _ = name.partition(".")
        pool = self._by_category.get(category, ()) if dot else self._bare
        pending = [m for m in pool if m.resolution is None]
        named = [m for m in pending if name in (m.known_names() or ()) or m.source.tool_name == name]
        return named or [m for m in pending if m.known_names() is None]

    def has_candidates(self, name: str) -> bool:
        """Whether a call to ``name`` must import something first (cheap: no I/O, for the event loop)."""
        return bool(self._pending(name))

    def candidates(self, name: str) -> list[LazyModule]:
        """The modules to try for ``name``, likeliest first: the stem is the name, is in it, or the file mentions it.

        Reads the candidates' source text (a function named unlike its file is found without importing its
        neighbours), so call it from a worker thread.
        """
        short = name.partition(".")[2] or name

        def mentions(module: LazyModule) -> bool:
            path = module.source.path
            try:
                return path is not None and short in path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                return False

        return sorted(
            self._pending(name),
            key=lambda m: (m.source.stem != short, m.source.stem not in short, not mentions(m)),
        )

    def resolve_name(self, name: str) -> list[LazyModule]:
        """Import candidates until one provides ``name``; returns the modules imported (blocking)."""
        done = []
        for module in self.candidates(name):
            done.append(module)
            if name in module.resolve().names:
                break
        self.save_cache(done)
        return done

    def resolve_all(self, modules: Iterable[LazyModule]) -> list[LazyModule]:
        """Import ``modules`` (blocking) and record the complete ones in the schema cache."""
        done = [module for module in modules if module.resolve() is not None]
        self.save_cache(done)
        return done

    def save_cache(self, modules: Iterable[LazyModule]) -> None:
        if self._cache is None:
            return
        resolved = []
        for module in modules:
            resolution = module.resolution
            if resolution is not None:
                resolved.append((module.source, [tool.spec for tool in resolution.tools]))
        if resolved:
            self._cache.store(resolved)

    def status(self) -> dict[str, int]:
        resolved = [m.resolution for m in self.modules if m.resolution is not None]
        return {
            "modules": len(self.modules),
            "imported": sum(1 for r in resolved if r.error is None),
            "failed": sum(1 for r in resolved if r.error is not None),
            "cached": sum(1 for m in self.modules if m.resolution is None and m.cached is not None),
        }
