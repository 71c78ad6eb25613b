"""Agent-like traffic for locust: mostly tool calls, some listing, through REST and /mcp.

Point it at any gateway:

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000
    LOCUST_AUTH_TOKEN=secret locust -f loadtests/locustfile.py --host https://gateway.example

`make loadtest` starts a gateway and a sidecar on free ports and runs this headless.
Weights: an agent lists tools once in a while and calls tools often; P2P and local
tools are called about equally; a few calls go through the seed's REST face.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import json
import os
import random
import string
from typing import Any

from locust import FastHttpUser, between, task

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
PAYLOAD = "".join(random.choices(string.ascii_letters, k=1024))


def _auth() -> dict[str, str]:
    token = os.environ.get("LOCUST_AUTH_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def _sse_json(text: str) -> dict[str, Any]:
    """Handshake-era /mcp answers a POST with one SSE event; modern-era quick answers are plain JSON."""
    if text.lstrip().startswith(("event:", "data:")):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    return json.loads(text)


class AgentUser(FastHttpUser):
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.headers = {"content-type": "application/json", "accept": ACCEPT, **_auth()}
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE,
                "capabilities": {},
                "clientInfo": {"name": "locust", "version": "1"},
            },
        }
        with self.client.post(
            "/mcp", json=init, headers=self.headers, name="/mcp initialize", catch_response=True
        ) as r:
            self.session = r.headers.get("mcp-session-id", "")
            if not self.session:
                r.failure("no Mcp-Session-Id in the initialize answer")
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        self.client.post("/mcp", json=note, headers=self._legacy(), name="/mcp initialized")

    def _legacy(self) -> dict[str, str]:
        return {**self.headers, "mcp-session-id": self.session, "mcp-protocol-version": HANDSHAKE}

    def _mcp_call(self, tool: str, arguments: dict[str, Any], *, modern: bool) -> None:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if modern:
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "locust", "version": "1"},
            }
            headers = {**self.headers, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool}
        else:
            headers = self._legacy()
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        era = MODERN if modern else HANDSHAKE
        with self.client.post("/mcp", json=body, headers=headers, name=f"/mcp {era} {tool}", catch_response=True) as r:
            try:
                answer = _sse_json(r.text)
            except (ValueError, StopIteration):
                r.failure(f"unreadable answer: {r.text[:200]!r}")
                return
            if "error" in answer or answer.get("result", {}).get("isError"):
                r.failure(json.dumps(answer)[:300])

    @task(2)
    def list_tools(self) -> None:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "locust", "version": "1"},
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
        headers = {**self.headers, "mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
        self.client.post("/mcp", json=body, headers=headers, name="/mcp tools/list")

    @task(1)
    def rest_list(self) -> None:
        self.client.get("/tools/list", headers=_auth())

    @task(6)
    def local_tool_mcp(self) -> None:
        self._mcp_call("hash_content", {"data": PAYLOAD}, modern=random.random() < 0.5)

    @task(6)
    def p2p_tool_mcp(self) -> None:
        self._mcp_call("p2p_hash_content", {"data": PAYLOAD}, modern=random.random() < 0.5)

    @task(2)
    def p2p_status(self) -> None:
        self._mcp_call("p2p_service_status", {"include_peers": True, "peers_limit": 10}, modern=True)

    @task(3)
    def rest_execute(self) -> None:
        tool = random.choice(["hash_content", "p2p_hash_content"])
        with self.client.post(
            f"/tools/execute/{tool}",
            json={"data": PAYLOAD},
            headers=_auth(),
            name="/tools/execute",
            catch_response=True,
        ) as r:
            if r.status_code != 200 or r.json().get("status") != "success":
                r.failure(r.text[:300])
