"""The collection loader's rules, piece by piece (the end-to-end proof is test_tool_collection.py).

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.registry import ToolRegistry
from shared_schema.compat import SchemaCache, ToolCollection, scan_tool_dirs
from shared_schema.compat.flavour import adapt_for_host, coroutine_flavour
from shared_schema.compat.rules import Selection, tool_metadata_for
from shared_schema.compat.scan import ModuleSource
from shared_schema.function_tool import FunctionTool
from shared_schema.tool_metadata import ToolMetadata, ToolSpec, tool_metadata
from tests.procs import ROOT, base_env
from tests.toolgen import generate, write_demo_distribution


def _module(root: Path, category: str, stem: str, source: str) -> None:
    folder = root / "tools" / category
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.py").write_text(textwrap.dedent(source).lstrip())


def _tools(collection: ToolCollection) -> list[FunctionTool]:
    """Every tool of a collection whose modules were all resolved."""
    tools: list[FunctionTool] = []
    for module in collection.modules:
        assert module.resolution is not None, module
        tools.extend(module.resolution.tools)
    return tools


def _resolved_names(root: Path, selection: Selection = "original") -> list[str]:
    collection = ToolCollection(scan_tool_dirs([root]), host="asyncio", selection=selection)
    collection.resolve_all(collection.modules)
    return sorted(tool.name for tool in _tools(collection))


def test_scan_lists_modules_without_importing_them(tmp_path: Path) -> None:
    manifest = generate(tmp_path)
    for odd in ("_private.py", "my-tool.py", "class.py"):
        (manifest.root / "admin_tools" / odd).write_text("raise SystemExit('must not run')\n")
    (manifest.root / "top_level.py").write_text("x = 1\n")
    for folder in ("_hidden", "bad-category"):
        (manifest.root / folder).mkdir()
        (manifest.root / folder / "tool.py").write_text("def tool(): ...\n")
    before = set(sys.modules)
    scan = scan_tool_dirs([tmp_path])  # the folder that holds tools/
    assert set(sys.modules) == before
    assert len(scan.sources) == 400 and len(scan.categories) == 50
    assert {s.stem for s in scan.sources if s.category == "admin_tools"} == {
        "echo_text_0",
        "search_items_0",
        "price_order_0",
        "bounding_box_0",
        "text_utils",
        "lookup",
        "convert",
        "status",
    }
    assert scan.categories["admin_tools"] == "Tools for admin."
    assert scan_tool_dirs([manifest.root]).sources == scan.sources  # the tools/ folder itself works too


def test_naming_rule(tmp_path: Path) -> None:
    _module(
        tmp_path, "data", "load_dataset", "def load_dataset(): ...\ndef load_dataset_batch(): ...\ndef helper(): ..."
    )
    _module(tmp_path, "data", "misc", "from os.path import join\ndef alpha(): ...\ndef beta(): ...\ndef _c(): ...")
    _module(tmp_path, "data", "lookup", "def find_record(record_id: int): ...")
    _module(tmp_path, "data", "wrapper", "from os.path import join as wrapper_join\n")
    _module(tmp_path, "data", "empty", "X = 1\n")
    _module(
        tmp_path,
        "data",
        "p2p_mod",
        "from shared_schema import tool_metadata\n\n@tool_metadata(runtime='trio')\ndef remote_thing(): ...\n\n"
        "@tool_metadata(requires_p2p=True)\ndef other_thing(): ...\n\n@tool_metadata(category='x')\ndef plain(): ...\n",
    )
    original = [
        "data.load_dataset",
        "data.load_dataset_batch",
        "data.other_thing",  # named unlike the file, but marked for the P2P runtime
        "data.remote_thing",
        "data.wrapper_join",  # imported, but named after the module: the seed's rule counts it
    ]
    assert _resolved_names(tmp_path) == original
    assert _resolved_names(tmp_path, "wide") == sorted(
        [*original, "data.alpha", "data.beta", "data.find_record", "data.plain"]
    )


def test_same_module_name_in_two_categories_and_relative_imports(tmp_path: Path) -> None:
    for category in ("north", "south"):
        (tmp_path / "tools" / category).mkdir(parents=True)
        (tmp_path / "tools" / category / "_helper.py").write_text(f"WHERE = {category!r}\n")
        _module(tmp_path, category, "status", "from ._helper import WHERE\n\ndef status():\n    return WHERE\n")
    collection = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio")
    collection.resolve_all(collection.modules)
    answers = {tool.name: tool.fn() for tool in _tools(collection)}
    assert answers == {"north.status": "north", "south.status": "south"}


@dataclass
class _SeedMetadata:
    """The shape of the seed's own ToolMetadata dataclass."""

    name: str
    runtime: str = "auto"
    requires_p2p: bool = False
    category: str = "general"
    timeout_seconds: float | None = 30.0
    deprecated: bool = False
    deprecation_message: str = ""


def _fn(name: str, **attributes: Any) -> Callable[..., Any]:
    def tool() -> None: ...

    tool.__name__ = name
    for key, value in attributes.items():
        setattr(tool, key, value)
    return tool


def _source(category: str = "general_tools", stem: str = "mod") -> ModuleSource:
    return ModuleSource("file", category, stem, f"tools/{category}/{stem}.py", f"x.{stem}", "0")


@pytest.mark.parametrize(
    ("fn", "source", "p2p"),
    [
        (tool_metadata(runtime="trio")(_fn("plain")), _source(), True),
        (tool_metadata(requires_p2p=True)(_fn("plain")), _source(), True),
        (tool_metadata(runtime="fastapi")(_fn("p2p_fetch")), _source(), False),  # declared runtime beats the name
        (_fn("plain", _mcp_runtime="trio"), _source(), True),
        (_fn("peer_list", _mcp_runtime="fastapi"), _source(), False),  # attribute beats the name
        (tool_metadata(category="x")(_fn("workflow_submit")), _source(), True),  # "auto" falls through to the name
        (_fn("submit_taskqueue_job"), _source(), True),
        (_fn("bootstrap_network"), _source(), True),
        (_fn("plain"), _source("mcplusplus_tools"), True),  # the module-path rule
        (_fn("plain"), _source(stem="trio_helpers"), True),
        (_fn("plain"), _source(), False),
        (_fn("peers"), _source(), False),  # "peer_" needs its underscore
        (_fn("plain", _mcp_metadata=_SeedMetadata("plain", runtime="trio")), _source(), True),
        (_fn("p2p_x", _mcp_metadata=_SeedMetadata("p2p_x", runtime="fastapi")), _source(), False),
    ],
)
def test_runtime_rules(fn: Callable[..., Any], source: ModuleSource, p2p: bool) -> None:
    name = f"{source.category}.{fn.__name__}"
    metadata = tool_metadata_for(fn, tool_name=name, source=source)
    assert metadata.runs_on_p2p is p2p
    assert (metadata.name, metadata.category) == (name, source.category)


def test_seed_metadata_fields_are_kept() -> None:
    seed = _SeedMetadata("old", timeout_seconds=None, deprecated=True, deprecation_message="")
    metadata = tool_metadata_for(_fn("old", _mcp_metadata=seed), tool_name="c.old", source=_source("c"))
    assert metadata.deprecated and metadata.deprecation_message is None
    assert metadata.timeout_seconds == ToolMetadata().timeout_seconds  # None in the seed meant "the default"


def _coroutine(source: str, **namespace: Any) -> Callable[..., Any]:
    exec(textwrap.dedent(source), namespace)
    return namespace["tool"]


ASYNCIO_TOOL = "async def tool(x: int = 1):\n    await asyncio.sleep(0)\n    return ('asyncio', x)\n"
TRIO_TOOL = "async def tool(x: int = 1):\n    await trio.sleep(0)\n    return ('trio', x)\n"


def test_coroutine_flavour() -> None:
    assert coroutine_flavour(_coroutine(ASYNCIO_TOOL, asyncio=asyncio)) == "asyncio"
    assert coroutine_flavour(_coroutine(ASYNCIO_TOOL, sleep=asyncio.sleep)) == "asyncio"
    assert coroutine_flavour(_coroutine(TRIO_TOOL, trio=trio)) == "trio"
    assert coroutine_flavour(_coroutine(TRIO_TOOL, trio=trio, asyncio=asyncio)) == "neutral"
    assert coroutine_flavour(_coroutine("async def tool():\n    return 1\n")) == "neutral"


def test_a_coroutine_runs_on_the_loop_it_was_written_for() -> None:
    on_asyncio = adapt_for_host(_coroutine(ASYNCIO_TOOL, asyncio=asyncio), "trio", timeout=5)
    on_trio = adapt_for_host(_coroutine(TRIO_TOOL, trio=trio), "asyncio", timeout=5)
    assert trio.run(trio.to_thread.run_sync, lambda: on_asyncio(x=2)) == ("asyncio", 2)
    assert asyncio.run(asyncio.to_thread(on_trio, x=3)) == ("trio", 3)
    native = _coroutine(TRIO_TOOL, trio=trio)
    assert adapt_for_host(native, "trio", timeout=5) is native
    slow = adapt_for_host(_coroutine("async def tool():\n    await trio.sleep(5)\n", trio=trio), "asyncio", 0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        slow()
    assert time.monotonic() - started < 2


def test_schema_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    _module(tmp_path, "data", "alpha", "def alpha(n: int = 1): ...\n")
    _module(tmp_path, "data", "beta", "def beta(): ...\n")
    cache = SchemaCache(tmp_path / "cache")
    first = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=cache)
    first.resolve_all(first.modules)
    again = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "cache"))
    assert [m.cached is not None for m in again.modules] == [True, True]
    cached = again.modules[0].cached
    assert cached is not None and cached[0].input_schema["properties"]["n"]["default"] == 1
    _module(tmp_path, "data", "beta", "def beta(x: str): ...\n")  # a sibling changed: the category is re-read
    edited = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "cache"))
    assert [m.cached for m in edited.modules] == [None, None]
    raw = json.loads((tmp_path / "cache" / "tool-schemas.json").read_text())
    raw["header"]["pydantic"] = "0.0"
    (tmp_path / "cache" / "tool-schemas.json").write_text(json.dumps(raw))
    assert SchemaCache(tmp_path / "cache").lookup(first.modules[0].source) is None


@pytest.mark.anyio
async def test_importing_a_cached_module_is_no_visible_change(tmp_path: Path) -> None:
    _module(tmp_path, "data", "alpha", "def alpha(n: int = 1):\n    return n\n")
    _module(tmp_path, "data", "beta", "def beta():\n    return 'b'\n")
    warm = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "c"))
    warm.resolve_all(warm.modules)
    cache_file = tmp_path / "c" / "tool-schemas.json"
    raw = json.loads(cache_file.read_text())
    beta_key = next(key for key in raw["modules"] if key.endswith("beta.py"))
    raw["modules"][beta_key]["tools"][0]["description"] = "stale"
    cache_file.write_text(json.dumps(raw))

    registry = ToolRegistry()
    registry.mount(ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "c")))
    listing = registry.listing_revision
    assert {spec.name for spec in registry.specs()} == {"data.alpha", "data.beta"}  # from the cache, nothing imported
    await registry.prepare_listing()
    assert registry.collection_status() == {
        "modules": 2,
        "imported": 0,
        "failed": 0,
        "cached": 2,
        "tools": 2,
        "unavailable": 0,
        "clashes": [],
    }
    await registry.resolve("data.alpha")
    assert registry.local_tool("data.alpha") is not None and registry.listing_revision == listing
    await registry.resolve("data.beta")
    assert registry.listing_revision == listing + 1  # its cached description was stale: clients are told
    assert next(s for s in registry.specs() if s.name == "data.beta").description == ""


def test_entry_points_are_found_through_installed_metadata(tmp_path: Path) -> None:
    """A real importlib.metadata lookup, in a fresh interpreter with the distribution on its path."""
    site = write_demo_distribution(tmp_path / "site")
    script = (
        "import json; from shared_schema.compat import entry_point_sources, ToolCollection\n"
        "scan = entry_point_sources(); c = ToolCollection(scan, host='asyncio'); c.resolve_all(c.modules)\n"
        "print(json.dumps(sorted([t.name, t.metadata.runs_on_p2p] for m in c.modules for t in m.resolution.tools)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env(PYTHONPATH=f"{site}:{ROOT}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        ["demo.shout_remote", True],
        ["demo.text_length", False],
        ["demo.text_upper", False],
    ]


def test_a_cached_module_that_no_longer_imports_fails_under_every_listed_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "compat_dep_xyz.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(lib))
    _module(tmp_path, "data", "multi", "import compat_dep_xyz\n\ndef multi_first(): ...\n\ndef multi_second(): ...\n")
    warm = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "c"))
    warm.resolve_all(warm.modules)
    # a dependency outside the collection breaks without a file coming or going: the cache cannot see that
    (lib / "compat_dep_xyz.py").write_text("raise ImportError('broken since the cache was written')\n")
    monkeypatch.delitem(sys.modules, "compat_dep_xyz")
    for name in [n for n in sys.modules if n.endswith(".data.multi")]:
        monkeypatch.delitem(sys.modules, name)
    again = ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "c"))
    resolution = again.modules[0].resolve()
    assert resolution.error is not None and sorted(resolution.names) == ["data.multi_first", "data.multi_second"]
    assert all(t.spec.description.startswith("[UNAVAILABLE: module tools/data/multi.py") for t in resolution.tools)
    (lib / "compat_dep_xyz.py").unlink()  # a file on sys.path comes or goes (a package installed or removed)
    assert [
        m.cached
        for m in ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio", cache=SchemaCache(tmp_path / "c")).modules
    ] == [None]


@pytest.mark.anyio
async def test_a_stand_in_yields_to_the_sidecars_tool_of_the_same_name(tmp_path: Path) -> None:
    """The gateway cannot import a module the sidecar can: the sidecar's tool is listed and called."""
    _module(tmp_path, "data", "gone", "import not_installed_here_xyz\n\ndef gone(): ...\n")
    registry = ToolRegistry()
    registry.mount(ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio"))
    await registry.prepare_listing()
    route = registry.route("data.gone")
    assert route is not None and route.local is not None  # the stand-in answers
    remote = ToolSpec(name="data.gone", input_schema={"type": "object"}, metadata=ToolMetadata(runtime="trio"))
    registry.replace_remote([remote])
    route = registry.route("data.gone")
    assert route is not None and route.is_p2p and registry.local_tool("data.gone") is None
    assert [spec for spec in registry.specs() if spec.name == "data.gone"] == [remote]


@pytest.mark.anyio
async def test_a_p2p_tool_the_connected_sidecar_does_not_serve_is_listed_unavailable(tmp_path: Path) -> None:
    _module(tmp_path, "data", "p2p_fetch", "def p2p_fetch(url: str) -> dict:\n    return {}\n")
    registry = ToolRegistry()
    registry.mount(ToolCollection(scan_tool_dirs([tmp_path]), host="asyncio"))
    await registry.prepare_listing()
    (spec,) = [s for s in registry.specs() if s.name == "data.p2p_fetch"]
    assert spec.metadata.runs_on_p2p and not spec.description  # no sidecar yet: nothing to say
    registry.replace_remote([])  # a sidecar connected, without that module
    (spec,) = [s for s in registry.specs() if s.name == "data.p2p_fetch"]
    assert spec.description.startswith("[UNAVAILABLE: runs on the P2P runtime, and the connected sidecar does not")
    served = ToolSpec(name="data.p2p_fetch", input_schema={"type": "object"}, metadata=ToolMetadata(runtime="trio"))
    registry.replace_remote([served])
    assert [s for s in registry.specs() if s.name == "data.p2p_fetch"] == [served]
