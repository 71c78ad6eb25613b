"""Generate a collection shaped like ipfs_datasets_py's: a ``tools/`` folder inside an importable package.

``generate_package(site)`` writes the package ``acme_pkg`` under ``site``
(put ``site`` on ``PYTHONPATH`` to make it importable) with the shapes a
loader has to get right for such a collection to be served as its own
server serves it:

* ``acme_pkg/server/tools/<category>/<module>.py`` beside
  ``acme_pkg/server/validators.py``, ``trio_bridge.py`` and
  ``tool_metadata.py`` (the package's own decorator, a dataclass like the
  seed's), reached with parent-relative imports (``from ...trio_bridge``,
  and ``tools/tool_wrapper.py``'s ``from ..validators``);
* modules whose helpers (``main``, ``format_articles_table``) stand beside
  the real tools, and P2P tools named unlike their module but marked
  ``@tool_metadata(runtime="trio")``;
* two modules of one category providing different functions under one name;
* a module that puts a folder on ``sys.path`` while it is imported, and a
  module that only imports when that has happened first;
* a module that fails to import and whose stand-in name is a working tool's;
* sync and async tools with defaults, lists and dicts;
* results JSON cannot carry, or carries only after conversion;
* a package ``__init__`` that switches an auto-installer on, and modules that
  run a package installer at import and at call time.

The returned ``PackageManifest`` says what each selection rule must list.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "acme_pkg"


@dataclass
class PackageManifest:
    site: Path
    tools_dir: Path
    original: set[str] = field(default_factory=set)
    """Real tools under the default selection (the original server's rule plus its P2P registration)."""
    wide_only: set[str] = field(default_factory=set)
    """Real tools the wide selection adds."""
    stand_ins: dict[str, str] = field(default_factory=dict)
    """Names listed as ``[UNAVAILABLE: ...]`` -> a fragment of the reason."""
    p2p: set[str] = field(default_factory=set)
    clashes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Name -> (module kept, module ignored), as labels."""
    modules: int = 0


def _write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip())


SERVER_FILES = {
    "__init__.py": '''
        """A package whose __init__ turns an installer on, as ipfs_datasets_py's does."""
        import os

        if not os.environ.get("IPFS_DATASETS_AUTO_INSTALL"):
            os.environ["IPFS_DATASETS_AUTO_INSTALL"] = "true"
        ''',
    "server/__init__.py": "",
    "server/validators.py": """
        def check_text(text):
            if not isinstance(text, str):
                raise TypeError("text must be a string")
            return text.strip()
        """,
    "server/trio_bridge.py": """
        import os


        def run_in_trio(fn, *args):
            return {"value": fn(*args), "pid": os.getpid()}
        """,
    "server/tool_metadata.py": '''
        """The package's own metadata decorator: a dataclass, like the seed's."""
        from dataclasses import dataclass


        @dataclass(frozen=True)
        class ToolMetadata:
            name: str
            runtime: str = "auto"
            requires_p2p: bool = False
            category: str = "general"
            timeout_seconds: float = 30.0


        def tool_metadata(**kwargs):
            def decorator(func):
                func._mcp_metadata = ToolMetadata(name=func.__name__, **kwargs)
                func._mcp_runtime = kwargs.get("runtime", "auto")
                return func

            return decorator
        ''',
    "server/tools/__init__.py": '"""Tool categories (imported one module at a time)."""\n',
    "server/tools/tool_wrapper.py": """
        from ..validators import check_text


        def wrap(text):
            return check_text(text)
        """,
}


def generate_package(site: Path) -> PackageManifest:
    root = site / PACKAGE
    for relative, source in SERVER_FILES.items():
        _write(root / relative, source)
    tools = root / "server" / "tools"
    manifest = PackageManifest(site=site, tools_dir=tools)

    def module(category: str, stem: str, source: str) -> None:
        folder = tools / category
        if not (folder / "__init__.py").exists():
            _write(folder / "__init__.py", "")
        _write(folder / f"{stem}.py", source)
        manifest.modules += 1

    # -- parent-relative imports, helpers beside tools --------------------
    module(
        "text_tools",
        "text_stats",
        '''
        """Word statistics; the script helpers below are not tools of the original server."""
        from ..tool_wrapper import wrap


        def text_stats(text: str, top: int = 3) -> dict:
            """Count words."""
            words = wrap(text).split()
            return {"words": len(words), "top": sorted(words)[:top]}


        def format_articles_table(rows: list) -> str:
            """Render rows as a table."""
            return "\\n".join(map(str, rows))


        def main() -> None:
            """Run all verifications."""
        ''',
    )
    manifest.original.add("text_tools.text_stats")
    manifest.wide_only.update(())  # text_stats matches the stem: the wide rule adds nothing here
    module(
        "text_tools",
        "cli",
        '''
        def format_articles_table(rows: list) -> str:
            """Render rows as a table."""
            return "\\n".join(map(str, rows))


        def main() -> None:
            """Run all verifications."""
        ''',
    )
    manifest.wide_only.update({"text_tools.format_articles_table", "text_tools.main"})

    # -- P2P tools marked with the package's own decorator, named unlike their module --------
    module(
        "p2p_tools",
        "p2p_tools",
        '''
        import os

        from ...tool_metadata import tool_metadata
        from ...trio_bridge import run_in_trio


        @tool_metadata(runtime="trio", requires_p2p=True, category="p2p_service")
        def p2p_service_status(include_peers: bool = True) -> dict:
            """Service status, run in the sidecar."""
            return {**run_in_trio(len, "abc"), "include_peers": include_peers}


        @tool_metadata(runtime="trio")
        async def p2p_cache_get(key: str, default: str | None = None) -> dict:
            """Read a cache entry."""
            return {"key": key, "value": default, "pid": os.getpid()}


        def _ensure_path() -> None:
            pass
        ''',
    )
    manifest.original.update({"p2p_tools.p2p_service_status", "p2p_tools.p2p_cache_get"})
    manifest.p2p.update({"p2p_tools.p2p_service_status", "p2p_tools.p2p_cache_get"})

    # -- a name clash inside a category -------------------------------------
    for stem in ("lookup", "record"):
        module(
            "clash_tools",
            stem,
            f'''
            def lookup_record(record_id: int) -> dict:
                """Find a record ({stem})."""
                return {{"record_id": record_id, "module": "{stem}"}}
            ''',
        )
    manifest.original.add("clash_tools.lookup_record")
    manifest.clashes["clash_tools.lookup_record"] = ("tools/clash_tools/lookup.py", "tools/clash_tools/record.py")

    # -- a failing module whose stand-in name is a working tool's ------------
    module("widget_tools", "make_widgets", "import acme_missing_dependency_xyz\n\n\ndef make_widgets(): ...\n")
    module(
        "widget_tools",
        "widgets",
        '''
        def make_widgets(count: int = 1) -> dict:
            """The real tool."""
            return {"widgets": count}
        ''',
    )
    manifest.original.add("widget_tools.make_widgets")
    module("widget_tools", "broken_widget", "raise RuntimeError('broken at import')\n")
    manifest.stand_ins["widget_tools.broken_widget"] = "RuntimeError: broken at import"

    # -- sys.path edited by one module, needed by another -------------------
    extra = site.parent / "extra_path"
    _write(extra / "acme_hidden_dep.py", "VALUE = 'hidden'\n")
    module(
        "path_tools",
        "a_path_editor",
        f'''
        import sys

        sys.path.insert(0, {str(extra)!r})


        def a_path_editor_value() -> dict:
            """Imports from the folder this module added, at call time."""
            import acme_hidden_dep

            return {{"value": acme_hidden_dep.VALUE}}
        ''',
    )
    module("path_tools", "needs_hidden", "import acme_hidden_dep\n\n\ndef needs_hidden() -> dict:\n    return {}\n")
    manifest.original.add("path_tools.a_path_editor_value")
    manifest.stand_ins["path_tools.needs_hidden"] = "No module named 'acme_hidden_dep'"

    # -- sync and async tools with defaults, lists and dicts ----------------
    module(
        "mixed_tools",
        "mixed",
        '''
        import asyncio


        def mixed_echo(text: str, times: int = 1, tags: list[str] = None, options: dict = None) -> dict:
            """Repeat a text."""
            return {"text": " ".join([text] * times), "tags": tags, "options": options}


        async def mixed_sum(items: list[int], scale: float = 1.0, labels: dict[str, str] | None = None) -> dict:
            """Add numbers."""
            await asyncio.sleep(0)
            return {"total": sum(items) * scale, "labels": labels or {}}
        ''',
    )
    manifest.original.update({"mixed_tools.mixed_echo", "mixed_tools.mixed_sum"})

    # -- results JSON cannot carry (or carries once converted) ---------------
    module(
        "result_tools",
        "results",
        """
        import datetime
        import os

        from ...tool_metadata import tool_metadata


        class Opaque:
            pass


        def results_object() -> dict:
            return {"handle": Opaque()}


        def results_circular() -> dict:
            loop = {}
            loop["self"] = loop
            return loop


        def results_bad_bytes() -> bytes:
            return b"\\xff\\xfe"


        def results_convertible() -> dict:
            return {
                "set": {3},
                "tuple": (1, 2),
                "when": datetime.date(2024, 1, 2),
                "nan": float("nan"),
                "inf": float("inf"),
            }


        def results_plain_string() -> str:
            return "just text"


        @tool_metadata(runtime="trio")
        def results_remote_object() -> dict:
            return {"handle": Opaque(), "pid": os.getpid()}
        """,
    )
    manifest.original.update(
        {
            "result_tools.results_object",
            "result_tools.results_circular",
            "result_tools.results_bad_bytes",
            "result_tools.results_convertible",
            "result_tools.results_plain_string",
            "result_tools.results_remote_object",
        }
    )
    manifest.p2p.add("result_tools.results_remote_object")

    # -- package installers at import and at call time ------------------------
    module(
        "install_tools",
        "installer",
        '''
        import os
        import subprocess
        import sys

        # An installer run while the module is imported (offline: --no-index, so it could never fetch anything).
        COMMAND = [sys.executable, "-m", "pip", "install", "--no-index", "--dry-run", "acme-missing-package-xyz"]
        try:
            subprocess.run(COMMAND, capture_output=True, timeout=60)
            AT_IMPORT = "ran"
        except PermissionError as exc:
            AT_IMPORT = f"refused: {exc}"


        def installer_report() -> dict:
            """What happened to the install at import, and the auto-installer switch as this module sees it."""
            return {"at_import": AT_IMPORT, "switch": os.environ.get("IPFS_DATASETS_AUTO_INSTALL")}


        def installer_now() -> dict:
            """An install started while the tool runs."""
            try:
                subprocess.run(COMMAND, capture_output=True, timeout=60)
                return {"at_call": "ran"}
            except PermissionError as exc:
                return {"at_call": f"refused: {exc}"}
        ''',
    )
    manifest.original.update({"install_tools.installer_report", "install_tools.installer_now"})
    return manifest
