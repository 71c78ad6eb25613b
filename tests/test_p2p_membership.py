"""Who may use a node: network membership (allowlist + shared secret) and the per-peer lease bound.

Unit tests of ``Membership`` (pure), then one network of real sidecars on loopback:

* a: the owner. Closed: ``SIDECAR_PEER_ALLOWLIST`` = [b, c] *and* ``SIDECAR_NETWORK_SECRET_FILE``; serves
  ``hash_content`` to peers; no worker of its own; lets one peer hold at most 2 of its tasks at once.
* b: a member (on the list, same secret): runs a's tasks and calls a's tool.
* c: on the list but with another secret: connects, and is refused everything else.
* a stranger (a bare libp2p client with a fresh key): not on the list, no secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p_sidecar.node.membership import (
    BAD_PROOF,
    NO_PROOF,
    NOT_ON_ALLOWLIST,
    Membership,
    SecretFileError,
    hello_proof,
    read_secret,
)
from tests.p2p_client import ask
from tests.procs import Peer, p2p_network, running_network, wait_for
from tests.queue_client import call, refused, wait_done
from tests.test_taskqueue_network import url, wait_advertised

A, B, C = "12D3KooWA", "12D3KooWB", "12D3KooWC"
SECRET = b"correct horse battery staple 42"


# -- the rules, without a network ----------------------------------------------------------------------


def test_an_open_network_admits_everyone() -> None:
    open_ = Membership(A)
    assert not open_.closed and open_.admits(B) and open_.refusal(B, "queue.claim") is None
    assert "OPEN" in open_.describe()
    assert open_.offer(B) is None and open_.check_request(B, None) is None


def test_the_secret_is_proven_both_ways_and_never_sent() -> None:
    refused_reasons: list[str] = []
    a = Membership(A, secret=SECRET, on_refused=refused_reasons.append)
    b = Membership(B, secret=SECRET)
    offer = b.offer(A)
    assert offer is not None and SECRET.hex() not in str(offer.wire) and SECRET.decode() not in str(offer.wire)
    answer = a.check_request(B, offer.wire)  # a verifies b's request ...
    assert answer is not None and a.admits(B)
    assert b.check_reply(A, answer, offer) and b.admits(A)  # ... and b verifies a's answer to its own nonce
    assert a.refusal(B, "queue.claim") is None and refused_reasons == []
    # a proof is bound to its two peer ids: replayed by another peer, or answered for another nonce, it fails
    assert a.check_request(C, offer.wire) is None and not a.admits(C)
    assert not b.check_reply(A, answer, b.offer(A))


def reason(membership: Membership, peer_id: str, op: str) -> str | None:
    refusal = membership.refusal(peer_id, op)
    return None if refusal is None else refusal.reason


def test_strangers_are_refused_with_a_reason_and_counted() -> None:
    counted: list[str] = []
    a = Membership(A, allowlist=[B, C], secret=SECRET, on_refused=counted.append)
    other = Membership(C, secret=b"some other secret of enough bytes")
    offer = other.offer(A)
    assert offer is not None
    assert a.check_request(C, offer.wire) is None  # c is on the list but knows another secret
    assert reason(a, C, "call_tool") == BAD_PROOF
    assert reason(a, B, "queue.claim") == NO_PROOF  # b never said hello
    stranger = a.refusal("12D3KooWStranger", "queue.claim")
    assert stranger is not None and stranger.reason == NOT_ON_ALLOWLIST and "SIDECAR_PEER_ALLOWLIST" in stranger.message
    assert a.refusal("12D3KooWStranger", "hello") is None and a.refusal("12D3KooWStranger", "ping") is None
    assert counted == [BAD_PROOF, NO_PROOF, NOT_ON_ALLOWLIST]
    # a member that later shows a wrong proof is a member no more
    good = Membership(B, secret=SECRET).offer(A)
    assert good is not None and a.check_request(B, good.wire) is not None and a.admits(B)
    forged = {"nonce": good.wire["nonce"], "proof": hello_proof(b"x" * 16, B, A, good.wire["nonce"])}
    assert a.check_request(B, forged) is None and not a.admits(B)
    for garbage in ({"nonce": 1, "proof": "x"}, {"nonce": "n", "proof": "\u00e9" * 64}, "text", [1]):
        assert a.check_request(B, garbage) is None


def test_secret_files_are_checked(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tiny\n")
    with pytest.raises(SecretFileError, match="at least 16") as info:
        read_secret(short)
    assert "tiny" not in str(info.value)  # never the content
    good = tmp_path / "good"
    good.write_bytes(SECRET + b"\n")
    assert read_secret(good) == SECRET
    with pytest.raises(SecretFileError, match="cannot read"):
        read_secret(tmp_path / "missing")


# -- a closed network of real sidecars ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Peer]]:
    tmp = tmp_path_factory.mktemp("membership")
    (tmp / "secret").write_bytes(SECRET + b"\n")
    (tmp / "other-secret").write_text("a different secret, same length!\n")
    peers = p2p_network(
        tmp,
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a", "b", "c"),
        env={
            "a": {
                "SIDECAR_WORKER_CONCURRENCY": "0",
                "SIDECAR_REMOTE_TOOLS_ALLOW": "hash_content",
                "SIDECAR_QUEUE_MAX_LEASES_PER_PEER": "2",
            },
            "c": {"SIDECAR_NETWORK_SECRET_FILE": str(tmp / "other-secret")},
        },
        SIDECAR_NETWORK_SECRET_FILE=str(tmp / "secret"),
        SIDECAR_LOG_LEVEL="info",
    )
    peers["a"].sidecar.env["SIDECAR_PEER_ALLOWLIST"] = f"{peers['b'].peer_id},{peers['c'].peer_id}"
    with running_network(peers):
        yield peers


def refusals(peer: Peer) -> dict[str, float]:
    return {
        reason: peer.metric(f'sidecar_p2p_refused_total{{reason="{reason}"}}')
        for reason in (NO_PROOF, BAD_PROOF, NOT_ON_ALLOWLIST)
    }


def test_members_run_the_owners_tasks_and_outsiders_never_do(closed_net: dict[str, Peer]) -> None:
    a, b, c = closed_net["a"], closed_net["b"], closed_net["c"]
    wait_advertised(a, [b], "sleep")
    a.wait_connected([c])  # c connects (hello and ping are open to all), but it is no member
    seen = a.peers(status_filter="connected")
    assert (seen[b.peer_id]["member"], seen[c.peer_id]["member"]) == (True, False)
    ids = [
        call(url(a), "task_submit", task_type="sleep", payload={"seconds": 0.4, "result": n})["task_id"]
        for n in range(6)
    ]
    most_on_b = 0

    def all_done() -> bool:
        nonlocal most_on_b
        listing = call(url(a), "task_list", status_filter="running", limit=100)
        most_on_b = max(most_on_b, sum(task["executed_by"] == b.peer_id for task in listing["tasks"]))
        return listing["counts"]["completed"] >= 6

    wait_for(all_done, 30, 0.05, what="six tasks done")
    for n, task_id in enumerate(ids):
        view = wait_done(url(a), task_id)
        assert view["status"] == "completed" and view["result"]["result"] == n and view["executed_by"] == b.peer_id
    # b has 8 slots, but a lends one peer at most SIDECAR_QUEUE_MAX_LEASES_PER_PEER=2 tasks at once
    assert most_on_b == 2
    assert a.metric('sidecar_limit_rejections_total{limit="queue_max_leases_per_peer"}') >= 1
    assert "libp2p network is closed" in a.sidecar.log_tail(400)


def test_remote_tool_calls_need_membership(closed_net: dict[str, Peer]) -> None:
    a, b, c = closed_net["a"], closed_net["b"], closed_net["c"]
    a.wait_connected([b, c])
    before = refusals(a)
    status, body = b.tool(
        "p2p_remote_call_tool", {"tool_name": "hash_content", "args": {"data": "hi"}, "remote_peer_id": a.peer_id}
    )
    assert status == 200 and body["result"]["result"]["cid"], body
    status, error = refused(
        url(c), "p2p_remote_call_tool", tool_name="hash_content", args={"data": "hi"}, remote_peer_id=a.peer_id
    )
    assert status == 403 and error["code"] == "forbidden", error
    assert "has not proven this network's secret" in error["message"] and "another secret" in error["message"]
    assert refusals(a)[BAD_PROOF] > before[BAD_PROOF]


def test_a_stranger_is_refused_every_op_but_hello_and_ping(closed_net: dict[str, Peer]) -> None:
    a = closed_net["a"]
    before = refusals(a)
    requests: list[tuple[str, dict[str, Any]]] = [
        (
            "hello",
            {"version": "x", "wire_version": 1, "addrs": [], "capabilities": {"tools": [], "task_types": ["sleep"]}},
        ),
        ("ping", {}),
        ("queue.claim", {"worker": "w", "boot": "b", "types": ["sleep"], "max": 8}),
        ("queue.hint", {"types": ["sleep"]}),
        ("call_tool", {"tool": "hash_content", "args": {"data": "x"}}),
        ("peers", {}),
        ("no.such.op", {}),
    ]
    replies = ask(a.multiaddr, requests)
    hello, ping, *rest = replies
    assert hello.ok and hello.result["capabilities"] == {"tools": [], "task_types": []}  # told nothing
    assert "auth" not in hello.result
    assert ping.ok
    for reply in rest:
        assert reply.error is not None and reply.error.code.value == "forbidden", reply
        assert reply.error.data == {"reason": NOT_ON_ALLOWLIST}
        assert "SIDECAR_PEER_ALLOWLIST" in reply.error.message
    assert refusals(a)[NOT_ON_ALLOWLIST] - before[NOT_ON_ALLOWLIST] == len(rest)
    assert call(url(a), "queue_stats")["counts"]["running"] == 0  # the claim took nothing
