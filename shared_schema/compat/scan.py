"""Find the modules of a tool collection without importing any of them.

A collection directory is laid out as ``<root>/<category>/<module>.py`` (the
seed's ``tools/<category>/<tool>.py``; a directory that holds a ``tools/``
folder is read from there).  Scanning only lists directories and stats files,
so start-up costs the same whether the modules are cheap or import half of
PyPI; what a module contains is learnt when it is first imported.

Skipped, as the seed's hierarchical manager skipped them: folders and files
whose names start with ``_`` (``__init__.py``, private helpers), files at the
root (no category), and names that are not Python identifiers (they could not
be imported as modules anyway).  A category may carry a description in
``<category>/category.json`` (``{"description": "..."}``), as in the seed, and
``"bare_names": true`` there names its tools by their function alone instead of
``<category>.<function>`` (for clients that call fixed names, such as the MCP
conformance suite's ``test_simple_text``).

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import keyword
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

PRIVATE_ROOT = "_mcp_p2p_tools"
"""Parent package of every collection module imported from a directory (never a real package)."""


def _importable(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


@dataclass(frozen=True)
class ModuleSource:
    """One importable unit of a collection: a module file, or an installed entry point.

    ``module_name`` is what the module is imported as: its real dotted name
    when its tools folder belongs to an importable package (``package``), else
    a name under the private package ``_mcp_p2p_tools.<dir key>``, one level
    per folder from above the tools folder down to its category, so two
    categories (or two directories) may both hold ``status.py`` without one
    replacing the other in ``sys.modules``.  ``fingerprint`` changes whenever
    the file or one of its category's sibling files changes; the schema cache
    is only trusted while it matches.
    """

    kind: Literal["file", "entry_point"]
    category: str
    stem: str
    label: str
    module_name: str
    fingerprint: str
    path: Path | None = None
    package_dirs: tuple[tuple[str, Path], ...] = ()
    entry_point: EntryPoint | None = field(default=None, compare=False)
    tool_name: str | None = None
    """Set when the source is one function (an entry point naming a function): its fixed tool name."""
    bare_names: bool = False
    """Its tools are named by function alone (``category.json``: ``"bare_names": true``)."""
    package: str | None = None
    """The real package the module belongs to (``pkg.mcp_server.tools``) when that package is importable: the
    module is then imported under its real name, ``module_name``, exactly as the collection's own server does."""

    @property
    def cache_key(self) -> str:
        return f"file:{self.path}" if self.kind == "file" else f"ep:{self.label}"

    @property
    def module_path(self) -> str:
        """The dotted name the seed would have seen, used by its module-name P2P rule."""
        return f"{self.category}.{self.stem}" if self.kind == "file" else self.module_name


@dataclass
class ScanResult:
    sources: list[ModuleSource] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=dict)
    """Category name -> description (empty when there is no ``category.json``)."""


def collection_root(directory: Path) -> Path:
    """Accept both the ``tools`` folder itself and the folder that contains it."""
    nested = directory / "tools"
    return nested if nested.is_dir() else directory


def _stat_key(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _category_settings(category_dir: Path) -> tuple[str, bool]:
    """A category's description and whether its tools have bare names, from its ``category.json``."""
    meta = category_dir / "category.json"
    if not meta.is_file():
        return "", False
    try:
        settings = json.loads(meta.read_text(encoding="utf-8"))
        description, bare = settings.get("description", ""), settings.get("bare_names", False)
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring %s: %s", meta, exc)
        return "", False
    return (description if isinstance(description, str) else ""), bare is True


def _segment(name: str) -> str:
    return (
        name
        if name.isidentifier() and not keyword.iskeyword(name)
        else "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    )


def package_chain(root: Path) -> list[Path]:
    """The folders from the outermost package down to ``root`` when ``root`` is a package (has ``__init__.py``)."""
    chain: list[Path] = []
    folder = root
    while (folder / "__init__.py").is_file() and folder.name.isidentifier() and not keyword.iskeyword(folder.name):
        chain.insert(0, folder)
        folder = folder.parent
    return chain


def importable_package(chain: list[Path]) -> str | None:
    """The dotted name of ``chain``'s last folder if Python would import it from that very folder, else None.

    Only the top-level name is looked up, which reads ``sys.path`` and runs no package code.
    """
    if not chain:
        return None
    try:
        spec = importlib.util.find_spec(chain[0].name)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not any(Path(location).resolve() == chain[0] for location in locations):
        return None
    return ".".join(folder.name for folder in chain)


def _context_key(folders: list[Path]) -> str:
    """Sizes and mtimes of the modules beside the collection (what parent-relative imports reach)."""
    parts: list[str] = []
    for folder in folders:
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix == ".py" and p.is_file())
        except OSError:
            continue
        parts.extend(f"{p}={_stat_key(p)}" for p in files)
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def scan_tool_dir(directory: Path, result: ScanResult | None = None) -> ScanResult:
    """List the modules of one collection directory (sorted by category, then module).

    When the tools folder is a package inside a package Python can import
    (``pkg/mcp_server/tools`` with ``pkg`` on ``sys.path``), its modules are
    imported under their real names, so ``from ...trio_bridge import x``
    reaches ``pkg/mcp_server/trio_bridge.py`` as it does in the collection's
    own server.  Otherwise each module gets a private name below synthetic
    packages for its category, the tools folder and the folders above it (the
    package chain, or at least the tools folder's parent), so parent-relative
    imports still find the files beside the collection while every category
    keeps its own namespace.
    """
    result = result or ScanResult()
    root = collection_root(directory).resolve()
    dir_key = "d" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    chain = package_chain(root)
    real_package = importable_package(chain)
    levels = chain if len(chain) >= 2 else [root.parent, root]
    package_dirs: list[tuple[str, Path]] = []
    name = f"{PRIVATE_ROOT}.{dir_key}"
    for index, folder in enumerate(levels):
        if index:
            name = f"{name}.{_segment(folder.name)}"
        package_dirs.append((name, folder))
    root_package = real_package or name
    context = _context_key(levels)
    for category_dir in sorted(root.iterdir()):
        if not category_dir.is_dir() or category_dir.name.startswith(("_", ".")):
            continue
        category = category_dir.name
        if not _importable(category):
            log.warning("tool category folder %s is not a Python identifier; skipped", category_dir)
            continue
        files = sorted(p for p in category_dir.iterdir() if p.suffix == ".py" and p.is_file())
        # Any change to a sibling (a shared helper, a model module) invalidates the category's cached schemas.
        siblings = hashlib.sha1("|".join(f"{p.name}={_stat_key(p)}" for p in files).encode()).hexdigest()[:12]
        description, bare_names = _category_settings(category_dir)
        found = False
        for path in files:
            stem = path.stem
            if stem.startswith("_"):
                continue
            if not _importable(stem):
                log.warning("tool module %s is not an importable name; skipped", path)
                continue
            found = True
            package = f"{root_package}.{category}"
            result.sources.append(
                ModuleSource(
                    kind="file",
                    category=category,
                    stem=stem,
                    label=f"{root.name}/{category}/{path.name}",
                    module_name=f"{package}.{stem}",
                    fingerprint=f"{_stat_key(path)}/{siblings}/{context}",
                    path=path,
                    package_dirs=() if real_package else (*package_dirs, (package, category_dir)),
                    package=real_package,
                    bare_names=bare_names,
                )
            )
        if found and category not in result.categories:
            result.categories[category] = description
    return result


def scan_tool_dirs(directories: list[str] | list[Path]) -> ScanResult:
    """Scan each directory in order; a module is found once per directory it lives in."""
    result = ScanResult()
    for directory in directories:
        scan_tool_dir(Path(os.path.expanduser(str(directory))), result)
    return result
