"""/mcp where clients notice: versions, bodies that are not JSON-RPC, refusals, session limits, ping, progress.

Real gateway processes; the official Python SDK client in both eras, plus raw HTTP where the point is the
exact status, header or body a client gets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from tests.js_clients import FIXTURE_TOOLS
from tests.mcp_results import first_text
from tests.procs import Proc, gateway_proc, running, sidecar_proc

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
MODES = ["legacy", "auto"]
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
EVERY_VERSION = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Gateway with the fixture tools, and a sidecar serving slow_steps (a P2P tool that reports progress)."""
    tmp: Path = tmp_path_factory.mktemp("front-door")
    sidecar = sidecar_proc(tmp, SIDECAR_TOOL_DIRS=str(FIXTURE_TOOLS))
    proc = gateway_proc(
        tmp,
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_TOOL_DIRS=str(FIXTURE_TOOLS),
        GATEWAY_TOOL_CACHE_DIR="off",
    )
    with running(sidecar, proc):
        proc.health_url = proc.extra["url"] + "/health/ready"
        proc.wait_healthy(30)
        yield proc


def _initialize(http: httpx.Client, url: str, version: str = "2025-11-25") -> dict[str, str]:
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    answer = http.post(url, json=body, headers=ACCEPT)
    assert answer.status_code == 200, answer.text
    session = {"mcp-session-id": answer.headers["mcp-session-id"], "mcp-protocol-version": version}
    http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**ACCEPT, **session})
    return session


def _tools_list(http: httpx.Client, url: str, session: dict[str, str]) -> httpx.Response:
    return http.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers={**ACCEPT, **session})


def test_unsupported_protocol_version_is_400_naming_every_version_on_every_method(gateway: Proc) -> None:
    url = gateway.extra["url"] + "/mcp"
    with httpx.Client(timeout=10) as http:
        session = _initialize(http, url)
        bad = {**session, "mcp-protocol-version": "1999-01-01"}
        answers = {
            "GET": http.get(url, headers={**bad, "accept": "text/event-stream"}),
            "DELETE": http.delete(url, headers=bad),
            "POST": http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={**ACCEPT, **bad}),
        }
        for method, answer in answers.items():
            assert answer.status_code == 400, (method, answer.status_code, answer.text)
            error = answer.json()["error"]
            assert error["code"] == -32022, (method, error)
            assert "1999-01-01" in error["message"] and "_meta" not in error["message"], (method, error)
            assert error["data"] == {"supported": EVERY_VERSION, "requested": "1999-01-01"}
            assert "mcp-session-id" not in answer.headers
        # the refused DELETE did not end the session; a DELETE with a version it speaks does
        assert _tools_list(http, url, session).status_code == 200
        assert http.delete(url, headers=session).status_code == 200
        assert _tools_list(http, url, session).status_code == 404


def test_bodies_that_are_not_one_jsonrpc_message_get_32600_in_one_sentence(gateway: Proc) -> None:
    url = gateway.extra["url"] + "/mcp"
    with httpx.Client(timeout=10) as http:
        for version in ("2025-11-25", "2025-03-26"):
            session = _initialize(http, url, version)
            for body, words in [
                ({"hello": 1}, "not a JSON-RPC request"),
                ({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}, '"2.0"'),
                ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}, "'params'"),
                ([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}], "batches are not supported"),
                ([], "batches are not supported"),
                ("tools/list", "message object"),
            ]:
                answer = http.post(url, content=json.dumps(body), headers={**ACCEPT, **session})
                assert answer.status_code == 400, (version, body, answer.text)
                error = answer.json()["error"]
                assert error["code"] == -32600 and words in error["message"], (version, body, error)
                assert len(answer.content) < 300, answer.text  # a sentence, not a validation dump
            assert _tools_list(http, url, session).status_code == 200  # the session is unharmed
        # no session at all: same answers
        answer = http.post(url, content=b'{"hello": 1}', headers=ACCEPT)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == -32600
        # and the 2026-07-28 entry answers a batch the same way
        modern = {**ACCEPT, "mcp-protocol-version": "2026-07-28"}
        answer = http.post(url, content=b'[{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]', headers=modern)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == -32600


def test_refused_requests_carry_no_session_id(gateway: Proc) -> None:
    url = gateway.extra["url"] + "/mcp"
    list_request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with httpx.Client(timeout=10) as http:
        missing_session = http.post(url, json=list_request, headers=ACCEPT)
        assert missing_session.status_code == 400
        not_acceptable = http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
            headers={"content-type": "application/json", "accept": "text/html"},
        )
        assert not_acceptable.status_code == 406
        for answer in (missing_session, not_acceptable):
            assert "mcp-session-id" not in answer.headers, answer.headers


async def test_session_limit_answers_503_with_retry_after_and_modern_clients_still_work(tmp_path: Path) -> None:
    gateway = gateway_proc(tmp_path, GATEWAY_MCP_MAX_SESSIONS="3")
    url = gateway.extra["url"] + "/mcp"
    with running(gateway), httpx.Client(timeout=10) as http:
        sessions = [_initialize(http, url) for _ in range(3)]  # GATEWAY_MCP_MAX_SESSIONS=3
        try:
            body = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
            refused = http.post(url, json=body, headers=ACCEPT)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "5" and "mcp-session-id" not in refused.headers
            assert "sessions" in refused.json()["error"]["message"]
            with pytest.raises(Exception):  # noqa: B017 - the SDK client surfaces the refusal its own way
                async with Client(url, mode="legacy") as client:
                    await client.list_tools()
            async with Client(url, mode="auto") as client:  # 2026-07-28 requests hold no session
                assert not (await client.call_tool("echo", {"message": "hi"})).is_error
            metrics = http.get(gateway.extra["url"] + "/metrics").text
            assert 'gateway_limit_rejections_total{limit="mcp_sessions"}' in metrics
        finally:
            for session in sessions:
                http.delete(url, headers=session)
        _initialize(http, url)  # room again once sessions end


def test_idle_sessions_close_after_the_configured_timeout(tmp_path: Path) -> None:
    gateway = gateway_proc(tmp_path, GATEWAY_MCP_SESSION_IDLE_TIMEOUT="1")
    with running(gateway), httpx.Client(timeout=10) as http:
        url = gateway.extra["url"] + "/mcp"
        session = _initialize(http, url)
        assert _tools_list(http, url, session).status_code == 200
        time.sleep(2.5)
        assert _tools_list(http, url, session).status_code == 404


async def test_ping_in_each_era(gateway: Proc) -> None:
    url = gateway.extra["url"] + "/mcp"
    async with Client(url, mode="legacy") as client:
        with pytest.warns(MCPDeprecationWarning):  # the SDK's own note that 2026-07-28 removed ping
            assert isinstance(await client.send_ping(), types.EmptyResult)
    async with Client(url, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        with pytest.raises(MCPError) as caught, pytest.warns(MCPDeprecationWarning):
            await client.send_ping()
        # 2026-07-28 removed ping (SEP-2575): the spec's answer for a method the server does not implement
        assert caught.value.error.code == types.METHOD_NOT_FOUND
        assert "server/discover" in caught.value.error.message
    with httpx.Client(timeout=10) as http:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        headers = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "ping"}
        answer = http.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": meta}}, headers=headers
        )
        assert answer.status_code == 404 and answer.json()["error"]["code"] == -32601


@pytest.mark.parametrize("mode", MODES)
async def test_a_result_json_cannot_carry_is_a_tool_error(gateway: Proc, mode: str) -> None:
    url = gateway.extra["url"]
    async with Client(url + "/mcp", mode=mode) as client:
        for kind in ("object", "loop"):
            result = await client.call_tool("testkit.not_json", {"kind": kind})
            assert result.is_error, (kind, result)
            assert "cannot be encoded as JSON" in first_text(result)
    with httpx.Client(timeout=10) as http:
        answer = http.post(url + "/tools/execute/testkit.not_json", json={"kind": "object"})
        assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["code"] == "tool_error"
        answer = http.post(url + "/mcp/tools/call", json={"name": "testkit.not_json", "arguments": {"kind": "loop"}})
        assert answer.status_code == 200 and answer.json()["result"]["isError"] is True


async def test_progress_reaches_a_2026_client_from_a_p2p_tool_with_json_answers(gateway: Proc) -> None:
    """Answers are JSON bodies by default; a 2026-07-28 call with a progressToken is streamed so progress arrives."""
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(gateway.extra["url"] + "/mcp", mode="auto") as client:
        arguments = {"steps": 3, "seconds_per_step": 0.1, "label": "p"}
        result = await client.call_tool("testkit.slow_steps", arguments, progress_callback=on_progress)
    assert not result.is_error and result.structured_content["steps"] == 3
    assert [done for done, _, _ in seen] == [0, 1, 2, 3], seen
    assert all(total == 3 for _, total, _ in seen) and seen[-1][2] == "p: done"
