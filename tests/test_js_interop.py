"""A foreign implementation against the sidecar: js-libp2p 3 (Node 22), and the peer protocol written in JS.

The JS peer (``tests/js/libp2p/peer.mjs``) shares no code with the sidecar: it speaks TCP + Noise + Yamux,
identify and ping through js-libp2p, and ``/mcp-p2p/rpc/1.0.0`` as ``docs/p2p-protocol.md`` specifies it
(frames, messages, hello with the membership proof, error codes).  One sidecar ``a`` with a gateway, in the
closed test network (the helpers' shared secret), serving ``hash_content`` to members:

* a JS client, first as a stranger (no secret), then as a member: dial, identify, ping, every op and error;
* a JS node serving the protocol: the sidecar's ``peer_connect`` and ``p2p_remote_call_tool`` reach it, and once
  it is gone the sidecar stops dialling it after a bounded number of tries;
* JS nodes that do not serve it (identify and ping only, dialled by the sidecar or dialling it, and a
  client-only one), held 30 s beside 300 reset identify pushes: connected and shown as such, never dropped
  for their silence on our protocol, and no ERROR line in the sidecar's log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.js_peer import JsPeer, node_binary
from tests.procs import TEST_NETWORK_SECRET, Peer, p2p_network, running_network, wait_for

pytestmark = pytest.mark.e2e

SECRET = TEST_NETWORK_SECRET.decode()


@pytest.fixture(scope="module")
def node_js() -> str:
    return node_binary()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    peers = p2p_network(
        tmp_path_factory.mktemp("js-interop"),
        ["a"],
        gateways=("a",),
        env={"a": {"SIDECAR_REMOTE_TOOLS_ALLOW": "hash_content"}},
        SIDECAR_LOG_LEVEL="info",
        SIDECAR_PEER_FORGET_AFTER_FAILURES="3",
    )
    with running_network(peers):
        yield peers["a"]


def js_peer(node_js: str, tmp_path: Path, name: str, *args: str) -> JsPeer:
    return JsPeer(node_js, *args, log=tmp_path / f"{name}.log").start()


def code(reply: dict[str, Any]) -> str:
    message = reply["reply"]
    return "ok" if message["k"] == "res" else message["e"]["code"]


def test_a_js_client_as_a_stranger_and_as_a_member(sidecar: Peer, node_js: str, tmp_path: Path) -> None:
    stranger = js_peer(node_js, tmp_path, "stranger", "client", sidecar.multiaddr, "--tool", "hash_content",
                       "--args", '{"data": "hello from js"}')  # fmt: skip
    try:
        stranger.wait_for("done")
    finally:
        stranger.stop()
    connected = stranger.wait_for("connected")
    assert (connected["encryption"], connected["multiplexer"]) == ("/noise", "/yamux/1.0.0")
    assert "/mcp-p2p/rpc/1.0.0" in stranger.wait_for("identify")["protocols"]
    assert stranger.wait_for("libp2p_ping")["rtt_ms"] >= 0
    replies = stranger.replies()
    before = replies["ping-before-hello"]["reply"]
    assert before["e"]["code"] == "unavailable" and before["e"]["data"] == {"hello_required": True}
    hello = replies["hello"]["reply"]["r"]
    assert hello["wire_version"] == 1 and hello["capabilities"] == {"tools": [], "task_types": []}  # told nothing
    assert code(replies["ping"]) == "ok"
    for op in ("peers", "call_tool", "queue.claim", "queue.hint", "queue.complete", "no.such.op"):  # all forbidden
        assert code(replies[op]) == "forbidden", replies[op]
        assert replies[op]["reply"]["e"]["data"] == {"reason": "no_secret_proof"}
    assert code(replies["missing-op"]) == "bad_frame" and code(replies["bad-version"]) == "version_mismatch"
    assert code(replies["bad-hello"]) == "version_mismatch"

    member = js_peer(node_js, tmp_path, "member", "client", sidecar.multiaddr, "--secret", SECRET,
                     "--tool", "hash_content", "--args", '{"data": "hello from js"}')  # fmt: skip
    try:
        member.wait_for("done")
    finally:
        member.stop()
    replies = member.replies()
    assert replies["hello"]["proven"] is True  # the sidecar's reply proof checks out in JS
    assert "hash_content" in replies["hello"]["reply"]["r"]["capabilities"]["tools"]
    result = replies["call_tool"]["reply"]["r"]
    assert result["digest"] == member.wait_for("expected_digest")["digest"]  # the gateway's hash_content
    _, local = sidecar.tool("hash_content", {"data": "hello from js"})
    assert result == local["result"]
    assert code(replies["queue.claim"]) == "ok" and replies["queue.claim"]["reply"]["r"]["tasks"] == []
    assert (
        code(replies["no.such.op"]) == "unknown_tool" and "hello" in replies["no.such.op"]["reply"]["e"]["data"]["ops"]
    )
    assert code(replies["peers"]) == "ok"


def test_the_sidecar_connects_to_and_calls_a_js_node_that_serves_the_protocol(
    sidecar: Peer, node_js: str, tmp_path: Path
) -> None:
    server = js_peer(node_js, tmp_path, "server", "serve", "--rpc", "--secret", SECRET)
    try:
        listening = server.wait_for("listening")
        js_id, addr = listening["peer_id"], listening["addrs"][0]
        status, body = sidecar.tool("peer_connect", {"peer_id": js_id, "multiaddr": addr})
        assert status == 200 and body["result"]["status"] == "connected", body
        assert body["result"]["capabilities"]["tools"] == ["echo"]
        entry = sidecar.peers()[js_id]
        assert (entry["status"], entry["rpc"], entry["member"], entry["version"]) == (
            "connected",
            "full",
            True,
            "js-peer",
        )
        arguments = {"tool_name": "echo", "args": {"message": "hi js"}, "remote_peer_id": js_id, "timeout_s": 10}
        status, body = sidecar.tool("p2p_remote_call_tool", arguments)
        assert status == 200, body
        assert body["result"]["result"] == {"message": "hi js", "echo": "hi js", "served_by": "js-libp2p"}
        status, body = sidecar.tool("p2p_remote_call_tool", {**arguments, "tool_name": "hash_content"})
        assert status == 403 and body["error"]["data"]["served_tools"] == ["echo"], body
        status, body = sidecar.tool("peer_ping", {"peer_id": js_id, "count": 2})
        assert status == 200 and body["result"]["count"] == 2
    finally:
        server.stop()
    # Gone, and not a bootstrap or persisted peer: dialled a bounded number of times (3 here), then forgotten.
    wait_for(lambda: js_id not in sidecar.peers(), 60, 0.5, what="the stopped js node forgotten")
    log = sidecar.sidecar.log_tail(3000)
    lines = [line for line in log.splitlines() if js_id in line]
    assert any(f"forgot peer {js_id}" in line for line in lines), lines
    assert sum("dial to" in line for line in lines) <= 2, lines  # the first failure, then only the count


def test_js_peers_without_the_protocol_stay_connected_30s_and_the_log_stays_quiet(
    sidecar: Peer, node_js: str, tmp_path: Path
) -> None:
    log_start = len(sidecar.sidecar.log_path.read_text().splitlines())
    plain = js_peer(node_js, tmp_path, "plain", "serve")  # identify and ping only
    dialler = js_peer(node_js, tmp_path, "dialler", "serve", "--dial", sidecar.multiaddr)
    client_only = js_peer(node_js, tmp_path, "client-only", "client-only", sidecar.multiaddr, "--secret", SECRET,
                          "--seconds", "30")  # fmt: skip
    pusher = js_peer(node_js, tmp_path, "pusher", "push-resets", sidecar.multiaddr, "--count", "300")
    try:
        plain_id = plain.wait_for("listening")["peer_id"]
        dialler_id = dialler.wait_for("listening")["peer_id"]
        status, body = sidecar.tool(
            "peer_connect", {"peer_id": plain_id, "multiaddr": plain.wait_for("listening")["addrs"][0]}
        )
        assert status == 200 and body["result"]["status"] == "connected", body  # a libp2p peer all the same
        assert body["result"]["rpc"] == "none"
        status, body = sidecar.tool("p2p_remote_call_tool", {"tool_name": "echo", "remote_peer_id": plain_id})
        assert status == 503 and "does not serve /mcp-p2p/rpc/1.0.0" in body["error"]["message"], body
        assert body["error"]["data"]["serves_rpc"] is False
        assert pusher.wait_for("push_resets", 60)["opened"] >= 1
        client_id = None

        def all_three() -> bool:
            nonlocal client_id
            peers = sidecar.peers(status_filter="connected")
            clients = [peer for peer, entry in peers.items() if entry["rpc"] == "client"]
            client_id = clients[0] if clients else None
            return plain_id in peers and dialler_id in peers and client_id is not None

        wait_for(all_three, 20, 0.5, what="the three js peers connected")
        # held 30 s (the test network declares a silent peer of our protocol gone after 3 s): never dropped
        for _ in range(6):
            peers = sidecar.peers()
            assert peers[plain_id]["status"] == "connected" and peers[plain_id]["rpc"] == "none", peers[plain_id]
            assert peers[dialler_id]["status"] == "connected" and peers[dialler_id]["rpc"] == "none"
            assert client_id is not None and peers[client_id]["status"] == "connected"
            assert peers[client_id]["rpc"] == "client"
            time.sleep(5)
        pings = client_only.wait_for("pings", 30)
        assert pings["failed"] == 0 and pings["ok"] >= 5 and pings["connected"], pings
        status, body = sidecar.tool("peer_list", {"status_filter": "connected"})
        listed = {entry["peer_id"]: entry for entry in body["result"]["peers"]}
        assert not listed[plain_id]["capabilities"].get("tools")
    finally:
        for peer in (plain, dialler, client_only, pusher):
            peer.stop()
    log = sidecar.sidecar.log_path.read_text().splitlines()[log_start:]
    errors = [line for line in log if " ERROR " in line or "Traceback" in line]
    assert not errors, errors[:10]
    # each of them is described once, in one line; nothing is redialled
    for peer_id in (plain_id, dialler_id):
        about = [line for line in log if peer_id in line]
        assert 1 <= len(about) <= 4, about
        assert not [line for line in about if "dial to" in line], about
    assert len(log) < 80, log[-40:]
