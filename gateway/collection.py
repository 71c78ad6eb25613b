"""Mount the configured tool collection on the gateway: directories, installed entry points, schema cache.

The work is in ``shared_schema.compat`` (the sidecar uses the same code);
this only turns ``GATEWAY_TOOL_*`` settings into a ``ToolCollection``.
Building it scans directories and reads metadata, never importing a tool
module, so it runs in ``Gateway.__init__`` before the server starts.  It also
turns the known package auto-installers off unless
``GATEWAY_TOOL_ALLOW_INSTALLS`` is true (``shared_schema.compat.guard``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gateway.settings import GatewaySettings
from shared_schema.compat import SchemaCache, ToolCollection, entry_point_sources, scan_tool_dirs
from shared_schema.compat.guard import disable_auto_installers

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mcp-p2p`` (``~/.cache/mcp-p2p``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mcp-p2p"


def build_collection(settings: GatewaySettings) -> ToolCollection | None:
    """The collection the settings name, or None when there is nothing to mount."""
    scan = scan_tool_dirs(settings.tool_dirs)
    if settings.tool_entry_points:
        entry_point_sources(scan)
    if not scan.sources:
        return None
    switched_off = disable_auto_installers(allow=settings.tool_allow_installs, setting="GATEWAY_TOOL_ALLOW_INSTALLS")
    if switched_off:
        log.info("package auto-installers switched off for the tool collection: %s", ", ".join(switched_off))
    cache = None
    if settings.tool_cache_dir != "off":
        cache = SchemaCache(Path(settings.tool_cache_dir) if settings.tool_cache_dir else default_cache_dir())
    collection = ToolCollection(scan, host="asyncio", cache=cache, selection=settings.tool_selection)
    status = collection.status()
    log.info(
        "tool collection: %d modules in %d categories (%d listed from the schema cache)",
        status["modules"],
        len(collection.categories),
        status["cached"],
    )
    return collection
