"""One trace across four processes: gateway A -> sidecar A -> (libp2p) -> sidecar B -> gateway B.

Two nodes with gateways export their spans over OTLP/HTTP to a real receiver
that decodes the protocol's protobuf (``tests/otlp_receiver.py``).  A remote
call made with a ``traceparent`` header must come back as one trace, with
spans from all four processes, each hop parented on the one before it; the
log lines about the call carry the trace id and a call id in every process.
With export off, nothing is exported but the caller's trace id still reaches
every process's log lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.procs import Peer, free_port, http_json, p2p_network, running_network, wait_for

pytestmark = pytest.mark.e2e

SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def remote_call(a: Peer, b: Peer, header: str, arguments: dict[str, object]) -> tuple[int, object]:
    body = {"tool_name": "hash_content", "args": arguments, "remote_peer_id": b.peer_id, "timeout_s": 10}
    assert a.gateway is not None
    url = f"{a.gateway.extra['url']}/tools/execute/p2p_remote_call_tool"
    return http_json("POST", url, body, timeout=30, headers={"traceparent": header})


def two_nodes(tmp: Path, **export: str) -> dict[str, Peer]:
    debug = {"SIDECAR_LOG_LEVEL": "debug"}
    return p2p_network(
        tmp,
        ["a", "b"],
        bootstrap={"b": ["a"]},
        gateways=("a", "b"),
        env={"a": debug, "b": {**debug, "SIDECAR_REMOTE_TOOLS_ALLOW": "echo,hash_content"}},
        gateway_env={"GATEWAY_LOG_LEVEL": "debug", **{f"GATEWAY_{k}": v for k, v in export.items()}},
        **{f"SIDECAR_{k}": v for k, v in export.items()},
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver(free_port()) as found:
        yield found


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[dict[str, Peer]]:
    peers = two_nodes(tmp_path_factory.mktemp("traced"), OTLP_ENDPOINT=receiver.url)
    with running_network(peers):
        peers["a"].wait_connected([peers["b"]])
        yield peers


def process_of(span: ReceivedSpan, peers: dict[str, Peer]) -> str:
    for peer in peers.values():
        for proc in peer.procs():
            if span.instance.endswith(f":{proc.pid}"):
                return proc.name
    raise AssertionError(f"span {span.name} from an unknown process {span.service} {span.instance}")


def complete_trace(
    receiver: OtlpReceiver, trace_id: str, caller_span: str, peers: dict[str, Peer], wanted: set[tuple[str, str]]
) -> list[ReceivedSpan] | None:
    """The trace's spans once the ``wanted`` (process, name) spans are in and every span hangs under the caller.

    Each process exports on its own schedule and a parent span ends (and is exported)
    after its children, so "some span from each process arrived" is not yet the whole
    trace: wait until no received span points at a parent that has not arrived.
    """
    spans = receiver.trace(trace_id)
    ids = {span.span_id for span in spans}
    if any(span.parent_span_id not in ids and span.parent_span_id != caller_span for span in spans):
        return None
    names = {(process_of(span, peers), span.name) for span in spans}
    return spans if wanted <= names else None


def test_a_remote_call_is_one_trace_across_four_processes(traced: dict[str, Peer], receiver: OtlpReceiver) -> None:
    a, b = traced["a"], traced["b"]
    header, trace_id, caller_span = traceparent()
    status, body = remote_call(a, b, header, {"data": "traced"})
    assert status == 200, body

    wanted = {("b-gateway", "tool hash_content"), ("a-gateway", "bridge call p2p_remote_call_tool")}
    spans = wait_for(
        lambda: complete_trace(receiver, trace_id, caller_span, traced, wanted),
        20,
        0.2,
        what="spans of the call from all four processes",
    )
    by_id = {span.span_id: span for span in spans}

    def chain_from(span: ReceivedSpan) -> list[tuple[str, str]]:
        """(process, span name) from ``span`` up to the root of the trace in this process group."""
        chain = [(process_of(span, traced), span.name)]
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            chain.append((process_of(span, traced), span.name))
        assert span.parent_span_id == caller_span, "the trace's root hangs under the caller's traceparent"
        return chain

    [tool_b] = [s for s in spans if process_of(s, traced) == "b-gateway" and s.name == "tool hash_content"]
    assert tool_b.kind == SPAN_KIND_SERVER and tool_b.attributes["mcp.tool"] == "hash_content"
    hops = [step for step in chain_from(tool_b)]
    # each process's span is parented on the span of the process before it: gateway B <- sidecar B <- (libp2p)
    # <- sidecar A <- gateway A <- the caller
    assert hops[:6] == [
        ("b-gateway", "tool hash_content"),
        ("b", "bridge call hash_content"),
        ("b", "p2p call_tool"),
        ("a", "p2p call_tool"),
        ("a", "tool p2p_remote_call_tool"),
        ("a-gateway", "bridge call p2p_remote_call_tool"),
    ], hops
    assert all(process == "a-gateway" for process, _ in hops[6:]), hops  # the HTTP request's span on top
    kinds = {(process_of(s, traced), s.name): s.kind for s in spans}
    assert kinds[("a", "p2p call_tool")] == SPAN_KIND_CLIENT and kinds[("b", "p2p call_tool")] == SPAN_KIND_SERVER
    assert kinds[("a-gateway", "bridge call p2p_remote_call_tool")] == SPAN_KIND_CLIENT
    assert len({s.service for s in spans}) == 2 and len({s.instance for s in spans}) == 4


def test_every_process_logs_the_call_with_trace_and_call_id(traced: dict[str, Peer]) -> None:
    a, b = traced["a"], traced["b"]
    header, trace_id, _ = traceparent()
    status, body = remote_call(a, b, header, {"data": 5})  # refused by gateway B: every hop logs the failure
    assert status == 422, body
    tagged = re.compile(rf"\[trace={trace_id} call=(\S+)\]")

    def call_ids(proc_log: Path) -> set[str]:
        return {match.group(1) for match in tagged.finditer(proc_log.read_text(errors="replace"))}

    for peer in (a, b):
        for proc in peer.procs():
            found = wait_for(lambda proc=proc: call_ids(proc.log_path), 10, 0.2, what=f"{proc.name} logging the call")
            assert "-" not in found, f"{proc.name} logged a line of the call without a call id"
    # gateway A and sidecar A know the call by the same id; gateway B's id for it starts with sidecar B's
    assert a.gateway is not None and b.gateway is not None
    assert call_ids(a.gateway.log_path) & call_ids(a.sidecar.log_path)
    b_sidecar = call_ids(b.sidecar.log_path)
    assert all(any(g.startswith(f"{s}>") for s in b_sidecar) for g in call_ids(b.gateway.log_path)), b_sidecar


def test_with_export_off_the_callers_trace_still_reaches_every_process(tmp_path: Path) -> None:
    peers = two_nodes(tmp_path)
    with running_network(peers):
        a, b = peers["a"], peers["b"]
        a.wait_connected([b])
        header, trace_id, _ = traceparent()
        status, _ = remote_call(a, b, header, {"data": 5})
        assert status == 422
        for proc in [*a.procs(), *b.procs()]:
            wait_for(lambda proc=proc: f"[trace={trace_id} " in proc.log_path.read_text(), 10, 0.2, what=proc.name)


def test_a_task_run_on_another_peer_is_in_the_trace_that_submitted_it(
    traced: dict[str, Peer], receiver: OtlpReceiver
) -> None:
    a, b = traced["a"], traced["b"]
    header, trace_id, caller_span = traceparent()
    submit = {
        "task_type": "tool",
        "payload": {"tool": "hash_content", "arguments": {"data": "queued"}},
        "metadata": {"placement": {"peer": b.peer_id}},
    }
    assert a.gateway is not None
    status, body = http_json(
        "POST", f"{a.gateway.extra['url']}/tools/execute/task_submit", submit, headers={"traceparent": header}
    )
    assert status == 200, body
    task_id = body["result"]["task_id"]

    assert a.gateway is not None
    gateway_url = a.gateway.extra["url"]

    def done() -> bool:
        _, view = http_json("POST", f"{gateway_url}/tools/execute/task_status", {"task_id": task_id})
        return view["result"]["status"] == "completed"

    wait_for(done, 30, 0.2, what="the task completed on b")

    wanted = {
        ("a-gateway", "bridge call task_submit"),
        ("a", "tool task_submit"),
        ("b", "task queued"),
        ("b", "task tool"),
        ("b", "bridge call hash_content"),
        ("b-gateway", "tool hash_content"),
    }

    def whole() -> list[ReceivedSpan] | None:
        return complete_trace(receiver, trace_id, caller_span, traced, wanted)

    spans = wait_for(whole, 20, 0.2, what="the task's spans in the submitting trace")
    by_name = {(process_of(span, traced), span.name): span for span in spans}
    submitted = by_name[("a", "tool task_submit")]
    ran, queued = by_name[("b", "task tool")], by_name[("b", "task queued")]
    assert ran.parent_span_id == queued.parent_span_id == submitted.span_id
    assert ran.kind == 5 and ran.attributes["mcp_p2p.task.id"] == task_id  # CONSUMER
    assert ran.attributes["mcp_p2p.task.owner"] == a.peer_id
    # whatever the task called is beneath it: b's gateway ran the tool for it
    tool_b = by_name[("b-gateway", "tool hash_content")]
    assert by_name[("b", "bridge call hash_content")].span_id == tool_b.parent_span_id
    assert by_name[("b", "bridge call hash_content")].parent_span_id == ran.span_id
    root = by_name[("a-gateway", "bridge call task_submit")]
    assert submitted.parent_span_id == root.span_id and caller_span in {s.parent_span_id for s in spans}


def test_an_mcp_call_joins_the_trace_of_its_http_request(traced: dict[str, Peer], receiver: OtlpReceiver) -> None:
    a, b = traced["a"], traced["b"]
    assert a.gateway is not None
    header, trace_id, caller_span = traceparent()
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "trace-test", "version": "1"},
    }
    arguments = {"tool_name": "echo", "args": {"message": "traced"}, "remote_peer_id": b.peer_id}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "p2p_remote_call_tool", "arguments": arguments, "_meta": meta},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "p2p_remote_call_tool",
        "traceparent": header,
    }
    status, answer = http_json("POST", a.gateway.extra["url"] + "/mcp", body, headers=headers)
    assert status == 200 and not answer["result"].get("isError"), answer

    wanted = {
        ("a-gateway", "tools/call p2p_remote_call_tool"),
        ("a-gateway", "bridge call p2p_remote_call_tool"),
        ("b-gateway", "tool echo"),
    }

    def whole() -> list[ReceivedSpan] | None:
        return complete_trace(receiver, trace_id, caller_span, traced, wanted)

    spans = wait_for(whole, 20, 0.2, what="the MCP call's spans")
    by_id = {span.span_id: span for span in spans}
    [mcp_span] = [s for s in spans if s.name == "tools/call p2p_remote_call_tool"]
    assert process_of(mcp_span, traced) == "a-gateway"
    [bridge] = [s for s in spans if s.name == "bridge call p2p_remote_call_tool"]
    assert bridge.parent_span_id == mcp_span.span_id  # the router's span under the MCP SDK's
    chain = mcp_span
    while chain.parent_span_id in by_id:
        chain = by_id[chain.parent_span_id]
    assert chain.parent_span_id == caller_span  # under the HTTP request's span, under the caller's
