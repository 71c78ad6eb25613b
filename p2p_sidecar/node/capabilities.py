"""What this node offers the network, so other nodes can choose where to send work.

Two lists: the task types this node's workers run (registered by the task
queue when it starts its workers) and the tools of its gateway it serves to
remote peers.  A tool is served only if the operator allowed it
(``SIDECAR_REMOTE_TOOLS_ALLOW``, empty by default: nothing is exposed by
accident) *and* the connected gateway announced it among its local tools in
its bridge HELLO; a tool the gateway does not have is never advertised.

The ``revision`` is a short digest of the lists; peers get it with every
ping answer and fetch the lists again only when it changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any


class Capabilities:
    def __init__(self, allowed_tools: Iterable[str], gateway_tools: Callable[[], Iterable[str]]) -> None:
        self._allowed = frozenset(allowed_tools)
        self._gateway_tools = gateway_tools
        self._task_types: set[str] = set()
        self._cache: tuple[tuple[tuple[str, ...], tuple[str, ...]], dict[str, Any], str] | None = None

    @property
    def allowed_tools(self) -> frozenset[str]:
        return self._allowed

    def set_task_types(self, names: Iterable[str]) -> None:
        """Replace the advertised task types (peers learn the change with their next ping)."""
        self._task_types = set(names)

    def add_task_types(self, names: Iterable[str]) -> None:
        self._task_types.update(names)

    def served_tools(self) -> list[str]:
        return sorted(self._allowed.intersection(self._gateway_tools()))

    def serves(self, tool: str) -> bool:
        return tool in self._allowed and tool in set(self._gateway_tools())

    def _current(self) -> tuple[dict[str, Any], str]:
        key = (tuple(self.served_tools()), tuple(sorted(self._task_types)))
        if self._cache is None or self._cache[0] != key:
            snapshot = {"tools": list(key[0]), "task_types": list(key[1])}
            digest = hashlib.blake2b(json.dumps(snapshot, sort_keys=True).encode(), digest_size=6).hexdigest()
            self._cache = (key, snapshot, digest)
        return self._cache[1], self._cache[2]

    def snapshot(self) -> dict[str, Any]:
        return self._current()[0]

    @property
    def revision(self) -> str:
        return self._current()[1]
