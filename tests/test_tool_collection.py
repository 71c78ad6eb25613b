"""A seed-style collection of 400 modules served unchanged by the real gateway and sidecar.

One stack for the module: the generated collection (``tests/toolgen.py``) in
``GATEWAY_TOOL_DIRS`` and ``SIDECAR_TOOL_DIRS``, plus a distribution declaring
``mcp_p2p.tools`` entry points on both processes' ``PYTHONPATH``.  Clients are
the official MCP client in both eras and plain HTTP.  The stack uses the wider
selection (``*_TOOL_SELECTION=wide``), which the generated collection's
helper-style modules exercise; the default rule is proven on the collection of
``tests/toolgen_package.py`` (``test_collection_compat.py``).

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.mcp_results import first_text
from tests.procs import ROOT, Proc, base_env, gateway_proc, http_json, running, sidecar_proc
from tests.toolgen import (
    CATEGORIES,
    DEMO_TOOLS,
    FAILURE_CATEGORY,
    P2P_CATEGORY,
    SLOW_CATEGORY,
    Manifest,
    generate,
    write_demo_distribution,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
MODES = ["legacy", "auto"]
RUNTIME = "io.github.mcp-p2p/runtime"


@dataclass
class Stack:
    gateway: Proc
    sidecar: Proc
    manifest: Manifest

    @property
    def url(self) -> str:
        return self.gateway.extra["url"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("collection")
    manifest = generate(tmp / "collection")
    site = write_demo_distribution(tmp / "site")
    sidecar = sidecar_proc(
        tmp, SIDECAR_TOOL_DIRS=str(manifest.root), SIDECAR_TOOL_SELECTION="wide", PYTHONPATH=str(site)
    )
    gateway = gateway_proc(
        tmp,
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_TOOL_DIRS=str(tmp / "collection"),  # the folder holding tools/: both forms are accepted
        GATEWAY_TOOL_CACHE_DIR=str(tmp / "cache"),
        GATEWAY_TOOL_SELECTION="wide",
        PYTHONPATH=str(site),
    )
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield Stack(gateway, sidecar, manifest)


def _structured(result: types.CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


async def test_start_up_imports_no_tool_module_and_browsing_imports_what_it_names(stack: Stack) -> None:
    status, health = http_json("GET", stack.url + "/health")
    assert status == 200
    assert health["collection"] == {
        "modules": 402,
        "imported": 0,
        "failed": 0,
        "cached": 0,
        "tools": 0,  # none known before an import (no schema cache yet)
        "unavailable": 0,
        "clashes": [],
    }
    _, listed = http_json("POST", stack.url + "/tools/execute/tools_list_categories", {})
    names = [entry["name"] for entry in listed["result"]["categories"]]
    assert set(stack.manifest.categories) | {"demo"} <= set(names)
    _, health = http_json("GET", stack.url + "/health")
    assert health["collection"]["imported"] == 0
    _, tools = http_json("POST", stack.url + "/tools/execute/tools_list_tools", {"category": "billing_tools"})
    assert tools["result"]["tool_count"] == 10
    _, schema = http_json(
        "POST", stack.url + "/tools/execute/tools_get_schema", {"category": "chart_tools", "tool": "find_record"}
    )
    assert schema["result"]["schema"]["input_schema"]["required"] == ["record_id"]
    _, health = http_json("GET", stack.url + "/health")
    assert health["collection"]["imported"] == 8 + 1  # billing_tools' modules, then chart_tools/lookup.py alone


@pytest.mark.parametrize("mode", MODES)
async def test_tools_list_has_every_tool_with_its_schema(stack: Stack, mode: str) -> None:
    async with Client(stack.url + "/mcp", mode=mode) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    expected = stack.manifest.tools
    assert len(expected) == 497
    assert set(expected) | set(DEMO_TOOLS) <= set(listed)
    _, rest = http_json("GET", stack.url + "/tools/list")
    assert rest["count"] == len(listed)
    for name, want in expected.items():
        tool = listed[name]
        assert (tool.meta or {})[RUNTIME] == ("p2p" if want.p2p else "local"), name
        if want.unavailable:
            description = tool.description or ""
            assert description.startswith("[UNAVAILABLE: ") and want.unavailable in description, name
            continue
        schema = tool.input_schema
        assert tuple(schema.get("required", ())) == want.required, name
        assert tuple(schema["properties"]) == want.properties, name
        assert schema["type"] == "object" and schema["additionalProperties"] is False, name
    assert (listed["demo.shout_remote"].meta or {})[RUNTIME] == "p2p"
    assert listed["demo.text_upper"].input_schema["required"] == ["text"]

    assert listed["admin_tools.echo_text_0"].input_schema == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "text": {"title": "Text", "type": "string"},
            "times": {"default": 1, "title": "Times", "type": "integer"},
            "upper": {"default": False, "title": "Upper", "type": "boolean"},
        },
        "required": ["text"],
    }
    assert listed["audit_tools.search_items_1"].input_schema["properties"]["limit"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "default": None,
        "title": "Limit",
    }
    order = listed["admin_tools.price_order_0"].input_schema
    assert order["properties"] == {
        "order": {"$ref": "#/$defs/Order"},
        "discount": {"default": 0.0, "title": "Discount", "type": "number"},
    }
    assert order["$defs"]["Order"]["properties"]["items"] == {
        "items": {"$ref": "#/$defs/Item"},
        "title": "Items",
        "type": "array",
    }
    assert order["$defs"]["Order"]["required"] == ["order_id", "items"]
    assert order["$defs"]["Item"]["properties"]["tags"] == {
        "items": {"type": "string"},
        "title": "Tags",
        "type": "array",
    }
    box = listed["admin_tools.bounding_box_0"].input_schema
    assert box["$defs"]["Point"] == {
        "additionalProperties": False,
        "properties": {"x": {"title": "X", "type": "number"}, "y": {"title": "Y", "type": "number"}},
        "required": ["x", "y"],
        "title": "Point",
        "type": "object",
    }
    assert "required" not in box["$defs"]["Box"]  # total=False
    assert listed["admin_tools.find_record"].input_schema["properties"]["mode"] == {
        "default": "fast",
        "enum": ["fast", "exact"],
        "title": "Mode",
        "type": "string",
    }


@pytest.mark.parametrize("mode", MODES)
async def test_calls_with_right_arguments(stack: Stack, mode: str) -> None:
    async with Client(stack.url + "/mcp", mode=mode) as client:
        echo = _structured(await client.call_tool("admin_tools.echo_text_0", {"text": "hi", "times": 2}))
        found = _structured(await client.call_tool("audit_tools.search_items_1", {"query": "q", "tags": ["a"]}))
        order = {"order_id": "o1", "items": [{"name": "a", "qty": 2}, {"name": "b"}]}
        priced = _structured(await client.call_tool("admin_tools.price_order_0", {"order": order}))
        points = [{"x": 1, "y": 5}, {"x": -2, "y": 3.5}]
        box = _structured(
            await client.call_tool("admin_tools.bounding_box_0", {"points": points, "box": {"label": "L"}})
        )
        words = _structured(await client.call_tool("cache_tools.word_count", {"text": "a b c"}))
        record = _structured(await client.call_tool("cache_tools.find_record", {"record_id": 7, "mode": "exact"}))
        batch = _structured(await client.call_tool("cache_tools.convert_batch", {"values": [" A ", "b"]}))
        demo = _structured(await client.call_tool("demo.text_length", {"text": "a b", "count_spaces": False}))
    assert echo == {"tool": "admin_tools.echo_text_0", "text": "hi hi"}
    assert found == {"query": "q", "limit": None, "tags": ["a"]}
    assert priced == {"order_id": "o1", "units": 3, "discount": 0.0}
    assert box == {"min": [-2, 3.5], "max": [1, 5], "label": "L"}
    assert words == {"words": 3}
    assert record == {"record_id": 7, "fields": ["id"], "mode": "exact"}
    assert batch == {"values": ["a", "b"]}
    assert demo == {"length": 2}


@pytest.mark.parametrize("mode", MODES)
async def test_calls_with_wrong_arguments_are_tool_errors(stack: Stack, mode: str) -> None:
    """Arguments that do not fit the schema are isError results (SEP-1303); an unknown tool is -32602."""
    bad: list[tuple[str, dict[str, Any]]] = [
        ("admin_tools.echo_text_0", {}),
        ("admin_tools.echo_text_0", {"text": "x", "times": "many"}),
        ("admin_tools.echo_text_0", {"text": "x", "times": 1.5}),
        ("admin_tools.price_order_0", {"order": {"order_id": "o", "items": [{"name": "a", "qty": "lots"}]}}),
        ("admin_tools.bounding_box_0", {"points": [{"x": 1}]}),
        ("cache_tools.find_record", {"record_id": 1, "mode": "slow"}),
        (f"{P2P_CATEGORY}.remote_pid", {"tag": ["not", "a", "string"]}),
    ]
    async with Client(stack.url + "/mcp", mode=mode) as client:
        for name, arguments in bad:
            result = await client.call_tool(name, arguments)
            assert result.is_error, (name, arguments)
            assert result.structured_content["error"]["code"] == "invalid_arguments", (name, result)
        with pytest.raises(MCPError) as caught:
            await client.call_tool("cache_tools.no_such_tool", {})
        assert caught.value.error.code == types.INVALID_PARAMS


async def test_p2p_marked_tools_run_in_the_sidecar(stack: Stack) -> None:
    sidecar_pid, gateway_pid = stack.sidecar.pid, stack.gateway.pid
    assert sidecar_pid != gateway_pid
    marked = stack.manifest.names(category=P2P_CATEGORY, p2p=True)
    assert len(marked) == 6
    async with Client(stack.url + "/mcp", mode="auto") as client:
        results = {name: _structured(await client.call_tool(name, {})) for name in marked}
        results["demo.shout_remote"] = _structured(await client.call_tool("demo.shout_remote", {"text": "hey"}))
        name = f"{P2P_CATEGORY}.workflow_render"
        results[name] = _structured(await client.call_tool(name, {}))
        local_trio = _structured(await client.call_tool(f"{FAILURE_CATEGORY}.local_nursery_nap", {}))
    for name in [*marked, "demo.shout_remote"]:
        assert results[name]["pid"] == sidecar_pid, name
    assert results[f"{P2P_CATEGORY}.workflow_render"]["pid"] == gateway_pid  # explicit "fastapi" beats the name rule
    assert results[f"{P2P_CATEGORY}.remote_async_io"]["loop"] == "asyncio"
    assert results[f"{P2P_CATEGORY}.remote_nursery"] == {"pid": sidecar_pid, "loop": "trio", "children": 2}
    assert results["demo.shout_remote"]["text"] == "HEY"
    assert local_trio == {"pid": gateway_pid, "loop": "trio"}


async def test_broken_modules_answer_a_clear_error_and_the_gateway_stays_up(stack: Stack) -> None:
    reasons = {name: stack.manifest.tools[name].unavailable for name in stack.manifest.names(category=FAILURE_CATEGORY)}
    broken = {name: reason for name, reason in reasons.items() if reason}
    assert len(broken) == 4
    async with Client(stack.url + "/mcp", mode="legacy") as client:
        for name, reason in broken.items():
            for _ in range(2):
                result = await client.call_tool(name, {"anything": 1})
                assert result.is_error and reason in first_text(result), name
                assert result.structured_content["error"]["code"] == "tool_unavailable"
    for name in broken:
        status, body = http_json("POST", f"{stack.url}/tools/execute/{name}", {})
        assert status == 503 and body["error"]["code"] == "tool_unavailable", (status, body)
        status, body = http_json("POST", stack.url + "/mcp/tools/call", {"name": name, "arguments": {}})
        assert status == 200 and body["result"]["isError"] is True
    status, health = http_json("GET", stack.url + "/health/ready")
    assert status == 200 and stack.gateway.alive()
    assert health["collection"]["failed"] == 3
    log = stack.gateway.log_path.read_text()
    for module in ("needs_missing_dep", "raises_on_import", "broken_syntax"):
        assert log.count(f"tools/{FAILURE_CATEGORY}/{module}.py failed to import") == 1, module
    assert "Traceback" in log and "config file missing" in log


async def test_deprecated_tool_runs_and_says_so(stack: Stack) -> None:
    name = f"{FAILURE_CATEGORY}.old_summary"
    async with Client(stack.url + "/mcp", mode="auto") as client:
        tool = {t.name: t for t in (await client.list_tools()).tools}[name]
        result = _structured(await client.call_tool(name, {"text": "a long text to summarise"}))
    assert (tool.description or "").startswith("[DEPRECATED: use text_tools.summary instead]")
    assert (tool.meta or {})["io.github.mcp-p2p/deprecated"] == "use text_tools.summary instead"
    assert result == {"summary": "a long tex", "_deprecated": "use text_tools.summary instead"}
    _, rest = http_json("GET", stack.url + "/tools/list")
    entry = next(t for t in rest["tools"] if t["name"] == name)
    assert entry["deprecated"] is True


async def test_same_module_name_in_every_category_stays_apart(stack: Stack) -> None:
    async with Client(stack.url + "/mcp", mode="auto") as client:
        for category in ("admin_tools", "billing_tools", P2P_CATEGORY):
            assert _structured(await client.call_tool(f"{category}.status", {})) == {"category": category}


async def test_timeout_of_a_collection_tool(stack: Stack) -> None:
    async with Client(stack.url + "/mcp", mode="auto") as client:
        result = await client.call_tool(f"{SLOW_CATEGORY}.slow_tool", {"seconds": 1.5})
    assert result.is_error and result.structured_content["error"]["code"] == "timeout"


async def test_meta_tools_work_over_the_collection(stack: Stack) -> None:
    manifest = stack.manifest
    async with Client(stack.url + "/mcp", mode="auto") as client:
        categories = _structured(await client.call_tool("tools_list_categories", {"include_count": True}))
        by_name = {entry["name"]: entry for entry in categories["categories"]}
        for category in manifest.categories:
            count = len(manifest.names(category=category))
            assert by_name[category]["tool_count"] == count, category
            assert by_name[category]["description"] == f"Tools for {category[:-6]}."
        listed = _structured(await client.call_tool("tools_list_tools", {"category": "billing_tools"}))
        assert sorted(t["name"] for t in listed["tools"]) == sorted(
            n.split(".", 1)[1] for n in manifest.names(category="billing_tools")
        )
        schema = _structured(
            await client.call_tool("tools_get_schema", {"category": "admin_tools", "tool": "price_order_0"})
        )
        assert schema["schema"]["input_schema"]["required"] == ["order"]
        params = {"text": "yo", "times": 3, "not_a_parameter": True}
        echo = f"echo_text_{CATEGORIES.index('weather_tools')}"
        dispatched = _structured(
            await client.call_tool("tools_dispatch", {"category": "weather_tools", "tool": echo, "params": params})
        )
        assert dispatched == {"tool": f"weather_tools.{echo}", "text": "yo yo yo"}
        remote = _structured(
            await client.call_tool(
                "tools_dispatch", {"category": P2P_CATEGORY, "tool": "remote_pid", "params": {"tag": "t", "x": 1}}
            )
        )
        assert remote["pid"] == stack.sidecar.pid and remote["tag"] == "t"
        failed = _structured(
            await client.call_tool("tools_dispatch", {"category": FAILURE_CATEGORY, "tool": "broken_syntax"})
        )
        assert failed["status"] == "error" and failed["code"] == "tool_unavailable"


@pytest.fixture
def plain_sidecar(tmp_path: Path) -> Iterator[Proc]:
    sidecar = sidecar_proc(tmp_path, "plain-sidecar", SIDECAR_TOOL_ENTRY_POINTS="false")
    with running(sidecar):
        yield sidecar


async def test_schema_cache_lists_a_restarted_gateway_without_imports(plain_sidecar: Proc, tmp_path: Path) -> None:
    """Second start: listed from the cache; an edited module alone is imported again."""
    manifest = generate(tmp_path / "collection")
    cache = tmp_path / "cache"
    env = {
        "GATEWAY_TOOL_DIRS": str(manifest.root),
        "GATEWAY_TOOL_CACHE_DIR": str(cache),
        "GATEWAY_TOOL_SELECTION": "wide",
    }

    def start() -> Proc:
        return gateway_proc(tmp_path, "gw", endpoint=plain_sidecar.extra["endpoint"], **env)

    with running(start()) as (first,):
        _, listed_first = http_json("POST", first.extra["url"] + "/mcp/tools/list", {})
    assert (cache / "tool-schemas.json").is_file()
    edited = manifest.root / "zip_tools" / "text_utils.py"
    edited.write_text(edited.read_text() + "\n\ndef line_count(text: str) -> dict:\n    return {'lines': 1}\n")
    with running(start()) as (second,):
        _, before = http_json("GET", second.extra["url"] + "/health")
        _, listed_second = http_json("POST", second.extra["url"] + "/mcp/tools/list", {})
        _, after = http_json("GET", second.extra["url"] + "/health")
        status, p2p = http_json("POST", second.extra["url"] + f"/tools/execute/{P2P_CATEGORY}.remote_pid", {})
    # broken modules are cached as what they resolved to; an edited module invalidates its category's 8 (shared
    # helpers)
    assert before["collection"]["cached"] == 400 - 8
    # the edited category was imported; nothing else (the failures are listed from the cache)
    assert after["collection"]["imported"] == 8 and after["collection"]["failed"] == 0
    first_names = [tool["name"] for tool in listed_first["result"]["tools"]]
    second_names = [tool["name"] for tool in listed_second["result"]["tools"]]
    assert sorted([*first_names, "zip_tools.line_count"]) == sorted(second_names)
    second_by_name = {tool["name"]: tool for tool in listed_second["result"]["tools"]}
    for tool in listed_first["result"]["tools"]:
        assert second_by_name[tool["name"]] == tool
    # a P2P tool this sidecar does not serve: a clear, non-retryable error
    assert status == 503 and p2p["error"]["code"] == "tool_unavailable", p2p
    assert "SIDECAR_TOOL_DIRS" in p2p["error"]["message"]


async def test_missing_tool_dir_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--tool-dirs", str(tmp_path / "nope")],
        env=base_env(),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "GATEWAY_TOOL_DIRS" in lines[0] and "not a directory" in lines[0], lines
