"""Three sidecars (two with gateways) form a libp2p network on loopback, as separate OS processes.

a: bootstrap node, with gateway A.  b: bootstraps from a, gateway B, serves hash_content and echo remotely.
c: bootstraps from a, no gateway.  b and c find each other through peer exchange.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from p2p_sidecar.node.wire import HEADER, Reply, WireError, decode
from tests.p2p_client import Opener, read_until_closed, run_client, writable
from tests.procs import Peer, http_json, p2p_network, running_network, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Peer]]:
    peers = p2p_network(
        tmp_path_factory.mktemp("p2p-net"),
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a", "b"),
        env={"b": {"SIDECAR_REMOTE_TOOLS_ALLOW": "hash_content,echo"}},
    )
    with running_network(peers):
        yield peers


def tool(peer: Peer, name: str, arguments: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    return peer.tool(name, arguments)


def test_three_sidecars_form_a_connected_network(net: dict[str, Peer]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    seen = a.wait_connected([b, c])
    assert set(seen) == {b.peer_id, c.peer_id}
    for entry in seen.values():
        assert entry["status"] == "connected" and entry["latency_ms"] > 0 and entry["last_seen"] is not None
        assert entry["addrs"] and all(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in entry["addrs"])
    # b never had c's address: it learned it from a
    from_b = b.wait_connected([a, c])
    assert "exchange" in from_b[c.peer_id]["sources"] or "inbound" in from_b[c.peer_id]["sources"]
    _, health = http_json("GET", c.admin + "/health")
    assert health["node"]["peer_id"] == c.peer_id and health["p2p"]["peers"] == {"connected": 2}


def test_peer_ping_answers(net: dict[str, Peer]) -> None:
    a, c = net["a"], net["c"]
    a.wait_connected([c])
    status, body = tool(a, "peer_ping", {"peer_id": c.peer_id, "count": 3})
    assert status == 200, body
    result = body["result"]
    assert result["count"] == 3 and len(result["rtt_ms"]) == 3 and 0 < result["min_ms"] <= result["max_ms"]
    assert result["protocol"] == "/mcp-p2p/rpc/1.0.0"
    status, body = tool(a, "peer_metrics", {"peer_id": c.peer_id, "include_history": True})
    assert status == 200 and body["result"]["known"] and body["result"]["pings_ok"] >= 3


def test_remote_call_runs_an_allowed_tool_on_the_other_gateway(net: dict[str, Peer]) -> None:
    a, b = net["a"], net["b"]
    a.wait_connected([b])
    _, local = tool(a, "hash_content", {"data": "hello world"})
    arguments = {"tool_name": "hash_content", "args": {"data": "hello world"}, "remote_peer_id": b.peer_id}
    status, body = tool(a, "p2p_remote_call_tool", arguments)
    assert status == 200, body
    assert body["result"]["status"] == "success" and body["result"]["remote_peer_id"] == b.peer_id
    assert body["result"]["result"] == local["result"]
    # by multiaddr, with a timeout
    by_addr = {"tool_name": "echo", "args": {"message": "hi"}, "remote_multiaddr": b.multiaddr, "timeout_s": 5}
    status, body = tool(a, "p2p_remote_call_tool", by_addr)
    assert status == 200 and body["result"]["result"]["echo"] == "hi", body
    # the remote gateway's own errors come back with their codes
    bad_args = {"tool_name": "hash_content", "args": {"data": 5}, "remote_peer_id": b.peer_id}
    status, body = tool(a, "p2p_remote_call_tool", bad_args)
    assert status == 422 and body["error"]["code"] == "invalid_arguments", body


def test_tools_not_served_remotely_are_refused_clearly(net: dict[str, Peer]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    a.wait_connected([b, c])
    status, body = tool(a, "p2p_remote_call_tool", {"tool_name": "content_cid", "remote_peer_id": b.peer_id})
    assert status == 403 and body["error"]["code"] == "forbidden", body
    assert "SIDECAR_REMOTE_TOOLS_ALLOW" in body["error"]["message"]
    assert body["error"]["data"]["served_tools"] == ["echo", "hash_content"]
    # c allows nothing (the default) and has no gateway
    status, body = tool(a, "p2p_remote_call_tool", {"tool_name": "echo", "remote_peer_id": c.peer_id})
    assert status == 403 and body["error"]["code"] == "forbidden"
    # b's gateway is not exposed through a's own p2p_remote_call_tool to itself
    status, body = tool(a, "p2p_remote_call_tool", {"tool_name": "echo", "remote_peer_id": a.peer_id})
    assert status == 422 and body["error"]["code"] == "invalid_arguments"
    status, body = tool(a, "p2p_remote_call_tool", {"tool_name": "echo"})
    assert status == 422 and "remote_peer_id or remote_multiaddr" in body["error"]["message"]
    status, body = tool(a, "p2p_remote_call_tool", {"tool_name": "echo", "remote_multiaddr": "/ip4/1.2.3.4/tcp/1"})
    assert status == 422 and body["error"]["code"] == "invalid_arguments"
    unknown = "12D3KooWAyj1GoXC3PNoPUNCbBDkFEFHU9JHuxN6F2iwpZZPWHNJ"
    status, body = tool(a, "p2p_remote_call_tool", {"tool_name": "echo", "remote_peer_id": unknown})
    assert status == 503 and body["error"]["code"] == "unavailable"


def test_capabilities_let_a_node_choose_where_to_send_work(net: dict[str, Peer]) -> None:
    a, b = net["a"], net["b"]
    a.wait_connected([b])
    # b's capabilities changed when its gateway connected; a learns within a ping interval
    filtered = lambda: tool(a, "peer_list", {"capability_filter": "hash_content"})[1]["result"]["peers"]  # noqa: E731
    [entry] = wait_for(filtered, 10, 0.2, what="b advertising hash_content")
    assert entry["peer_id"] == b.peer_id and entry["capabilities"]["tools"] == ["echo", "hash_content"]
    status, body = tool(a, "peer_discover", {"capability_filter": ["tool:echo"], "max_peers": 5, "timeout": 5})
    assert status == 200 and [entry["peer_id"] for entry in body["result"]["peers"]] == [b.peer_id]
    # every node runs the built-in task types, and says so
    status, body = tool(a, "peer_list", {"capability_filter": ["task:hash", "task:echo"]})
    assert status == 200 and body["result"]["total"] == 2
    assert "hash" in body["result"]["peers"][0]["capabilities"]["task_types"]


def test_node_info_status_and_bootstrap_tools(net: dict[str, Peer], tmp_path: Path) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    b.wait_connected([a, c])
    status, body = tool(b, "node_info")
    info = body["result"]
    assert status == 200 and info["peer_id"] == b.peer_id and info["multiaddrs"] == [b.multiaddr]
    assert "/mcp-p2p/rpc/1.0.0" in info["protocols"] and "/ipfs/ping/1.0.0" in info["protocols"]
    assert info["capabilities"]["tools"] == ["echo", "hash_content"] and info["libp2p_version"] == "0.8.1"
    status, body = tool(b, "p2p_service_status", {"include_peers": True})
    assert status == 200 and body["result"]["p2p"]["peer_id"] == b.peer_id
    assert {entry["peer_id"] for entry in body["result"]["peers"]} == {a.peer_id, c.peer_id}
    status, body = tool(b, "p2p_bootstrap_list")
    [entry] = body["result"]["bootstrap"]
    assert entry["peer_id"] == a.peer_id and entry["origin"] == "env" and entry["status"] == "connected"
    listing = tmp_path / "peers.txt"
    listing.write_text(f"# the network\n{c.multiaddr}\nnot a multiaddr\n")
    status, body = tool(b, "p2p_bootstrap_from_file", {"path": str(listing), "timeout": 10})
    assert status == 200, body
    assert body["result"]["connected"] == 1 and body["result"]["invalid_lines"] == [3]
    status, body = tool(b, "p2p_bootstrap_from_file", {"path": str(tmp_path / "missing.txt")})
    assert status == 422 and body["error"]["code"] == "invalid_arguments"
    status, body = tool(b, "p2p_bootstrap_from_env", {"timeout": 10})
    assert status == 200 and body["result"]["connected"] == 1, body
    status, body = tool(b, "bootstrap_network", {"timeout": 10, "min_connections": 2})
    assert status == 200 and body["result"]["status"] == "success" and body["result"]["connected"] >= 2, body
    status, body = tool(b, "bootstrap_network", {"bootstrap_nodes": ["nonsense"]})
    assert status == 422


def test_disconnect_and_connect_again(net: dict[str, Peer]) -> None:
    a, c = net["a"], net["c"]
    a.wait_connected([c])
    status, body = tool(a, "peer_disconnect", {"peer_id": c.peer_id, "reason": "test"})
    assert status == 200 and body["result"]["status"] == "disconnected", body
    status, body = tool(a, "peer_connect", {"peer_id": c.peer_id, "multiaddr": c.multiaddr, "timeout": 10})
    assert status == 200 and body["result"]["status"] == "connected", body
    a.wait_connected([c])
    status, body = tool(a, "peer_connect", {"peer_id": c.peer_id, "multiaddr": "/ip4/1.2.3/tcp/1"})
    assert status == 422
    status, body = tool(a, "peer_metrics", {"peer_id": "12D3KooWAyj1GoXC3PNoPUNCbBDkFEFHU9JHuxN6F2iwpZZPWHNJ"})
    assert status == 200 and body["result"]["known"] is False


def test_garbage_and_oversize_messages_reset_the_stream_and_nothing_else(net: dict[str, Peer]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    a.wait_connected([b, c])
    errors_before = c.metric("sidecar_p2p_protocol_errors_total")

    async def scenario(open_stream: Opener) -> tuple[list[tuple[bytes, bool]], list[Reply]]:
        endings = []
        for payload in [
            os.urandom(4096),  # noise: almost surely announces a frame beyond the limit
            struct.pack(">I", 64 * 1024 * 1024) + b"x" * 100,  # an oversize frame, announced honestly
            HEADER.pack(3) + b"\xc1\xc1\xc1",  # a frame that is not msgpack
            HEADER.pack(6) + msgpack.packb([1, 2, 3, 4, 5]),  # msgpack, but not a message
        ]:
            stream = await open_stream()
            await stream.write(payload)
            received, _ = await read_until_closed(stream)
            endings.append((received, await writable(stream)))
        # a well-framed message with a bad field is answered, and the stream lives on
        stream = await open_stream()
        replies: list[Reply] = []
        for wire in [
            {"v": 1, "k": "req", "id": 5, "t": 1000},  # no op
            {"v": 9, "k": "req", "id": 6, "op": "ping", "t": 1000},  # another version
            {"v": 1, "k": "req", "id": 7, "op": "no_such_op", "t": 1000},
        ]:
            body = msgpack.packb(wire)
            await stream.write(HEADER.pack(len(body)) + body)
            header = await stream.read(4)
            (length,) = struct.unpack(">I", header)
            data = b""
            while len(data) < length:
                data += await stream.read(length - len(data))
            reply = decode(data)
            assert isinstance(reply, Reply), reply
            replies.append(reply)
        await stream.close()
        return endings, replies

    endings, replies = run_client(c.multiaddr, scenario)
    assert endings == [(b"", False)] * 4  # nothing answered, and the stream is reset (not just closed)
    assert [reply.outcome for reply in replies] == ["bad_frame", "version_mismatch", "unknown_tool"]
    assert [reply.id for reply in replies] == [5, 6, 7]
    assert c.metric("sidecar_p2p_protocol_errors_total") - errors_before >= 6

    # the node and the rest of the network are unaffected
    assert c.sidecar.alive() and http_json("GET", c.admin + "/health")[0] == 200
    a.wait_connected([b, c], timeout=10)
    status, body = tool(a, "peer_ping", {"peer_id": c.peer_id, "count": 1})
    assert status == 200, body
    arguments = {"tool_name": "echo", "args": {"message": "still fine"}, "remote_peer_id": b.peer_id}
    status, body = tool(a, "p2p_remote_call_tool", arguments)
    assert status == 200 and body["result"]["result"]["echo"] == "still fine"


def test_wire_error_type_is_what_the_codec_raises() -> None:
    with pytest.raises(WireError):
        decode(b"\xc1")
