"""A collection shaped like ipfs_datasets_py's (``tests/toolgen_package.py``), served as its own server serves it.

The real gateway and sidecar mount the ``tools/`` folder of a package that is
importable (its folder on ``PYTHONPATH``), as the original server finds it:
the default selection lists what that server's discovery (plus its P2P
registration) lists, parent-relative imports resolve, a listing is the same
after a cold start, a cached restart and imports in reverse order, every tool
listed as available can be called, arguments are judged as the original
judged them, results JSON cannot carry come back as tool errors, and nothing
the collection does installs a package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from shared_schema.compat.guard import is_install_command
from tests.procs import ROOT, Proc, base_env, gateway_proc, http_json, running, sidecar_proc
from tests.toolgen_package import PackageManifest, generate_package

pytestmark = [pytest.mark.anyio]
NOTE = "io.github.mcp-p2p/ignored_arguments"


@dataclass
class Stack:
    gateway: Proc
    sidecar: Proc
    manifest: PackageManifest
    tmp: Path

    @property
    def url(self) -> str:
        return self.gateway.extra["url"]

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> tuple[int, Any]:
        return http_json("POST", f"{self.url}/tools/execute/{name}", arguments or {}, timeout=30)


def _procs(tmp: Path, manifest: PackageManifest, tag: str, **extra: str) -> tuple[Proc, Proc]:
    importable = {"PYTHONPATH": str(manifest.site)}
    sidecar = sidecar_proc(
        tmp,
        f"sidecar-{tag}",
        SIDECAR_TOOL_DIRS=str(manifest.tools_dir),
        SIDECAR_TOOL_ENTRY_POINTS="false",
        SIDECAR_DATA_DIR=str(tmp / "sidecar-data"),
        **importable,
        **{key: value for key, value in extra.items() if key.startswith("SIDECAR_")},
    )
    gateway = gateway_proc(
        tmp,
        f"gateway-{tag}",
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_TOOL_DIRS=str(manifest.tools_dir),
        GATEWAY_TOOL_ENTRY_POINTS="false",
        GATEWAY_TOOL_CACHE_DIR=str(tmp / "cache"),
        **importable,
        **{key: value for key, value in extra.items() if key.startswith("GATEWAY_")},
    )
    gateway.health_url = gateway.extra["url"] + "/health/ready"
    return sidecar, gateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("package-collection")
    manifest = generate_package(tmp / "site")
    sidecar, gateway = _procs(tmp, manifest, "main")
    with running(sidecar, gateway):
        yield Stack(gateway, sidecar, manifest, tmp)


def _listing(url: str) -> dict[str, dict[str, Any]]:
    status, body = http_json("GET", url + "/tools/list", timeout=60)
    assert status == 200, body
    return {tool["name"]: tool for tool in body["tools"] if "." in tool["name"]}


def _collection_view(listing: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    return {
        name: (t["description"], t["runtime"], json.dumps(t["inputSchema"], sort_keys=True))
        for name, t in listing.items()
    }


async def test_the_default_selection_is_the_original_servers(stack: Stack) -> None:
    listing = _listing(stack.url)
    available = {name for name, tool in listing.items() if not tool["description"].startswith("[UNAVAILABLE")}
    assert available == stack.manifest.original
    assert not available & stack.manifest.wide_only  # script helpers beside the tools are not tools
    for name, reason in stack.manifest.stand_ins.items():
        assert listing[name]["description"].startswith("[UNAVAILABLE: ") and reason in listing[name]["description"]
    assert {name for name in listing if listing[name]["runtime"] == "p2p"} == stack.manifest.p2p
    assert listing["mixed_tools.mixed_echo"]["inputSchema"]["required"] == ["text"]
    assert set(listing["mixed_tools.mixed_sum"]["inputSchema"]["properties"]) == {"items", "scale", "labels"}


async def test_parent_relative_imports_resolve_through_the_package(stack: Stack) -> None:
    status, stats = stack.call("text_tools.text_stats", {"text": " b a c ", "top": 2})  # ..tool_wrapper -> ..validators
    assert status == 200 and stats["result"] == {"words": 3, "top": ["a", "b"]}, stats
    status, remote = stack.call("p2p_tools.p2p_service_status", {})  # ...trio_bridge, ...tool_metadata
    assert status == 200, remote
    assert remote["result"] == {"value": 3, "pid": stack.sidecar.pid, "include_peers": True}
    status, cached = stack.call("p2p_tools.p2p_cache_get", {"key": "k", "default": "d"})
    assert status == 200 and cached["result"] == {"key": "k", "value": "d", "pid": stack.sidecar.pid}, cached


def test_parent_relative_imports_without_the_package_on_the_path(tmp_path: Path) -> None:
    """Not importable: synthetic parents still reach the files beside tools/, and categories stay apart."""
    manifest = generate_package(tmp_path / "site")
    script = (
        "import json, sys\n"
        "from shared_schema.compat import ToolCollection, scan_tool_dirs\n"
        f"c = ToolCollection(scan_tool_dirs([{str(manifest.tools_dir)!r}]), host='asyncio')\n"
        "c.resolve_all(c.modules)\n"
        "tools = {t.name: t for m in c.modules for t in m.resolution.tools}\n"
        "print(json.dumps({'stats': tools['text_tools.text_stats'].fn(text=' x y '),\n"
        "  'remote': tools['p2p_tools.p2p_service_status'].fn()['value'],\n"
        "  'names': sorted(m.source.module_name for m in c.modules if m.source.stem == 'lookup'),\n"
        "  'real': 'acme_pkg' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["stats"] == {"words": 2, "top": ["x", "y"]} and answer["remote"] == 3
    assert answer["real"] is False and answer["names"][0].startswith("_mcp_p2p_tools.")


async def test_a_clash_is_reported_and_the_first_module_wins(stack: Stack) -> None:
    status, health = http_json("GET", stack.url + "/health")
    assert status == 200
    (name, (kept, ignored)) = next(iter(stack.manifest.clashes.items()))
    assert {"name": name, "kept": kept, "ignored": [ignored]} in health["collection"]["clashes"]
    assert stack.call(name, {"record_id": 1})[1]["result"] == {"record_id": 1, "module": "lookup"}
    assert f"tool name {name} clashes" in stack.gateway.log_path.read_text()


async def test_a_failed_module_never_takes_a_working_tools_name(stack: Stack) -> None:
    listing = _listing(stack.url)
    assert listing["widget_tools.make_widgets"]["description"] == "The real tool."
    status, body = stack.call("widget_tools.make_widgets", {"count": 2})
    assert status == 200 and body["result"] == {"widgets": 2}, body
    status, body = stack.call("widget_tools.broken_widget")
    assert status == 503 and body["error"]["code"] == "tool_unavailable"


async def test_every_tool_listed_as_available_can_be_called(stack: Stack) -> None:
    listing = _listing(stack.url)
    for name, tool in listing.items():
        status, body = stack.call(name)
        if tool["description"].startswith("[UNAVAILABLE"):
            assert status == 503 and body["error"]["code"] == "tool_unavailable", (name, body)
        else:  # it ran, or it said why it could not with these arguments; never "unavailable"
            assert status in (200, 422, 500), (name, status, body)
            assert status != 500 or body["error"]["code"] == "tool_error", (name, body)


async def test_sys_path_edits_stay_with_the_module_that_made_them(stack: Stack) -> None:
    status, body = stack.call("path_tools.a_path_editor_value")
    assert status == 200 and body["result"] == {"value": "hidden"}, body  # its own call-time import still works
    status, body = stack.call("path_tools.needs_hidden")  # importable only after the other module: never listed
    assert status == 503 and "acme_hidden_dep" in body["error"]["message"]


async def test_arguments_are_judged_as_the_original_did(stack: Stack) -> None:
    # unknown arguments: dropped, and the caller is told in _meta, on every face and through tools_dispatch
    status, body = stack.call("mixed_tools.mixed_echo", {"text": "a", "times": 2, "colour": "red"})
    assert status == 200 and body["result"]["text"] == "a a", body
    assert body["_meta"] == {NOTE: ["colour"]}
    status, body = http_json(
        "POST", stack.url + "/mcp/tools/call", {"name": "mixed_tools.mixed_echo", "arguments": {"text": "a", "x": 1}}
    )
    assert status == 200 and body["result"]["isError"] is False and body["result"]["_meta"] == {NOTE: ["x"]}
    params = {"category": "mixed_tools", "tool": "mixed_echo", "params": {"text": "a", "colour": "red"}}
    status, body = stack.call("tools_dispatch", params)
    assert status == 200 and body["result"]["text"] == "a" and body["_meta"] == {NOTE: ["colour"]}, body
    status, body = stack.call("p2p_tools.p2p_cache_get", {"key": "k", "stale": True})  # a P2P tool: the same
    assert status == 200 and body["result"]["key"] == "k" and body["_meta"] == {NOTE: ["stale"]}, body
    # a number where the signature says str: its decimal text; null for a parameter whose default is None
    status, body = stack.call("mixed_tools.mixed_echo", {"text": 5, "tags": None, "options": {"k": [1]}})
    assert status == 200 and body["result"] == {"text": "5", "tags": None, "options": {"k": [1]}}, body
    assert "_meta" not in body
    status, body = stack.call("mixed_tools.mixed_sum", {"items": [1, "2"], "scale": 2})
    assert status == 200 and body["result"] == {"total": 6.0, "labels": {}}, body
    # anything that would change a value's meaning is refused
    changing: list[tuple[str, dict[str, Any]]] = [
        ("mixed_tools.mixed_echo", {"text": ["a", "b"]}),
        ("mixed_tools.mixed_echo", {"text": "a", "times": 1.5}),
        ("mixed_tools.mixed_sum", {"items": "1,2"}),
        ("mixed_tools.mixed_echo", {}),
    ]
    for name, arguments in changing:
        status, body = stack.call(name, arguments)
        assert status == 422 and body["error"]["code"] == "invalid_arguments", (name, arguments, body)
    # the gateway's own tools stay strict
    status, body = stack.call("tools_list_tools", {"category": "mixed_tools", "colour": "red"})
    assert status == 422, body


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("result_tools.results_object", "Opaque is not JSON"),
        ("result_tools.results_circular", "Circular reference"),
        ("result_tools.results_bad_bytes", "utf-8"),
        ("result_tools.results_remote_object", "Opaque is not JSON"),  # encoded in the sidecar
    ],
)
async def test_results_json_cannot_carry_are_tool_errors(stack: Stack, name: str, fragment: str) -> None:
    status, body = stack.call(name)
    assert status == 500 and body["error"]["code"] == "tool_error", body
    assert "cannot be encoded as JSON" in body["error"]["message"] and fragment in body["error"]["message"]
    async with Client(stack.url + "/mcp", mode="auto") as client:
        result = await client.call_tool(name, {})
    assert result.is_error and result.structured_content["error"]["code"] == "tool_error"
    assert stack.gateway.alive() and stack.sidecar.alive()


async def test_results_json_can_carry_once_converted(stack: Stack) -> None:
    status, body = stack.call("result_tools.results_convertible")
    assert status == 200, body
    assert body["result"] == {"set": [3], "tuple": [1, 2], "when": "2024-01-02", "nan": None, "inf": None}
    async with Client(stack.url + "/mcp", mode="auto") as client:
        plain = await client.call_tool("result_tools.results_plain_string", {})
    assert isinstance(plain, types.CallToolResult) and not plain.is_error
    assert plain.structured_content == {"result": "just text"}


async def test_collection_code_installs_nothing(stack: Stack) -> None:
    status, body = stack.call("install_tools.installer_report")
    assert status == 200, body
    assert body["result"]["at_import"].startswith("refused: installing packages from tool collection code")
    assert body["result"]["switch"] == "false"  # the package's __init__ found the switch set off
    status, body = stack.call("install_tools.installer_now")
    assert status == 200 and body["result"]["at_call"].startswith("refused"), body
    log = stack.gateway.log_path.read_text()
    assert "refused a package install started by tools/install_tools/installer.py" in log
    assert "refused a package install started by tool install_tools.installer_now" in log


def test_installer_commands_are_recognised() -> None:
    for command in (
        "pip install x",
        "/usr/bin/python3 -m pip install --user x",
        "pip3.11 install x",
        "uv pip install x",
        "apt-get install -y ffmpeg",
        "npm install -g pkg",
        "python -m ensurepip",
        "conda install numpy",
    ):
        assert is_install_command(command.split()), command
    for command in ("pip list", "python -c pass", "git pull", "ls install", "npm test"):
        assert not is_install_command(command.split()), command


def test_the_audit_hook_refuses_installs_only_for_collection_code(tmp_path: Path) -> None:
    """In a fresh interpreter: refused while acting for collection code, allowed outside it and when allowed."""
    script = (
        "import subprocess\n"
        "from shared_schema.compat.guard import acting_for, disable_auto_installers\n"
        "def run():\n"
        "    try:\n"
        "        return subprocess.run(['true', 'pip', 'install', 'x']).returncode\n"
        "    except PermissionError:\n"
        "        return 'refused'\n"
        "disable_auto_installers(allow=False, setting='X')\n"
        "outside = run()\n"
        "with acting_for('m'):\n"
        "    inside = run()\n"
        "disable_auto_installers(allow=True, setting='X')\n"
        "with acting_for('m'):\n"
        "    allowed = run()\n"
        "import os\n"
        "print(outside, inside, allowed, os.environ['IPFS_DATASETS_AUTO_INSTALL'])\n"
    )
    env = base_env(IPFS_DATASETS_AUTO_INSTALL="true")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "refused", "0", "false"]
    assert "IPFS_DATASETS_AUTO_INSTALL=true overridden to false" in done.stderr


def _reversed_listing(manifest: PackageManifest) -> dict[str, tuple[str, str, str]]:
    """The registry's listing with every module imported in reverse order, in a fresh interpreter."""
    script = (
        "import json, anyio\n"
        "from gateway.registry import ToolRegistry\n"
        "from shared_schema.compat import SchemaCache, ToolCollection, scan_tool_dirs\n"
        "from shared_schema.compat.guard import disable_auto_installers\n"
        "disable_auto_installers(allow=False, setting='X')\n"
        f"c = ToolCollection(scan_tool_dirs([{str(manifest.tools_dir)!r}]), host='asyncio')\n"
        "r = ToolRegistry(); r.mount(c)\n"
        "for m in reversed(c.modules):\n"
        "    m.resolve()\n"
        "anyio.run(r.prepare_listing)\n"
        "print(json.dumps([[s.name, s.description, json.dumps(s.input_schema, sort_keys=True),\n"
        "  s.metadata.runs_on_p2p] for s in r.specs() if '.' in s.name]))\n"
    )
    env = base_env(PYTHONPATH=f"{manifest.site}:{ROOT}")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {name: (desc, "p2p" if p2p else "local", schema) for name, desc, schema, p2p in json.loads(done.stdout)}


async def test_the_listing_is_the_same_cold_cached_and_in_reverse_order(tmp_path: Path) -> None:
    manifest = generate_package(tmp_path / "site")
    sidecar, gateway = _procs(tmp_path, manifest, "cold")
    with running(sidecar, gateway):
        # imports in reverse module order first (calls), then the listing imports the rest
        for name in sorted(manifest.original - manifest.p2p, reverse=True):
            gateway_call = http_json("POST", f"{gateway.extra['url']}/tools/execute/{name}", {}, timeout=30)
            assert gateway_call[0] != 503, (name, gateway_call)
        cold = _listing(gateway.extra["url"])
    assert (tmp_path / "cache" / "tool-schemas.json").is_file()
    sidecar, gateway = _procs(tmp_path, manifest, "cached")
    with running(sidecar, gateway):
        _, before = http_json("GET", gateway.extra["url"] + "/health")
        cached = _listing(gateway.extra["url"])
        _, after = http_json("GET", gateway.extra["url"] + "/health")
        status, remote = http_json("POST", f"{gateway.extra['url']}/tools/execute/p2p_tools.p2p_service_status", {})
    assert before["collection"]["cached"] == manifest.modules
    assert after["collection"]["imported"] == 0 and after["collection"]["failed"] == 0  # listed without imports
    assert status == 200 and remote["result"]["pid"] == sidecar.pid  # announced from the sidecar's cache
    assert "from the cache" in sidecar.log_path.read_text()
    assert _collection_view(cold) == _collection_view(cached)
    assert _reversed_listing(manifest) == _collection_view(cold)


async def test_the_wide_selection_is_an_opt_in(tmp_path: Path) -> None:
    manifest = generate_package(tmp_path / "site")
    script = (
        "import json\n"
        "from shared_schema.compat import ToolCollection, scan_tool_dirs\n"
        f"c = ToolCollection(scan_tool_dirs([{str(manifest.tools_dir)!r}]), host='asyncio', selection='wide')\n"
        "c.resolve_all(c.modules)\n"
        "names = {t.name for m in c.modules for t in m.resolution.tools if m.resolution.error is None}\n"
        "print(json.dumps(sorted(names)))\n"
    )
    env = base_env(PYTHONPATH=f"{manifest.site}:{ROOT}")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = set(json.loads(done.stdout))
    assert manifest.wide_only <= names and manifest.original <= names
