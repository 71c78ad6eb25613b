"""What the real-deployment tests share: podman, MCP calls through the gateway, waiting, figures.

Run by ``make test-deploy`` (``deploy/scripts/test-deploy.sh``), which builds the image first
and names it in ``MCP_P2P_TEST_IMAGE``; these tests never build or pull anything themselves.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# podman writes this on every container start/stop when no systemd manages its health-check
# timers (no systemd as PID 1 here); it is noise, not an error of ours.
NOISE = ("unable to get systemd connection", "Removing timer for container", "failed to connect to syslog")


def image() -> str:
    name = os.environ.get("MCP_P2P_TEST_IMAGE")
    if not name:
        raise RuntimeError("MCP_P2P_TEST_IMAGE is not set: run these tests with `make test-deploy`")
    return name


def unique(prefix: str) -> str:
    """A name no other run on this machine uses (tests of several worktrees may run at once)."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


def clean(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not any(noise in line for noise in NOISE))


def podman(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    result.stderr = clean(result.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def http_get(url: str, *, timeout: float = 3.0, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_http(url: str, timeout: float, *, status: int = 200, what: str = "") -> float:
    """Poll ``url`` until it answers ``status``; return the seconds it took."""
    start = time.monotonic()
    last: Any = None
    while time.monotonic() - start < timeout:
        try:
            code, body = http_get(url, timeout=2)
            if code == status:
                return time.monotonic() - start
            last = (code, body)
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what or url} did not answer {status} within {timeout}s (last: {last})")


def rest_call(url: str, tool: str, arguments: dict[str, Any], token: str, timeout: float = 30) -> tuple[int, Any]:
    """One plain REST call (POST /tools/execute/{tool}), for the drain checks."""
    request = urllib.request.Request(f"{url}/tools/execute/{tool}", data=json.dumps(arguments).encode(), method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


async def _mcp_session(url: str, token: str, mode: str, message: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        names = {tool.name for tool in (await client.list_tools()).tools}
        echo = await client.call_tool("p2p_echo", {"message": message})
        status = await client.call_tool("p2p_service_status", {"include_peers": True})
    assert not echo.is_error and not status.is_error, (echo, status)
    return {"tools": names, "echo": echo.structured_content, "status": status.structured_content}


def mcp_p2p_calls(url: str, token: str) -> dict[str, dict[str, Any]]:
    """With the official MCP client, in both protocol eras: list tools, call two P2P tools."""
    results = {}
    for mode in ("legacy", "auto"):
        message = f"through the gateway ({mode}) {secrets.token_hex(4)}"
        result = anyio.run(_mcp_session, f"{url}/mcp", token, mode, message)
        assert {"p2p_echo", "p2p_service_status", "hash_content"} <= result["tools"]
        assert result["echo"]["message"] == message
        assert result["status"]["status"] == "running" and result["status"]["bridge"]["gateways"] >= 1
        results[mode] = result
    return results


def record(name: str, value: str) -> None:
    """A measured figure for the summary make test-deploy prints (and deploy/README.md quotes)."""
    path = os.environ.get("MCP_P2P_FIGURES")
    line = f"{name}: {value}"
    print(line)
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")
