"""The adapter from the libp2p node to the queue's ``PeerRpc``, on its own (no network; the e2e tests use it for real).

What is checked here is the translation at the boundary: which node errors mean "no answer" and which
"the peer said no", ``BadRequest`` becoming an error reply, who counts as a capable peer, what is advertised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from p2p_sidecar.node.host import Node
from p2p_sidecar.node.liveness import LivenessPolicy
from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.node.peers import PeerState
from p2p_sidecar.node.rpc_server import RpcContext
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.taskqueue.peer_rpc import NodePeerRpc
from p2p_sidecar.taskqueue.protocol import BadRequest, PeerOpFailed, PeerRpc, PeerUnreachable, batch_budget
from shared_schema import BridgeError, ErrorCode

P1 = "12D3KooWBE2ucXFS2cfStcm8tNA3PqaHCw1wchf3US3k8kUoVGWg"
P2 = "12D3KooWFTqGwDGmH9ahr7yvLdrsTVS2z3KMTW5iAWVJtaQ11S4j"
P3 = "12D3KooWMrZ9H4wV7dodAN3Y9dmepy32kqECUJgA6hWtAidwsNMc"


async def no_gateway(tool: str, args: dict[str, Any], timeout: float) -> Any:
    raise AssertionError("not called")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(
        SidecarSettings(data_dir=tmp_path, network_open=True),  # open: every peer here counts as a member
        NodeMetrics(CollectorRegistry()),
        gateway_tools=list,
        gateway_connected=lambda: False,
        call_gateway=no_gateway,
    )


def test_it_is_a_peer_rpc_named_by_the_node(node: Node) -> None:
    rpc = NodePeerRpc(node)
    assert isinstance(rpc, PeerRpc) and rpc.local_peer_id == node.peer_id


def test_ops_are_served_on_the_node_and_bad_requests_become_error_replies(node: Node) -> None:
    rpc = NodePeerRpc(node)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def claim(peer: str, body: dict[str, Any]) -> dict[str, Any]:
        if "max" not in body:
            raise BadRequest("max must be an integer from 1 to 256")
        seen.append((peer, body))
        return {"tasks": []}

    rpc.register_op("queue.claim", claim)
    assert "queue.claim" in node.rpc.ops
    served = node.rpc._ops["queue.claim"]  # what the node runs for an inbound request of that op
    context = RpcContext(P1, 7, "queue.claim", 5.0)
    assert trio.run(served, context, {"max": 3}) == {"tasks": []} and seen == [(P1, {"max": 3})]
    with pytest.raises(BridgeError) as refused:
        trio.run(served, context, {})
    assert refused.value.code is ErrorCode.INVALID_ARGUMENTS and "max must be" in refused.value.message


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (ErrorCode.UNAVAILABLE, PeerUnreachable),
        (ErrorCode.TIMEOUT, PeerUnreachable),
        (ErrorCode.BUSY, PeerUnreachable),
        (ErrorCode.BAD_FRAME, PeerUnreachable),
        (ErrorCode.INVALID_ARGUMENTS, PeerOpFailed),
        (ErrorCode.UNKNOWN_TOOL, PeerOpFailed),
        (ErrorCode.INTERNAL, PeerOpFailed),
        (ErrorCode.TOO_LARGE, PeerOpFailed),
    ],
)
def test_node_errors_become_unreachable_or_op_failed(
    node: Node, monkeypatch: pytest.MonkeyPatch, code: ErrorCode, raised: type[Exception]
) -> None:
    async def call(peer_id: str, op: str, args: dict[str, Any], *, timeout: float) -> Any:
        raise BridgeError(code, "what the node said")

    monkeypatch.setattr(node, "call", call)
    with pytest.raises(raised, match="what the node said"):
        trio.run(lambda: NodePeerRpc(node).request(P1, "queue.claim", {}, timeout=1.0))


def test_a_reply_that_is_not_a_map_is_an_op_failure(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    async def call(peer_id: str, op: str, args: dict[str, Any], *, timeout: float) -> Any:
        assert (peer_id, op, args, timeout) == (P1, "queue.hint", {"types": ["echo"]}, 2.0)
        return ["not", "a", "map"]

    monkeypatch.setattr(node, "call", call)
    with pytest.raises(PeerOpFailed):
        trio.run(lambda: NodePeerRpc(node).request(P1, "queue.hint", {"types": ["echo"]}, timeout=2.0))


def test_a_peer_the_node_does_not_know_is_unreachable(node: Node) -> None:
    with pytest.raises(PeerUnreachable, match="not known"):
        trio.run(lambda: NodePeerRpc(node).request(P1, "queue.claim", {}, timeout=1.0))


def test_capable_peers_are_live_ones_that_advertise_the_type(node: Node) -> None:
    policy = LivenessPolicy(1.0, 3.0)
    for peer_id, types in ((P1, ["echo", "hash"]), (P2, ["hash"]), (P3, ["hash"])):
        record = node.table.ensure(peer_id, now=0.0, source="test")
        assert record is not None
        record.capabilities = {"tools": [], "task_types": types}
        policy.connected(record, 0.0, 1000.0)
    gone = node.table.get(P3)
    assert gone is not None
    gone.state = PeerState.GONE
    rpc = NodePeerRpc(node)
    assert sorted(rpc.peers_with_capability("hash")) == sorted([P1, P2])
    assert rpc.peers_with_capability("echo") == [P1] and rpc.peers_with_capability("sleep") == []


def test_advertise_replaces_the_task_types_and_changes_the_revision(node: Node) -> None:
    rpc = NodePeerRpc(node)
    rpc.advertise(["echo", "hash"])
    first = node.capabilities.revision
    assert node.capabilities.snapshot()["task_types"] == ["echo", "hash"]
    rpc.advertise(["hash"])
    assert node.capabilities.snapshot()["task_types"] == ["hash"] and node.capabilities.revision != first


def test_batches_fit_the_message_limit() -> None:
    # a claim reply or report batch of JSON-budget bytes, as msgpack (<= 9/4) plus 256 items' overhead, fits
    for limit in (SidecarSettings().p2p_max_message_bytes, 2_424_832, 64 * 1024 * 1024):
        budget = batch_budget(limit)
        assert budget * 9 / 4 + 256 * 1024 + 64 * 1024 <= limit
    assert batch_budget(64 * 1024 * 1024) == 2 * 1024 * 1024
