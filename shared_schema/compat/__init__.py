"""Mount tool collections written for the seed's MCP server, unchanged, in either process.

``scan`` finds modules without importing them, ``entry_points`` finds
installed collections, ``loader`` imports one module in isolation, ``rules``
holds the naming and runtime conventions, ``flavour`` runs a coroutine on the
loop it was written for, ``cache`` remembers schemas across restarts, and
``collection`` ties them into lazily imported modules.  The gateway and the
sidecar each add their own glue (``gateway/collection.py``,
``p2p_sidecar/tools/collection.py``).

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from shared_schema.compat.cache import SchemaCache
from shared_schema.compat.collection import LazyModule, Resolution, ToolCollection, is_stand_in, unavailable_tool
from shared_schema.compat.entry_points import ENTRY_POINT_GROUP, entry_point_sources
from shared_schema.compat.rules import may_hold_p2p_tools, select_functions, tool_metadata_for
from shared_schema.compat.scan import ModuleSource, ScanResult, scan_tool_dirs

__all__ = [
    "ENTRY_POINT_GROUP",
    "LazyModule",
    "ModuleSource",
    "Resolution",
    "ScanResult",
    "SchemaCache",
    "ToolCollection",
    "entry_point_sources",
    "is_stand_in",
    "may_hold_p2p_tools",
    "scan_tool_dirs",
    "select_functions",
    "tool_metadata_for",
    "unavailable_tool",
]
