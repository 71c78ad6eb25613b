"""The seed's hierarchical meta-tools, over the whole merged catalog (local and P2P).

Agents written for the seed browse a large collection through four tools
instead of one huge ``tools/list``; names, arguments and result shapes are the
seed's (``status``, ``categories``, ``tools``...).  A tool's category is its
metadata's ``category``; its short name is its name without a ``category.``
prefix.  Collection modules are imported as the seed's manager imported them: a
category listing imports that category's modules, a schema or a dispatch only
the module holding the tool, and only counting tools needs the whole
collection (the schema cache spares all of these imports where it can).

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.registry import ToolRegistry
from gateway.router import RuntimeRouter
from shared_schema import BridgeError, ToolMetadata, ToolSpec
from shared_schema.function_tool import note_ignored_arguments


def _short_name(spec: ToolSpec) -> str:
    prefix = spec.metadata.category + "."
    return spec.name[len(prefix) :] if spec.name.startswith(prefix) else spec.name


def _find(registry: ToolRegistry, category: str, tool: str) -> ToolSpec | None:
    for spec in registry.specs():
        if spec.metadata.category == category and tool in (spec.name, _short_name(spec)):
            return spec
    return None


async def _resolve(registry: ToolRegistry, category: str, tool: str) -> None:
    await registry.resolve(f"{category}.{tool}")
    await registry.resolve(tool)


def _taken(params: dict[str, Any], accepted: Collection[str]) -> dict[str, Any]:
    """The parameters a tool takes; the others are dropped, as the seed's dispatch did, and noted for the caller."""
    note_ignored_arguments([key for key in params if key not in accepted])
    return {key: value for key, value in params.items() if key in accepted}


def _summary(description: str) -> str:
    return (description.split("\n", 1)[0] if description else "")[:100]


def register_meta_tools(registry: ToolRegistry, router: RuntimeRouter) -> None:
    async def tools_list_categories(include_count: bool = False) -> dict[str, Any]:
        """List the tool categories; with include_count, how many tools each holds."""
        if include_count:  # counting needs every module's tools; names alone need no import
            await registry.prepare_listing()
        counts = registry.categories()
        categories = []
        for name in registry.category_names():
            entry: dict[str, Any] = {"name": name, "description": registry.category_description(name)}
            if include_count:
                entry["tool_count"] = len(counts.get(name, ()))
            categories.append(entry)
        return {"status": "success", "category_count": len(categories), "categories": categories}

    async def tools_list_tools(category: str) -> dict[str, Any]:
        """List the tools of one category (name and one-line description)."""
        categories = registry.category_names()
        if category not in categories:
            return {"status": "error", "error": f"Category '{category}' not found", "available_categories": categories}
        await registry.prepare_category(category)
        specs = [spec for spec in registry.specs() if spec.metadata.category == category]
        tools = [{"name": _short_name(spec), "description": _summary(spec.description)} for spec in specs]
        description = registry.category_description(category)
        return {
            "status": "success",
            "category": category,
            "description": description,
            "tool_count": len(tools),
            "tools": tools,
        }

    async def tools_get_schema(category: str, tool: str) -> dict[str, Any]:
        """The full schema of one tool: description, input schema, metadata."""
        await _resolve(registry, category, tool)
        spec = _find(registry, category, tool)
        if spec is None:
            return {"status": "error", "error": f"Tool '{tool}' not found in category '{category}'"}
        return {
            "status": "success",
            "schema": {
                "name": spec.name,
                "category": category,
                "description": spec.description,
                "input_schema": spec.input_schema,
                "metadata": spec.metadata.model_dump(mode="json", exclude_none=True),
            },
        }

    async def tools_dispatch(category: str, tool: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a tool by category and name; parameters it does not take are dropped, as the seed did."""
        await _resolve(registry, category, tool)
        spec = _find(registry, category, tool)
        if spec is None:
            return {"status": "error", "error": f"Tool '{tool}' not found in category '{category}'"}
        params = params or {}
        local = registry.local_tool(spec.name)
        if local is not None:  # the function itself is here: filter by its signature, as the seed did
            if not local.signature.accepts_extra:
                params = _taken(params, local.signature.parameter_names)
        elif spec.input_schema.get("additionalProperties") is not True:
            params = _taken(params, set(spec.input_schema.get("properties", {})))
        try:
            result = await router.call(spec.name, params)
        except BridgeError as exc:
            return {"status": "error", "error": exc.message, "code": exc.code.value, "category": category, "tool": tool}
        return result if isinstance(result, dict) else {"status": "success", "result": result}

    metadata = ToolMetadata(category="tools", runtime="fastapi")
    read_only = {"readOnlyHint": True, "openWorldHint": False}
    for fn in (tools_list_categories, tools_list_tools, tools_get_schema):
        registry.add_function(fn, metadata=metadata, annotations=read_only)
    registry.add_function(tools_dispatch, metadata=metadata, annotations={"openWorldHint": True})
