"""The seed's REST face: same paths, same shapes, local and P2P tools alike.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import pytest

from tests.procs import Proc, http_json

pytestmark = pytest.mark.e2e
CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def test_tools_list_has_seed_shape(stack: tuple[Proc, Proc]) -> None:
    gateway, _ = stack
    status, body = http_json("GET", gateway.extra["url"] + "/tools/list")
    assert status == 200
    assert set(body) == {"tools", "count", "categories"}
    assert body["count"] == len(body["tools"])
    names = [tool["name"] for tool in body["tools"]]
    assert names == sorted(names)
    runtimes = {tool["name"]: tool["runtime"] for tool in body["tools"]}
    assert runtimes["hash_content"] == "local" and runtimes["p2p_service_status"] == "p2p"
    assert "p2p_service_status" in body["categories"]["p2p"]


@pytest.mark.parametrize("tool", ["hash_content", "p2p_hash_content"])
def test_execute_local_and_p2p(stack: tuple[Proc, Proc], tool: str) -> None:
    gateway, _ = stack
    status, body = http_json("POST", f"{gateway.extra['url']}/tools/execute/{tool}", {"data": "hello world"})
    assert status == 200, body
    assert body["tool"] == tool and body["status"] == "success"
    assert body["result"]["cid"] == CID


def test_execute_errors_have_statuses(stack: tuple[Proc, Proc]) -> None:
    url = stack[0].extra["url"]
    status, body = http_json("POST", f"{url}/tools/execute/nope", {})
    assert status == 404 and body["error"]["code"] == "unknown_tool"
    status, body = http_json("POST", f"{url}/tools/execute/hash_content", {"data": 1})
    assert status == 422 and body["error"]["code"] == "invalid_arguments"
    status, body = http_json("POST", f"{url}/tools/execute/p2p_hash_content", {"data": "x", "algorithm": "md5"})
    assert status == 422 and body["error"]["code"] == "invalid_arguments"
    status, body = http_json("POST", f"{url}/tools/execute/hash_content", b"{not json")
    assert status == 422
    status, body = http_json("POST", f"{url}/tools/execute/hash_content", [1, 2])
    assert status == 422


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_mcp_tools_list_jsonrpc_shape(stack: tuple[Proc, Proc], method: str) -> None:
    url = stack[0].extra["url"]
    status, body = http_json(method, f"{url}/mcp/tools/list", {"jsonrpc": "2.0", "id": 7} if method == "POST" else None)
    assert status == 200 and body["jsonrpc"] == "2.0"
    tools = body["result"]["tools"]
    assert all(set(tool) == {"name", "description", "inputSchema"} for tool in tools)
    assert {"hash_content", "p2p_service_status"} <= {tool["name"] for tool in tools}


def test_mcp_tools_call_shapes_and_codes(stack: tuple[Proc, Proc]) -> None:
    url = stack[0].extra["url"] + "/mcp/tools/call"
    status, body = http_json("POST", url, {"name": "p2p_hash_content", "arguments": {"data": "hello world"}})
    assert status == 200 and body["result"]["isError"] is False
    assert body["result"]["structuredContent"]["cid"] == CID
    assert body["result"]["content"][0]["type"] == "text"
    # a full JSON-RPC request body is accepted too, and its id echoed
    request = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hi"}},
    }
    status, body = http_json("POST", url, request)
    assert status == 200 and body["id"] == 3 and body["result"]["structuredContent"]["message"] == "hi"
    status, body = http_json("POST", url, {"name": "nope", "arguments": {}})
    assert body["error"]["code"] == -32601
    status, body = http_json("POST", url, {"name": "echo", "arguments": {"message": 5}})
    assert body["error"]["code"] == -32602
    status, body = http_json("POST", url, {"name": "echo", "arguments": "not an object"})
    assert body["error"]["code"] == -32602
    status, body = http_json("POST", url, b"{broken")
    assert status == 400 and body["error"]["code"] == -32700
    status, body = http_json("POST", url, [1])
    assert body["error"]["code"] == -32600


def test_health_ready_and_metrics(stack: tuple[Proc, Proc]) -> None:
    gateway, sidecar = stack
    status, body = http_json("GET", gateway.extra["url"] + "/health/ready")
    assert status == 200 and body["ready"] is True and body["bridge"]["state"] == "up"
    status, text = http_json("GET", gateway.extra["url"] + "/metrics")
    assert status == 200 and "gateway_tool_calls_total" in text and "gateway_bridge_up 1.0" in text
    status, body = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/health")
    assert status == 200 and body["status"] == "ok"
    status, text = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics")
    assert status == 200 and "sidecar_tool_calls_total" in text


def test_meta_tools_browse_and_dispatch_p2p(stack: tuple[Proc, Proc]) -> None:
    url = stack[0].extra["url"] + "/tools/execute/"
    _, body = http_json("POST", url + "tools_list_categories", {"include_count": True})
    categories = {entry["name"]: entry["tool_count"] for entry in body["result"]["categories"]}
    assert categories["p2p"] >= 2 and categories["tools"] == 4
    _, body = http_json("POST", url + "tools_list_tools", {"category": "content"})
    assert {"hash_content", "p2p_hash_content"} <= {tool["name"] for tool in body["result"]["tools"]}
    _, body = http_json("POST", url + "tools_get_schema", {"category": "p2p", "tool": "p2p_echo"})
    assert body["result"]["schema"]["input_schema"]["required"] == ["message"]
    params = {"message": "via dispatch", "ignored_extra": True}
    _, body = http_json("POST", url + "tools_dispatch", {"category": "p2p", "tool": "p2p_echo", "params": params})
    assert body["result"] == {"message": "via dispatch", "delay_ms": 0}
