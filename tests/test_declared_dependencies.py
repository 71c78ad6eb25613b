"""Every third-party module the tree imports comes from a distribution pyproject.toml declares, with bounds.

A package that only arrives through another one (PyJWT through mcp, multiaddr through libp2p) can vanish
or jump a major version when that one changes its own requirements; declaring it makes the dependency ours.
Production code may use only ``[project] dependencies``; tests, deploy checks, scripts and the load test may
also use the ``dev`` extra; benches the ``bench`` extra too.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.procs import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SKIPPED_DIRS = {".venv", "node_modules", ".tools", ".git", "__pycache__", ".mypy_cache"}
PRODUCTION = ("gateway", "p2p_sidecar", "shared_schema", "supervisor", "deploy/healthcheck.py")
BENCH = ("bench",)
"""Everything else (tests, deploy/tests, scripts, loadtests, conformance_tools) may use the dev extra."""


def declared(*extras: str) -> dict[str, Requirement]:
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in extras:
        requirements += [Requirement(text) for text in PROJECT["optional-dependencies"][extra]]
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def python_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        if not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
            yield path


def imported_modules(path: Path) -> set[str]:
    """Absolute imports of ``path``, as dotted names (relative imports are the project's own)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def providers() -> dict[str, set[str]]:
    """Import name (top level, and two levels for namespace packages like google.protobuf) -> distributions."""
    found: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
                continue
            top = parts[0].removesuffix(".py")
            found.setdefault(top, set()).add(name)
            if len(parts) > 2:
                found.setdefault(f"{top}.{parts[1]}", set()).add(name)
    return found


def project_modules() -> set[str]:
    """Names the tree itself provides: its packages and any module file (deploy/tests' harness, scripts')."""
    return {path.stem for path in python_files()} | {path.parent.name for path in ROOT.glob("*/__init__.py")}


def group_of(path: Path) -> tuple[str, ...]:
    relative = path.relative_to(ROOT).as_posix()
    if any(relative == entry or relative.startswith(entry + "/") for entry in PRODUCTION):
        return ()
    if any(relative.startswith(entry + "/") for entry in BENCH):
        return ("dev", "bench")
    return ("dev",)


def test_every_imported_distribution_is_declared_with_bounds() -> None:
    by_import = providers()
    own = project_modules()
    undeclared: list[str] = []
    for path in python_files():
        allowed = declared(*group_of(path))
        for module in sorted(imported_modules(path)):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in own:
                continue
            second = ".".join(module.split(".")[:2])
            # not installed here (the bench extra in a plain `make test`): then its name must be declared
            dists = by_import.get(second) or by_import.get(top) or {canonicalize_name(top)}
            if not dists & set(allowed):
                undeclared.append(f"{path.relative_to(ROOT)}: {module} (from {', '.join(sorted(dists))})")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)


def test_declared_dependencies_are_bounded() -> None:
    unbounded = [
        str(requirement)
        for requirement in declared("dev", "bench", "deploy").values()
        if not any(spec.operator in ("==", "<", "<=", "~=") for spec in requirement.specifier)
    ]
    assert not unbounded, f"declared without an upper bound: {unbounded}"


def test_the_checker_sees_what_only_arrives_through_others() -> None:
    """The distributions the tree once imported without declaring are named by the check, not waved through."""
    by_import = providers()
    assert "pyjwt" in by_import["jwt"] and "protobuf" in by_import["google.protobuf"]
    assert "multiaddr" in by_import["multiaddr"] and "sse-starlette" in by_import["sse_starlette"]
