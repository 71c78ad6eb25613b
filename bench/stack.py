"""Start the real processes for a benchmark: the same helpers the end-to-end tests use."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


@contextlib.contextmanager
def bench_stack(tmp: Path, **gateway_env: str) -> Iterator[tuple[Proc, Proc]]:
    sidecar = sidecar_proc(tmp, SIDECAR_LOG_LEVEL="warning")
    gateway = gateway_proc(tmp, endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning", **gateway_env)
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 30, what="gateway ready")
        yield gateway, sidecar


def modern_call(tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A self-contained 2026-07-28 tools/call request and the headers that route it."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    }
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool}
    return body, headers


def legacy_session(url: str) -> str:
    """Open a handshake-era session (initialize + initialized) and return its Mcp-Session-Id."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
    }
    headers = {"content-type": "application/json", "accept": ACCEPT}
    request = urllib.request.Request(url + "/mcp", data=json.dumps(init).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        session = response.headers["mcp-session-id"]
        response.read()
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = {**headers, "mcp-session-id": session, "mcp-protocol-version": HANDSHAKE}
    request = urllib.request.Request(url + "/mcp", data=json.dumps(note).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    return session


def legacy_call(session: str, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    headers = {"accept": ACCEPT, "mcp-session-id": session, "mcp-protocol-version": HANDSHAKE}
    return body, headers


def wait_ready_seconds(start: float, url: str, timeout: float = 30.0) -> float:
    deadline = start + timeout
    while time.monotonic() < deadline:
        try:
            if http_json("GET", url + "/health/ready", timeout=0.5)[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"not ready within {timeout}s")
