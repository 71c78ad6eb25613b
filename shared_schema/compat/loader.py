"""Import one collection module, the only place collection code is executed.

A module whose tools folder belongs to an importable package is imported
under its real name (``pkg.mcp_server.tools.<category>.<module>``), the way
the collection's own server imports it: its parent packages' ``__init__.py``
files run, and relative imports of any depth resolve as they do there.
Any other module file is imported under its private name (see
``scan.ModuleSource``) below synthetic parent packages whose ``__path__`` is
the category folder, the collection folder and the folders above it.  So
``from ._helpers import x``, ``from . import sibling`` and
``from ...validators import y`` work as they did in the seed, while the
folders' ``__init__.py`` files are never run (in the seed they often imported
every module of the category at once, which would defeat lazy loading).
Every import goes through ``guard.collection_import`` (no installs, no
``sys.path`` edits leaking between modules, one import at a time).

Whatever goes wrong while the module runs (a missing dependency, an
exception, a syntax error, even ``sys.exit()``) becomes a ``ModuleLoadError``
carrying the traceback; the caller decides how to report it.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import traceback
import types
from typing import Any

from shared_schema.compat.guard import collection_import
from shared_schema.compat.scan import PRIVATE_ROOT, ModuleSource

_packages_lock = threading.Lock()


class ModuleLoadError(Exception):
    """A collection module that could not be imported; ``reason`` is one line, ``details`` the traceback."""

    def __init__(self, source: ModuleSource, reason: str, details: str) -> None:
        super().__init__(f"{source.label}: {reason}")
        self.source = source
        self.reason = reason
        self.details = details


def _synthetic_package(name: str, path: str | None) -> None:
    """Register an empty package so relative imports inside collection modules resolve."""
    if name in sys.modules:
        return
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [path] if path is not None else []
    package = importlib.util.module_from_spec(spec)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package


def _ensure_packages(source: ModuleSource) -> None:
    with _packages_lock:
        _synthetic_package(PRIVATE_ROOT, None)
        for name, path in source.package_dirs:
            _synthetic_package(name, str(path))


def _import_file(source: ModuleSource) -> types.ModuleType:
    assert source.path is not None
    _ensure_packages(source)
    existing = sys.modules.get(source.module_name)
    if existing is not None:  # imported already, e.g. as a sibling of another module
        return existing
    spec = importlib.util.spec_from_file_location(source.module_name, source.path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no loader for {source.path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.module_name] = module  # before running it: pydantic resolves forward refs through it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(source.module_name, None)
        raise
    return module


def load(source: ModuleSource) -> Any:
    """Import ``source``: a module (files, module entry points) or a function (function entry points)."""
    try:
        with collection_import(source.label):
            if source.kind == "file":
                return importlib.import_module(source.module_name) if source.package else _import_file(source)
            assert source.entry_point is not None
            return source.entry_point.load()
    # Boundary: foreign module code.  Any failure, even SystemExit, is reported to the caller; none escapes.
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        reason = f"{type(exc).__name__}: {exc}".strip()
        if isinstance(exc, SyntaxError):
            reason = f"SyntaxError: {exc.msg} (line {exc.lineno})"
        raise ModuleLoadError(source, reason.splitlines()[0][:300], traceback.format_exc()) from None
