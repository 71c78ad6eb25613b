"""The official MCP conformance suite (@modelcontextprotocol/conformance) against the real gateway.

Its server scenarios that apply to a tool server run twice: with the fixture tools (conformance_tools/)
in the gateway and answers as single JSON bodies (the default), and with the same tools served by the
sidecar as P2P tools and answers streamed as SSE, so images, audio, embedded resources and progress
notifications are shown to cross the bridge.  Scenarios for resources, prompts, logging, completion,
sampling and elicitation are not run: this server offers none of those (tools only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.js_clients import CONFORMANCE, FIXTURE_TOOLS, run_node
from tests.procs import Proc, gateway_proc, running, sidecar_proc

pytestmark = pytest.mark.e2e

PROTOCOL_SCENARIOS = [
    "server-initialize",
    "ping",
    "tools-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
]
TOOL_SCENARIOS = [
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-error",
    "json-schema-2020-12",
]
PROGRESS = "tools-call-with-progress"


def _run_scenarios(url: str, scenarios: list[str], out: Path) -> None:
    failures = []
    for scenario in scenarios:
        done = run_node(CONFORMANCE, "server", "--url", url, "--scenario", scenario, "-o", str(out / scenario))
        if done.returncode != 0:
            failures.append(f"{scenario}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def local_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("conformance-local")
    gateway = gateway_proc(tmp, GATEWAY_TOOL_DIRS=str(FIXTURE_TOOLS), GATEWAY_TOOL_CACHE_DIR="off")
    with running(gateway):
        yield gateway


@pytest.fixture(scope="module")
def p2p_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("conformance-p2p")
    sidecar = sidecar_proc(tmp, SIDECAR_TOOL_DIRS=str(FIXTURE_TOOLS), CONFORMANCE_TOOLS_RUNTIME="trio")
    gateway = gateway_proc(
        tmp,
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_MCP_JSON_RESPONSE="false",
        GATEWAY_TOOL_CACHE_DIR="off",
        CONFORMANCE_TOOLS_RUNTIME="trio",
    )
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield gateway


def test_protocol_and_tool_scenarios_with_gateway_tools(local_fixtures: Proc, tmp_path: Path) -> None:
    _run_scenarios(local_fixtures.extra["url"] + "/mcp", PROTOCOL_SCENARIOS + TOOL_SCENARIOS, tmp_path)


def test_tool_scenarios_with_p2p_tools_across_the_bridge(p2p_fixtures: Proc, tmp_path: Path) -> None:
    """The same fixtures as P2P tools: binary content and progress notifications come through the sidecar."""
    _run_scenarios(p2p_fixtures.extra["url"] + "/mcp", [*TOOL_SCENARIOS, PROGRESS], tmp_path)
