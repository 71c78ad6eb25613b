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
"""

from __future__ import annotations

import hashlib
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

    ``module_name`` is what the module is imported as: for a file, a name under
    the private package ``_mcp_p2p_tools.<dir key>.<category>``, so two
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


def scan_tool_dir(directory: Path, result: ScanResult | None = None) -> ScanResult:
    """List the modules of one collection directory (sorted by category, then module)."""
    result = result or ScanResult()
    root = collection_root(directory).resolve()
    dir_key = "d" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    root_package = f"{PRIVATE_ROOT}.{dir_key}"
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
                    fingerprint=f"{_stat_key(path)}/{siblings}",
                    path=path,
                    package_dirs=((root_package, root), (package, category_dir)),
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
