"""Limits both processes apply to what a caller sends, checked the same way on each side.

The nesting check exists because every layer below it recurses: pydantic
validation, ``json.dumps`` of a result, msgpack encoding.  A deeply nested
argument is rejected here, before any of them runs, with ``invalid_arguments``
(JSON-RPC -32602, REST 422), instead of surfacing as a ``RecursionError`` or a
worker stuck validating.  The walk is iterative and stops at the first level
past the limit, so the check itself cannot recurse or run long on a hostile
value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared_schema.errors import BridgeError, ErrorCode

DEFAULT_MAX_ARGUMENT_DEPTH = 32
"""Lists/objects inside lists/objects; tool schemas here nest a handful of levels at most."""


def nesting_depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests lists/tuples/dicts more than ``max_depth`` levels deep.

    A top-level dict is depth 1, so ``{"a": [1]}`` has depth 2.  Scalars are
    depth 0.  Shared sub-objects are visited once per reference, but the walk
    ends as soon as the limit is passed.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False


def check_argument_depth(tool: str, arguments: Any, max_depth: int) -> None:
    """Raise ``BridgeError(INVALID_ARGUMENTS)`` when a call's arguments nest deeper than ``max_depth``."""
    if nesting_depth_exceeds(arguments, max_depth):
        raise BridgeError(
            ErrorCode.INVALID_ARGUMENTS,
            f"arguments for {tool} nest deeper than {max_depth} levels",
            {"limit": "max_argument_depth", "max_depth": max_depth},
        )
