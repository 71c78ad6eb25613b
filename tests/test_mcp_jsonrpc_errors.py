"""Raw HTTP at /mcp: malformed JSON-RPC gets the codes the spec names, never a 500."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.procs import Proc

pytestmark = pytest.mark.e2e
MODERN = "2026-07-28"
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={**HEADERS, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    text = raw.decode(errors="replace")
    if "data:" in text and text.lstrip().startswith(("event:", "data:")):  # an SSE-framed single response
        text = next(line[5:].strip() for line in text.splitlines() if line.startswith("data:"))
    try:
        return status, json.loads(text), got
    except ValueError:
        return status, text, got


def _initialize(url: str) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    status, _, headers = _post(url, json.dumps(body).encode())
    assert status == 200
    session = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
    _post(
        url, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(), {"mcp-session-id": session}
    )
    return session


def _modern_envelope(method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> bytes:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    }
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": meta}}
    ).encode()


def test_handshake_era_errors(stack: tuple[Proc, Proc]) -> None:
    url = stack[0].extra["url"] + "/mcp"
    status, body, _ = _post(url, b"{not json")
    assert status == 400 and body["error"]["code"] == -32700
    status, body, _ = _post(url, b'{"jsonrpc": "2.0", "id": 1}')
    assert status == 400 and body["error"]["code"] == -32600

    session = {"mcp-session-id": _initialize(url)}
    cases = [
        ({"jsonrpc": "2.0", "id": 2, "method": "no/such/method"}, -32601),
        ({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}, -32602),
        ({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"arguments": {}}}, -32602),
    ]
    for request, code in cases:
        status, body, _ = _post(url, json.dumps(request).encode(), session)
        assert status < 500, (request, status, body)
        assert body["error"]["code"] == code, (request, body)
    # Arguments that do not fit the schema are tool execution errors (SEP-1303), local and P2P alike.
    for request_id, name, arguments in [(4, "echo", {"message": []}), (5, "p2p_echo", {"delay_ms": "x"})]:
        request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call"}
        request["params"] = {"name": name, "arguments": arguments}
        status, body, _ = _post(url, json.dumps(request).encode(), session)
        assert status == 200, (request, status, body)
        result = body["result"]
        assert result["isError"] is True and result["structuredContent"]["error"]["code"] == "invalid_arguments"
        assert result["content"][0]["text"].startswith("invalid_arguments: "), result
    status, body, _ = _post(url, b"[broken", session)
    assert status == 400 and body["error"]["code"] == -32700


def test_modern_era_errors(stack: tuple[Proc, Proc]) -> None:
    url = stack[0].extra["url"] + "/mcp"
    version = {"mcp-protocol-version": MODERN}
    status, body, _ = _post(url, b"{nope", version)
    assert status == 400 and body["error"]["code"] == -32700
    status, body, _ = _post(
        url,
        _modern_envelope("tools/call", {"name": "nope", "arguments": {}}),
        {**version, "mcp-method": "tools/call", "mcp-name": "nope"},
    )
    assert status < 500 and body["error"]["code"] == -32602
    status, body, _ = _post(
        url,
        _modern_envelope("tools/call", {"name": "echo", "arguments": {"message": 1}}),
        {**version, "mcp-method": "tools/call", "mcp-name": "echo"},
    )
    assert status == 200 and body["result"]["isError"] is True, body
    assert "message" in body["result"]["content"][0]["text"]
    status, body, _ = _post(url, _modern_envelope("bogus/method"), {**version, "mcp-method": "bogus/method"})
    assert status < 500 and body["error"]["code"] == -32601
    status, body, _ = _post(url, _modern_envelope("tools/list"), {**version, "mcp-method": "tools/list"})
    assert status == 200 and any(tool["name"] == "p2p_echo" for tool in body["result"]["tools"])


def test_host_and_origin_checks(stack: tuple[Proc, Proc]) -> None:
    url = stack[0].extra["url"] + "/mcp"
    status, _, _ = _post(url, _modern_envelope("tools/list"), {"origin": "http://evil.example"})
    assert status == 403
    status, _, _ = _post(url, _modern_envelope("tools/list"), {"host": "evil.example:80"})
    assert status == 421
