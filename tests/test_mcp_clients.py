"""The official MCP client, in both protocol eras, against the real gateway + sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.subscriptions import ToolsListChanged
from mcp.shared.exceptions import MCPError

from bench.stack import legacy_call, legacy_session
from tests.mcp_results import first_text
from tests.procs import Proc, gateway_proc, running, sidecar_proc

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
MODES = ["legacy", "auto"]


@pytest.mark.parametrize("mode", MODES)
async def test_lists_local_and_p2p_tools_in_a_stable_order(stack: tuple[Proc, Proc], mode: str) -> None:
    gateway, _ = stack
    async with Client(gateway.extra["url"] + "/mcp", mode=mode) as client:
        first = await client.list_tools()
        second = await client.list_tools()
    names = [tool.name for tool in first.tools]
    assert names == sorted(names)
    assert names == [tool.name for tool in second.tools]
    assert {"hash_content", "echo", "tools_dispatch", "p2p_service_status", "p2p_hash_content"} <= set(names)
    by_name = {tool.name: tool for tool in first.tools}
    schema = by_name["hash_content"].input_schema
    assert schema["type"] == "object" and schema["required"] == ["data"]
    assert schema["properties"]["algorithm"]["enum"] == ["sha256", "sha512", "sha3_256", "blake2b"]
    assert by_name["hash_content"].annotations is not None and by_name["hash_content"].annotations.read_only_hint
    p2p = by_name["p2p_service_status"]
    assert set(p2p.input_schema["properties"]) == {"include_peers", "peers_limit"}
    assert p2p.meta is not None and p2p.meta["io.github.mcp-p2p/runtime"] == "p2p"


@pytest.mark.parametrize("mode", MODES)
async def test_calls_a_local_tool_and_p2p_tools(stack: tuple[Proc, Proc], mode: str) -> None:
    gateway, sidecar = stack
    async with Client(gateway.extra["url"] + "/mcp", mode=mode) as client:
        local = await client.call_tool("hash_content", {"data": "hello world"})
        remote = await client.call_tool("p2p_hash_content", {"data": "hello world"})
        status = await client.call_tool("p2p_service_status", {"include_peers": True, "peers_limit": 5})
    assert not local.is_error and not remote.is_error
    assert local.structured_content == remote.structured_content
    assert local.structured_content["cid"] == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert not status.is_error
    report = status.structured_content
    assert report["status"] == "running" and report["bridge"]["gateways"] >= 1
    assert report["node"]["pid"] == sidecar.pid
    assert "peers" in report


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_tool_is_invalid_params_and_bad_arguments_are_tool_errors(
    stack: tuple[Proc, Proc], mode: str
) -> None:
    """SEP-1303 (2025-11-25): input validation errors are tool execution errors the model can read."""
    gateway, _ = stack
    async with Client(gateway.extra["url"] + "/mcp", mode=mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("no_such_tool", {})
        assert caught.value.error.code == types.INVALID_PARAMS
        refused: list[tuple[str, dict[str, Any], str]] = [
            ("hash_content", {"data": 42}, "data"),
            ("hash_content", {}, "data"),
            ("p2p_hash_content", {"data": "x", "algorithm": "md5"}, "algorithm"),
            ("echo", {"message": "x", "unexpected": 1}, "unexpected"),
        ]
        for name, arguments, mentioned in refused:
            result = await client.call_tool(name, arguments)
            assert result.is_error, (name, arguments)
            text = first_text(result)
            assert text.startswith("invalid_arguments: ") and mentioned in text, (name, text)
            assert result.structured_content["error"]["code"] == "invalid_arguments"


async def test_handshake_client_hears_when_the_sidecar_catalog_arrives(tmp_path: Path) -> None:
    """Gateway first, sidecar later: a connected session is told the tool list changed."""
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with running(gateway):
        async with Client(gateway.extra["url"] + "/mcp", mode="legacy", message_handler=on_message) as client:
            before = {tool.name for tool in (await client.list_tools()).tools}
            assert "p2p_service_status" not in before
            with running(sidecar):
                with anyio.fail_after(10):
                    await changed.wait()
                after = {tool.name for tool in (await client.list_tools()).tools}
                assert "p2p_service_status" in after


async def test_modern_client_hears_catalog_changes_on_its_listen_stream(tmp_path: Path) -> None:
    """2026-07-28 era: change events arrive on a subscriptions/listen stream, not a session."""
    sidecar = sidecar_proc(tmp_path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"])
    with running(gateway):
        async with Client(gateway.extra["url"] + "/mcp", mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            async with client.listen(tools_list_changed=True) as subscription:
                with running(sidecar):
                    with anyio.fail_after(10):
                        event = await subscription.__anext__()
                    assert isinstance(event, ToolsListChanged)
                    names = {tool.name for tool in (await client.list_tools()).tools}
                    assert "p2p_service_status" in names


@pytest.mark.parametrize(
    ("json_response", "content_type"), [("true", "application/json"), ("false", "text/event-stream")]
)
async def test_answers_as_one_json_body_or_as_an_sse_stream_as_configured(
    tmp_path: Path,
    json_response: str,
    content_type: str,
) -> None:
    """GATEWAY_MCP_JSON_RESPONSE picks the answer's framing; both eras' clients read either."""
    gateway = gateway_proc(tmp_path, GATEWAY_MCP_JSON_RESPONSE=json_response)
    with running(gateway):
        url = gateway.extra["url"] + "/mcp"
        # handshake era: the modern one answers a quick call with JSON in either mode
        body, headers = legacy_call(legacy_session(gateway.extra["url"]), "echo", {"message": "hi"})
        async with httpx.AsyncClient() as http:
            answer = await http.post(url, json=body, headers=headers)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(content_type)
        for mode in MODES:
            async with Client(url, mode=mode) as client:
                result = await client.call_tool("echo", {"message": "hi", "repeat": 2})
            assert not result.is_error and result.structured_content["echo"] == "hi hi", mode
