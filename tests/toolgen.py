"""Generate a seed-style tool collection: about 400 modules in 50 categories, written to a directory.

The modules follow the conventions of the collections users already have
(``tools/<category>/<tool>.py``, ``@tool_metadata``, ``_mcp_runtime``, the
seed's name rules) and cover what a loader must survive: sync and async
functions, defaults and optional arguments, pydantic models, TypedDicts and
lists of models, several functions per module, a function named unlike its
file, private helpers imported relatively, the same module name in every
category, P2P tools marked each way (decorator, attribute, name, the seed's
own metadata class) with asyncio- and Trio-flavoured coroutines, a
deprecated tool, and modules that fail (missing import, exception at import,
syntax error, a signature without a JSON schema).

``generate(path)`` returns a ``Manifest`` of every tool the collection must
produce, used by the tests and by ``bench/collection_startup.py``.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

WORDS = (  # noqa: SIM905 - one string reads better than fifty list items
    "admin audit backup cache cli dataset dev embedding file format graph index legal media medical monitoring news "
    "pdf provenance search security session sparse storage vector archive alert email finance geospatial "
    "investigation logic ranking schema sql table text time translate upload video voice weather xml yaml zip "
    "billing calendar chart queue_stats render"
).split()
CATEGORIES = [f"{word}_tools" for word in WORDS[:50]]
P2P_CATEGORY = CATEGORIES[10]
FAILURE_CATEGORY = CATEGORIES[20]
SLOW_CATEGORY = CATEGORIES[30]


@dataclass
class Expected:
    name: str
    category: str
    module: str
    p2p: bool = False
    deprecated: bool = False
    unavailable: str | None = None
    """A fragment of the reason a tool that cannot load gives."""
    required: tuple[str, ...] = ()
    properties: tuple[str, ...] = ()


@dataclass
class Manifest:
    root: Path
    tools: dict[str, Expected] = field(default_factory=dict)
    modules: int = 0

    @property
    def categories(self) -> list[str]:
        return sorted({tool.category for tool in self.tools.values()})

    def names(self, **where: object) -> list[str]:
        return sorted(n for n, t in self.tools.items() if all(getattr(t, k) == v for k, v in where.items()))


def _write(manifest: Manifest, category: str, stem: str, source: str, tools: list[Expected]) -> None:
    path = manifest.root / category / f"{stem}.py"
    path.write_text(textwrap.dedent(source).lstrip().replace("# pid-imports", PID_IMPORTS))
    manifest.modules += 1
    for tool in tools:
        manifest.tools[tool.name] = tool


def _generic(manifest: Manifest, category: str, ci: int, j: int) -> None:
    c = category
    if j == 0:
        stem = f"echo_text_{ci}"
        src = f'''
            """A sync tool named like its file."""


            def {stem}(text: str, times: int = 1, upper: bool = False) -> dict:
                """Repeat a text."""
                out = " ".join([text] * times)
                return {{"tool": "{c}.{stem}", "text": out.upper() if upper else out}}
            '''
        tools = [Expected(f"{c}.{stem}", c, stem, required=("text",), properties=("text", "times", "upper"))]
    elif j == 1:
        stem = f"search_items_{ci}"
        src = f'''
            """An async tool with optional arguments."""

            from typing import Optional


            async def {stem}(query: str, limit: Optional[int] = None, tags: list[str] | None = None) -> dict:
                """Search items."""
                return {{"query": query, "limit": limit, "tags": tags or []}}
            '''
        tools = [Expected(f"{c}.{stem}", c, stem, required=("query",), properties=("query", "limit", "tags"))]
    elif j == 2:
        stem = f"price_order_{ci}"
        src = f'''
            """Nested pydantic models and a list of models."""

            from pydantic import BaseModel, Field


            class Item(BaseModel):
                name: str
                qty: int = 1
                tags: list[str] = Field(default_factory=list)


            class Order(BaseModel):
                order_id: str
                items: list[Item]
                note: str | None = None


            def {stem}(order: Order, discount: float = 0.0) -> dict:
                """Count the items of an order."""
                return {{"order_id": order.order_id, "units": sum(i.qty for i in order.items), "discount": discount}}
            '''
        tools = [Expected(f"{c}.{stem}", c, stem, required=("order",), properties=("order", "discount"))]
    elif j == 3:
        stem = f"bounding_box_{ci}"
        src = f'''
            """TypedDicts (typing_extensions, as pydantic needs on Python < 3.12)."""

            from __future__ import annotations

            from typing_extensions import TypedDict


            class Point(TypedDict):
                x: float
                y: float


            class Box(TypedDict, total=False):
                label: str
                points: list[Point]


            async def {stem}(points: list[Point], box: Box | None = None) -> dict:
                """The bounding box of some points."""
                xs = [p["x"] for p in points] or [0.0]
                ys = [p["y"] for p in points] or [0.0]
                return {{"min": [min(xs), min(ys)], "max": [max(xs), max(ys)], "label": (box or {{}}).get("label")}}
            '''
        tools = [Expected(f"{c}.{stem}", c, stem, required=("points",), properties=("points", "box"))]
    elif j == 4:
        stem = "text_utils"
        src = '''
            """Several public functions, none named like the file: each is a tool."""

            from os.path import join  # imported, not defined here: not a tool


            def word_count(text: str) -> dict:
                """Count words."""
                return {"words": len(text.split())}


            def reverse_words(text: str, sep: str = " ") -> dict:
                """Reverse the word order."""
                return {"text": sep.join(reversed(text.split(sep))), "joined": join("a", "b")}


            def _private(text: str) -> str:
                return text
            '''
        tools = [
            Expected(f"{c}.word_count", c, stem, required=("text",), properties=("text",)),
            Expected(f"{c}.reverse_words", c, stem, required=("text",), properties=("text", "sep")),
        ]
    elif j == 5:
        stem = "lookup"
        src = '''
            """One function named unlike its file: exposed under the function's name."""

            from typing import Literal


            def find_record(record_id: int, fields: list[str] | None = None, mode: Literal["fast", "exact"] = "fast"):
                """Find a record by id."""
                return {"record_id": record_id, "fields": fields or ["id"], "mode": mode}
            '''
        tools = [
            Expected(f"{c}.find_record", c, stem, required=("record_id",), properties=("record_id", "fields", "mode"))
        ]
    elif j == 6:
        stem = "convert"
        src = '''
            """Functions containing the file's name are its tools; other public helpers are not."""

            from typing import Any, Literal


            def normalise(value: str) -> str:
                return value.strip().lower()


            def convert(value: str, to: Literal["upper", "lower"] = "upper", options: dict[str, Any] | None = None):
                """Convert one value."""
                return {"value": value.upper() if to == "upper" else value.lower(), "options": options or {}}


            def convert_batch(values: list[str]) -> dict:
                """Convert many values."""
                return {"values": [normalise(v) for v in values]}
            '''
        tools = [
            Expected(f"{c}.convert", c, stem, required=("value",), properties=("value", "to", "options")),
            Expected(f"{c}.convert_batch", c, stem, required=("values",), properties=("values",)),
        ]
    else:
        stem = "status"
        src = f'''
            """The same module name in every category, with a relative import of a private helper."""

            from ._shared import describe

            CATEGORY = "{c}"


            def status() -> dict:
                """Which category answered."""
                return describe(CATEGORY)
            '''
        tools = [Expected(f"{c}.status", c, stem)]
    _write(manifest, c, stem, src, tools)


PID_IMPORTS = "import os\nimport threading"


def _p2p(manifest: Manifest, c: str, j: int) -> None:
    """P2P tools marked every way the seed's collections mark them."""
    if j == 0:
        stem, tools = "remote_pid", [Expected(f"{c}.remote_pid", c, "remote_pid", p2p=True, properties=("tag",))]
        src = '''
            # pid-imports
            from shared_schema import tool_metadata


            @tool_metadata(runtime="trio", requires_p2p=True, timeout_seconds=20)
            def remote_pid(tag: str = "x") -> dict:
                """Which process ran me (decorator-marked P2P tool)."""
                return {"pid": os.getpid(), "tag": tag, "thread": threading.current_thread().name}
            '''
    elif j == 1:
        stem, tools = "remote_pid_attr", [Expected(f"{c}.remote_pid_attr", c, "remote_pid_attr", p2p=True)]
        src = '''
            # pid-imports

            def remote_pid_attr() -> dict:
                """Which process ran me (attribute-marked P2P tool)."""
                return {"pid": os.getpid()}


            remote_pid_attr._mcp_runtime = "trio"
            '''
    elif j == 2:
        stem, tools = "peer_probe", [Expected(f"{c}.peer_probe", c, "peer_probe", p2p=True, properties=("target",))]
        src = '''
            # pid-imports

            async def peer_probe(target: str = "self") -> dict:
                """Which process ran me (P2P by the seed's name rule)."""
                return {"pid": os.getpid(), "target": target}
            '''
    elif j == 3:
        stem = "remote_async_io"
        tools = [Expected(f"{c}.{stem}", c, stem, p2p=True, properties=("delay_ms",))]
        src = '''
            import asyncio
            # pid-imports
            from shared_schema import tool_metadata


            @tool_metadata(runtime="trio")
            async def remote_async_io(delay_ms: int = 1) -> dict:
                """An asyncio coroutine marked for the P2P runtime."""
                await asyncio.sleep(delay_ms / 1000)
                asyncio.get_running_loop()
                return {"pid": os.getpid(), "loop": "asyncio", "thread": threading.current_thread().name}
            '''
    elif j == 4:
        stem = "remote_nursery"
        tools = [Expected(f"{c}.{stem}", c, stem, p2p=True, properties=("children",))]
        src = '''
            # pid-imports
            import trio


            async def remote_nursery(children: int = 2) -> dict:
                """A Trio coroutine marked for the P2P runtime by attribute."""
                done = []
                async with trio.open_nursery() as nursery:
                    for i in range(children):
                        nursery.start_soon(trio.sleep, 0)
                        done.append(i)
                return {"pid": os.getpid(), "loop": "trio", "children": len(done)}


            remote_nursery._mcp_runtime = "trio"
            '''
    elif j == 5:
        stem, tools = "workflow_render", [Expected(f"{c}.workflow_render", c, "workflow_render")]
        src = '''
            # pid-imports

            def workflow_render() -> dict:
                """Named like a P2P tool, kept local by an explicit runtime."""
                return {"pid": os.getpid()}


            workflow_render._mcp_runtime = "fastapi"
            '''
    elif j == 6:
        stem, tools = "seed_style", [Expected(f"{c}.seed_style", c, "seed_style", p2p=True, properties=("n",))]
        src = '''
            """Marked with a stand-in for the seed's own metadata class and decorator."""
            # pid-imports
            from dataclasses import dataclass


            @dataclass(frozen=True)
            class ToolMetadata:
                name: str
                runtime: str = "auto"
                requires_p2p: bool = False
                category: str = "general"
                priority: int = 5
                timeout_seconds: float | None = 30.0
                mcp_description: str | None = None
                deprecated: bool = False
                deprecation_message: str = ""


            def tool_metadata(**kwargs):
                def decorator(func):
                    func._mcp_metadata = ToolMetadata(name=func.__name__, **kwargs)
                    func._mcp_runtime = kwargs.get("runtime", "auto")
                    func._mcp_requires_p2p = kwargs.get("requires_p2p", False)
                    return func
                return decorator


            @tool_metadata(runtime="trio", requires_p2p=True, category="p2p_workflow", timeout_seconds=None)
            async def seed_style(n: int = 1) -> dict:
                """Seed-style metadata."""
                return {"pid": os.getpid(), "n": n}
            '''
    else:
        return
    _write(manifest, c, stem, src, tools)


def _failures(manifest: Manifest, c: str, j: int) -> None:
    """Deprecated and broken modules; the rest of the category stays healthy."""
    if j == 0:
        stem = "old_summary"
        tools = [Expected(f"{c}.{stem}", c, stem, deprecated=True, required=("text",), properties=("text",))]
        src = '''
            from shared_schema import tool_metadata


            @tool_metadata(deprecated=True, deprecation_message="use text_tools.summary instead")
            def old_summary(text: str) -> dict:
                """Summarise a text (the old way)."""
                return {"summary": text[:10]}
            '''
    elif j == 1:
        stem = "needs_missing_dep"
        tools = [Expected(f"{c}.{stem}", c, stem, unavailable="No module named 'nonexistent_dependency_xyz'")]
        src = """
            import nonexistent_dependency_xyz


            def needs_missing_dep() -> dict:
                return {}
            """
    elif j == 2:
        stem = "raises_on_import"
        tools = [Expected(f"{c}.{stem}", c, stem, unavailable="RuntimeError: config file missing")]
        src = """
            raise RuntimeError("config file missing")
            """
    elif j == 3:
        stem = "broken_syntax"
        tools = [Expected(f"{c}.{stem}", c, stem, unavailable="SyntaxError")]
        src = """
            def broken_syntax(:
                return {}
            """
    elif j == 4:
        stem = "opaque"
        tools = [Expected(f"{c}.{stem}", c, stem, unavailable="cannot derive its input schema")]
        src = '''
            class Handle:
                """Not something JSON can carry."""


            def opaque(handle: Handle) -> dict:
                return {}
            '''
    elif j == 5:
        stem = "local_nursery_nap"
        tools = [Expected(f"{c}.{stem}", c, stem, properties=("ms",))]
        src = '''
            # pid-imports
            import trio


            async def local_nursery_nap(ms: int = 1) -> dict:
                """A Trio coroutine that is not a P2P tool: the gateway runs it on a Trio loop of its own."""
                await trio.sleep(ms / 1000)
                return {"pid": os.getpid(), "loop": "trio"}
            '''
    else:
        return
    _write(manifest, c, stem, src, tools)


def _slow(manifest: Manifest, c: str, j: int) -> None:
    if j != 0:
        return
    stem = "slow_tool"
    tools = [Expected(f"{c}.{stem}", c, stem, properties=("seconds",))]
    src = '''
        import time

        from shared_schema import tool_metadata


        @tool_metadata(timeout_seconds=0.5)
        def slow_tool(seconds: float = 2.0) -> dict:
            """Sleeps longer than its timeout allows."""
            time.sleep(seconds)
            return {"slept": seconds}
        '''
    _write(manifest, c, stem, src, tools)


SPECIAL = {P2P_CATEGORY: _p2p, FAILURE_CATEGORY: _failures, SLOW_CATEGORY: _slow}


def generate(root: Path) -> Manifest:
    """Write the collection under ``root/tools`` and return what it must serve."""
    manifest = Manifest(root / "tools")
    for ci, category in enumerate(CATEGORIES):
        folder = manifest.root / category
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("raise RuntimeError('category __init__ must never run')\n")
        (folder / "_shared.py").write_text("def describe(category):\n    return {'category': category}\n")
        (folder / "category.json").write_text(f'{{"description": "Tools for {category[:-6]}."}}')
        before = manifest.modules
        special = SPECIAL.get(category)
        for j in range(8):
            if special is not None:
                special(manifest, category, j)
            if manifest.modules - before == j:  # the special writer left this slot to a generic module
                _generic(manifest, category, ci, j)
    return manifest


if __name__ == "__main__":
    import sys

    made = generate(Path(sys.argv[1]))
    print(f"{made.modules} modules, {len(made.tools)} tools in {len(made.categories)} categories under {made.root}")


DEMO_TOOLS = ("demo.text_length", "demo.text_upper", "demo.shout_remote")


def write_demo_distribution(site: Path) -> Path:
    """An installed-looking distribution (dist-info + package) declaring ``mcp_p2p.tools`` entry points.

    Put ``site`` on ``PYTHONPATH`` and ``importlib.metadata`` finds it exactly
    as it finds a ``pip install``ed one.
    """
    package = site / "mcp_p2p_demo_tools"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Demo tool collection."""\n')
    (package / "text.py").write_text(
        textwrap.dedent(
            '''
            def strip_all(text: str) -> str:
                return text.strip()


            def text_upper(text: str) -> dict:
                """Upper-case a text."""
                return {"text": strip_all(text).upper()}


            def text_length(text: str, count_spaces: bool = True) -> dict:
                """Length of a text."""
                return {"length": len(text if count_spaces else text.replace(" ", ""))}
            '''
        ).lstrip()
    )
    (package / "remote.py").write_text(
        textwrap.dedent(
            '''
            import os

            from shared_schema import tool_metadata


            @tool_metadata(runtime="trio", requires_p2p=True)
            def shout(text: str) -> dict:
                """Upper-case a text in the P2P sidecar."""
                return {"text": text.upper(), "pid": os.getpid()}
            '''
        ).lstrip()
    )
    info = site / "mcp_p2p_demo_tools-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mcp-p2p-demo-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mcp_p2p.tools]\ndemo = mcp_p2p_demo_tools.text\ndemo.shout_remote = mcp_p2p_demo_tools.remote:shout\n"
    )
    return site
