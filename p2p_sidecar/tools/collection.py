"""Serve the P2P-marked tools of a tool collection from this sidecar.

The gateway lists a collection and forwards calls to its P2P-marked tools
(``@tool_metadata(runtime="trio")``, ``_mcp_runtime = "trio"``, the seed's
name rules) over the bridge; this loads the same modules from
``SIDECAR_TOOL_DIRS`` (and installed ``mcp_p2p.tools`` entry points) so the
sidecar announces and runs them.

Only modules whose text could hold a P2P tool are imported (see
``shared_schema.compat.rules.may_hold_p2p_tools``); of those, only the tools
the rules mark for the P2P runtime join the catalog.  Sync tools run in a
worker thread; ``async def`` tools written for asyncio run in a worker thread
on their own asyncio loop per call (``shared_schema.compat.flavour``); Trio
and anyio ones run on the sidecar's loop.  Loading happens before the bridge
opens, so a gateway never sees a catalog without them.
"""

from __future__ import annotations

import logging
import time

import trio

from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.tools.catalog import ToolCatalog
from shared_schema.compat import ToolCollection, entry_point_sources, may_hold_p2p_tools, scan_tool_dirs
from shared_schema.function_tool import FunctionTool

log = logging.getLogger(__name__)


def _load(settings: SidecarSettings) -> tuple[list[FunctionTool], dict[str, int]]:
    scan = scan_tool_dirs(settings.tool_dirs)
    if settings.tool_entry_points:
        entry_point_sources(scan)
    total = len(scan.sources)
    scan.sources = [source for source in scan.sources if may_hold_p2p_tools(source)]
    collection = ToolCollection(scan, host="trio")
    collection.resolve_all(collection.modules)
    tools = [
        tool
        for module in collection.modules
        if module.resolution is not None and module.resolution.error is None
        for tool in module.resolution.tools
        if tool.metadata.runs_on_p2p
    ]
    status = collection.status()
    return tools, {"modules": total, "imported": status["imported"], "failed": status["failed"]}


async def load_tool_collection(catalog: ToolCatalog, settings: SidecarSettings) -> None:
    """Import the candidate modules in a worker thread and add their P2P tools to ``catalog``."""
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
        "tool collection: %d P2P tools from %d of %d modules imported (%d failed) in %.0f ms",
        len(tools) - len(taken),
        counts["imported"],
        counts["modules"],
        counts["failed"],
        1000 * (time.perf_counter() - started),
    )
