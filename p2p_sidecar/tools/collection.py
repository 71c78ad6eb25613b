"""Serve the P2P-marked tools of a tool collection from this sidecar.

The gateway lists a collection and forwards calls to its P2P-marked tools
(``@tool_metadata(runtime="trio")``, ``_mcp_runtime = "trio"``, the seed's
name rules) over the bridge; this loads the same modules from
``SIDECAR_TOOL_DIRS`` (and installed ``mcp_p2p.tools`` entry points) so the
sidecar announces and runs them.

Only modules whose text could hold a P2P tool are considered (see
``shared_schema.compat.rules.may_hold_p2p_tools``); of those, only the tools
the rules mark for the P2P runtime join the catalog, chosen by the same rule
as the gateway's (``choose_providers``), so both sides agree on every name.
Modules the schema cache (``SIDECAR_TOOL_CACHE_DIR``, default
``SIDECAR_DATA_DIR``) knows are announced from it and imported when one of
their tools is first called; the others are imported before the bridge
opens, so a gateway never sees a catalog without them.  Sync tools run in a
worker thread; ``async def`` tools written for asyncio run in a worker thread
on their own asyncio loop per call (``shared_schema.compat.flavour``); Trio and
anyio ones run on the sidecar's loop.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import trio

from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.tools.catalog import ToolCatalog
from shared_schema.compat import (
    SchemaCache,
    ToolCollection,
    entry_point_sources,
    is_stand_in,
    may_hold_p2p_tools,
    scan_tool_dirs,
)
from shared_schema.compat.collection import LazyModule, choose_providers
from shared_schema.compat.guard import disable_auto_installers
from shared_schema.errors import BridgeError, ErrorCode
from shared_schema.function_tool import FunctionTool
from shared_schema.progress import Sink
from shared_schema.signature import Signature
from shared_schema.tool_metadata import ToolSpec

log = logging.getLogger(__name__)


def _not_imported(**_arguments: Any) -> Any:  # the stand-in function of a tool known from the cache
    raise AssertionError("a cached tool is called through its module")


@dataclass(frozen=True, eq=False)
class CachedTool(FunctionTool):
    """A P2P tool announced from the schema cache: its module is imported on its first call."""

    module: LazyModule | None = None
    collection: ToolCollection | None = None

    @classmethod
    def from_spec(cls, spec: ToolSpec, module: LazyModule, collection: ToolCollection) -> CachedTool:
        signature = Signature(_not_imported, name=spec.name)
        return cls(_not_imported, spec, signature, False, module=module, collection=collection)

    def _imported(self) -> FunctionTool:
        assert self.module is not None and self.collection is not None
        resolution = self.module.resolve()
        self.collection.save_cache([self.module])
        for tool in resolution.tools:
            if tool.name == self.name and tool.metadata.runs_on_p2p and not is_stand_in(tool):
                return tool
        reason = resolution.error.reason if resolution.error is not None else "it no longer provides this P2P tool"
        raise BridgeError(
            ErrorCode.TOOL_UNAVAILABLE, f"tool {self.name!r} is unavailable: {self.module.source.label}: {reason}"
        )

    async def invoke(self, arguments: dict[str, Any], timeout: float | None, progress: Sink | None = None) -> Any:
        assert self.module is not None
        if self.module.resolution is None:
            with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
                tool = await anyio.to_thread.run_sync(self._imported, abandon_on_cancel=True)
        else:
            tool = self._imported()
        return await tool.invoke(arguments, timeout, progress)


def _load(settings: SidecarSettings) -> tuple[list[FunctionTool], dict[str, int]]:
    scan = scan_tool_dirs(settings.tool_dirs)
    if settings.tool_entry_points:
        entry_point_sources(scan)
    total = len(scan.sources)
    scan.sources = [source for source in scan.sources if may_hold_p2p_tools(source)]
    if not scan.sources:
        return [], {"modules": total, "imported": 0, "failed": 0, "cached": 0}
    disable_auto_installers(allow=settings.tool_allow_installs, setting="SIDECAR_TOOL_ALLOW_INSTALLS")
    cache = None
    if settings.tool_cache_dir != "off":
        cache = SchemaCache(Path(settings.tool_cache_dir) if settings.tool_cache_dir else settings.data_dir)
    collection = ToolCollection(scan, host="trio", cache=cache, selection=settings.tool_selection)
    collection.resolve_all(collection.unknown())
    providers, clashes = choose_providers(collection.modules)
    for clash in clashes:
        log.warning(
            "tool name %s clashes: %s provides it, %s ignored", clash.name, clash.kept, ", ".join(clash.ignored)
        )
    tools: list[FunctionTool] = []
    for provider in providers.values():
        if provider.stand_in or not provider.spec.metadata.runs_on_p2p:
            continue
        if provider.tool is not None:
            tools.append(provider.tool)
        else:
            tools.append(CachedTool.from_spec(provider.spec, provider.module, collection))
    status = collection.status()
    counts = {"modules": total, "imported": status["imported"], "failed": status["failed"], "cached": status["cached"]}
    return sorted(tools, key=lambda tool: tool.name), counts


async def load_tool_collection(catalog: ToolCatalog, settings: SidecarSettings) -> None:
    """Read the cache, import the modules it does not know in a worker thread, and add the P2P tools to ``catalog``."""
    if not settings.tool_dirs and not settings.tool_entry_points:
        return
    started = time.perf_counter()
    tools, counts = await trio.to_thread.run_sync(_load, settings)
    if not tools and not counts["modules"]:
        return
    taken = catalog.add_tools(tools)
    if taken:
        log.warning("collection tools ignored, their names are taken: %s", ", ".join(taken))
    log.info(
        "tool collection: %d P2P tools from %d of %d modules (%d imported, %d failed, %d from the cache) in %.0f ms",
        len(tools) - len(taken),
        counts["imported"] + counts["failed"] + counts["cached"],
        counts["modules"],
        counts["imported"],
        counts["failed"],
        counts["cached"],
        1000 * (time.perf_counter() - started),
    )
