"""Tool collections installed with pip, found through the ``mcp_p2p.tools`` entry point group.

A distribution declares, in its ``pyproject.toml``::

    [project.entry-points."mcp_p2p.tools"]
    text = "my_tools.text"              # a module: its functions, by the directory naming rule
    "text.shout" = "my_tools.extra:shout"  # one function, named text.shout

The entry point's name is the category, optionally followed by ``.<tool>``
when its value names one function.  Listing the group reads only the
installed metadata; nothing is imported until a tool of it is needed.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from shared_schema.compat.scan import ModuleSource, ScanResult

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mcp_p2p.tools"


def _source(ep: EntryPoint) -> ModuleSource | None:
    category, _, tool = ep.name.partition(".")
    if not category.isidentifier():
        log.warning("entry point %s = %s: the name must start with a category identifier; skipped", ep.name, ep.value)
        return None
    dist = ep.dist
    version = f"{dist.name}=={dist.version}" if dist is not None else "?"
    label = f"{ep.name} = {ep.value} ({version})"
    stem = ep.module.rsplit(".", 1)[-1]
    tool_name = None
    if ep.attr:
        tool_name = f"{category}.{tool or ep.attr.rsplit('.', 1)[-1]}"
    elif tool:
        log.warning("entry point %s names a module, so it cannot name a tool; using category %s", ep.name, category)
    return ModuleSource(
        kind="entry_point",
        category=category,
        stem=stem,
        label=label,
        module_name=ep.module,
        fingerprint=version,
        entry_point=ep,
        tool_name=tool_name,
    )


def entry_point_sources(result: ScanResult | None = None) -> ScanResult:
    """Add every installed ``mcp_p2p.tools`` entry point to ``result`` (sorted by name)."""
    result = result or ScanResult()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        source = _source(ep)
        if source is not None:
            result.sources.append(source)
            result.categories.setdefault(source.category, "")
    return result
