"""The collection's conventions: which functions are tools, what they are called, where they run.

Naming (``select_functions``), for a module ``<category>/<stem>.py``, as the
collection's own server (ipfs_datasets_py's hierarchical tool manager) names
them by default (``selection="original"``):

1. Public functions (no leading ``_``) in the module's namespace whose name is
   the stem or contains it are the module's tools -- functions the module
   imports under such a name included (thin wrapper modules).
   ``tools/dataset_tools/load_dataset.py`` defining ``load_dataset`` and
   ``load_dataset_batch`` gives two tools; its helpers (``main``,
   ``format_table``) none.
2. Also, functions defined in the module that ``@tool_metadata`` marks for
   the P2P runtime (``runtime="trio"`` or ``requires_p2p=True``), whatever
   their name: that server's P2P registration means to add exactly these.
3. Each tool is named ``<category>.<function>``: ``dataset_tools.load_dataset``, or
   ``<function>`` alone in a category whose ``category.json`` says ``"bare_names": true``.

``selection="wide"`` (opt-in) keeps the rule this project used before: when
no function matches 1, every public function *defined in* the module is a
tool, so a module of several functions, or one function named unlike its
file, exposes them under their own names.

Runtime (``tool_metadata_for``), the seed's runtime router's order:

1. ``@tool_metadata(...)`` with ``runtime`` other than ``"auto"`` (or
   ``requires_p2p=True``) decides.
2. Otherwise a ``_mcp_runtime`` attribute of ``"trio"`` or ``"fastapi"`` decides.
3. Otherwise the seed's fallbacks: the module path contains ``mcplusplus`` or
   ``trio``, or the function name contains ``p2p_``, ``workflow``,
   ``taskqueue``, ``peer_`` or ``bootstrap`` (case-insensitive) -> P2P runtime.
4. Otherwise the tool runs in the gateway.

P2P ("trio") tools are forwarded over the bridge to a sidecar that loaded the
same module.  An explicit ``runtime="fastapi"`` / ``_mcp_runtime = "fastapi"``
keeps a tool whose name matches a fallback pattern in the gateway.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ValidationError

from shared_schema.compat.scan import ModuleSource
from shared_schema.tool_metadata import METADATA_ATTRIBUTE, P2P_RUNTIME, RUNTIME_ATTRIBUTE, ToolMetadata

log = logging.getLogger(__name__)

P2P_NAME_PATTERNS = ("p2p_", "workflow", "taskqueue", "peer_", "bootstrap")
P2P_MODULE_PATTERNS = ("mcplusplus", "trio")
_P2P_TEXT_MARKERS = (METADATA_ATTRIBUTE, RUNTIME_ATTRIBUTE, "tool_metadata", "requires_p2p")


SELECTIONS = ("original", "wide")
Selection = Literal["original", "wide"]


def _marked_p2p(fn: Callable[..., Any]) -> bool:
    declared = declared_metadata(fn)
    return declared is not None and declared.runs_on_p2p


def select_functions(
    loaded: Any, source: ModuleSource, selection: Selection = "original"
) -> list[tuple[str, Callable[..., Any]]]:
    """The (tool name, function) pairs a loaded source provides, by the naming rule above."""
    if source.tool_name is not None:  # an entry point naming one function
        return [(source.tool_name, loaded)] if callable(loaded) else []
    if not isinstance(loaded, types.ModuleType):
        return []
    public: list[tuple[str, Callable[..., Any]]] = sorted(
        (name, obj) for name, obj in vars(loaded).items() if not name.startswith("_") and inspect.isfunction(obj)
    )
    own = [(name, fn) for name, fn in public if fn.__module__ == loaded.__name__]
    chosen = [(name, fn) for name, fn in public if source.stem in name]
    if not chosen and selection == "wide":
        chosen = own
    taken = {name for name, _ in chosen}
    chosen += [(name, fn) for name, fn in own if name not in taken and _marked_p2p(fn)]
    chosen.sort(key=lambda pair: pair[0])
    if source.bare_names:
        return chosen
    return [(f"{source.category}.{name}", fn) for name, fn in chosen]


def _foreign_metadata(raw: Any) -> ToolMetadata | None:
    """The seed's own ``ToolMetadata`` (a dataclass) when its decorator was used, converted to ours."""
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        fields = {f.name: getattr(raw, f.name) for f in dataclasses.fields(raw) if not f.name.startswith("_")}
    elif isinstance(raw, dict):
        fields = dict(raw)
    else:
        return None
    fields = {key: value for key, value in fields.items() if value is not None}
    if not fields.get("deprecation_message"):
        fields.pop("deprecation_message", None)
    try:
        return ToolMetadata.model_validate(fields)
    except ValidationError as exc:
        log.warning("ignoring unreadable tool metadata %r: %s", raw, exc.errors(include_url=False)[:1])
        return None


def declared_metadata(fn: Callable[..., Any]) -> ToolMetadata | None:
    raw = getattr(fn, METADATA_ATTRIBUTE, None)
    if raw is None or isinstance(raw, ToolMetadata):
        return raw
    return _foreign_metadata(raw)


def p2p_by_name(function_name: str, module_path: str) -> bool:
    """The seed's name-based fallback: module path or function name patterns."""
    module_path, function_name = module_path.lower(), function_name.lower()
    return any(p in module_path for p in P2P_MODULE_PATTERNS) or any(p in function_name for p in P2P_NAME_PATTERNS)


def tool_metadata_for(fn: Callable[..., Any], *, tool_name: str, source: ModuleSource) -> ToolMetadata:
    """The metadata a collection tool runs with: declared fields, the runtime decision, its category and name."""
    declared = declared_metadata(fn)
    metadata = declared or ToolMetadata()
    update: dict[str, Any] = {"name": tool_name, "category": source.category}
    if not (declared is not None and (declared.runtime != "auto" or declared.requires_p2p)):
        attribute = getattr(fn, RUNTIME_ATTRIBUTE, None)
        if attribute in ("trio", "fastapi"):
            update["runtime"] = attribute
        elif p2p_by_name(tool_name.partition(".")[2] or tool_name, source.module_path):
            update["runtime"] = P2P_RUNTIME
    return metadata.model_copy(update=update)


def may_hold_p2p_tools(source: ModuleSource) -> bool:
    """Whether a module file could hold a P2P tool, judged from its text without importing it.

    Every rule above leaves a trace in the source: the decorator's or the
    attribute's name, or the pattern inside a ``def`` line or the module path.
    Used by the sidecar to import only candidate modules.  Entry points are
    always candidates (their files are not located without importing).
    """
    if source.kind != "file" or source.path is None:
        return True
    if any(p in source.module_path.lower() for p in P2P_MODULE_PATTERNS):
        return True
    try:
        text = source.path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # let the import report it
    lowered = text.lower()
    return any(m in text for m in _P2P_TEXT_MARKERS) or any(p in lowered for p in P2P_NAME_PATTERNS)
