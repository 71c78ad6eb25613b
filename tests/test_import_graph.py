"""No import cycles in the project's packages, counting every import: module level, inside functions and
under ``TYPE_CHECKING`` alike (a cycle hidden behind a late import is still two modules that need each other)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("p2p_sidecar", "gateway", "shared_schema", "supervisor")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports (a package's ``__init__`` counts when the package itself is named)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" needs the module; "from pkg import name" needs the package's __init__
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (iterative DFS), or None."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if start in state:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = pending.pop()
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(edges.get(nxt, ()))))
    return None


def test_the_walker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_project_imports_itself_through_others() -> None:
    edges = graph()
    assert edges.get("p2p_sidecar.taskqueue.service")
    # a package's __init__ re-exports its modules; importing the package from one of its own modules would be
    # a cycle through the __init__, which is what the walker reports
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_queues_worker_side_never_imports_its_owner_side() -> None:
    edges = graph()
    owner_side = {"p2p_sidecar.taskqueue.service", "p2p_sidecar.taskqueue.owner", "p2p_sidecar.taskqueue.lending"}
    for worker_side in (
        "p2p_sidecar.taskqueue.worker",
        "p2p_sidecar.taskqueue.pool",
        "p2p_sidecar.taskqueue.peer_source",
    ):
        reachable, todo = set(), [worker_side]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in reachable:
                    reachable.add(nxt)
                    todo.append(nxt)
        assert not reachable & owner_side, (worker_side, reachable & owner_side)
