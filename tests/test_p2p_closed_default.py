"""Closed unless opened: nodes started with no membership settings at all, as ``make run`` starts one.

* a: the default (no secret configured, no allowlist): makes ``network.secret`` in its data directory on first
  start; has a gateway and serves ``hash_content`` to members; runs no tasks itself.
* b: a stranger with the same defaults (so its own, different secret) that bootstraps from a's address
  *without* a peer id (learned from the handshake): it connects, but a refuses its calls and claims.
* c: joins the way the README says: ``python -m p2p_sidecar join`` run with a's settings prints a secret and
  a bootstrap address, and c starts with exactly those two lines.  It calls a's tool and runs a's tasks.
* o: ``SIDECAR_NETWORK_OPEN=true``: open, and says so.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT, Peer, http_json, p2p_network, running_network, wait_for
from tests.queue_client import call, refused, wait_done

pytestmark = pytest.mark.e2e

OWN_SECRET = {"SIDECAR_NETWORK_SECRET_FILE": ""}
"""Tell the helpers to leave the node to its own secret (their shared test secret steps aside)."""


def url(peer: Peer) -> str:
    assert peer.gateway is not None
    return peer.gateway.extra["url"]


def join_lines(peer: Peer) -> dict[str, str]:
    """Run ``python -m p2p_sidecar join`` with the node's own environment; its assignments, by variable."""
    env = {key: value for key, value in peer.sidecar.env.items() if key != "SIDECAR_NETWORK_SECRET_FILE" or value}
    done = subprocess.run(
        [sys.executable, "-m", "p2p_sidecar", "join"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    return {key: value for key, _, value in (line.partition("=") for line in lines)}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Peer]]:
    tmp = tmp_path_factory.mktemp("closed-default")
    peers = p2p_network(
        tmp,
        ["a", "b", "c", "o"],
        gateways=("a", "b", "c", "o"),
        env={
            "a": {**OWN_SECRET, "SIDECAR_REMOTE_TOOLS_ALLOW": "hash_content", "SIDECAR_WORKER_CONCURRENCY": "0"},
            "b": OWN_SECRET,
            "o": {"SIDECAR_NETWORK_OPEN": "true"},
        },
        SIDECAR_LOG_LEVEL="info",
    )
    a, b, c, o = peers["a"], peers["b"], peers["c"], peers["o"]
    address_only = f"/ip4/127.0.0.1/tcp/{a.sidecar.extra['p2p_port']}"
    b.sidecar.env["SIDECAR_BOOTSTRAP_PEERS"] = address_only  # no /p2p/<id>: learned from the handshake
    o.sidecar.env["SIDECAR_BOOTSTRAP_PEERS"] = a.multiaddr
    # c: what `join` prints for a (run before a's first start, it makes a's key and secret, as that start would)
    joined = join_lines(a)
    assert set(joined) == {"SIDECAR_NETWORK_SECRET", "SIDECAR_BOOTSTRAP_PEERS"}, joined
    c.sidecar.env.pop("SIDECAR_NETWORK_SECRET_FILE")
    c.sidecar.env.update(joined)
    with running_network(peers):
        yield peers


def test_a_default_node_makes_its_secret_and_join_prints_what_another_node_needs(net: dict[str, Peer]) -> None:
    a = net["a"]
    secret_file = Path(a.sidecar.extra["data_dir"]) / "network.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) == 64 and int(secret, 16) >= 0
    joined = join_lines(a)
    assert joined["SIDECAR_NETWORK_SECRET"] == secret  # the same secret, every time
    assert joined["SIDECAR_BOOTSTRAP_PEERS"] == a.multiaddr
    info = call(url(a), "node_info")["membership"]
    assert info["closed"] and info["network_secret"] and info["secret_source"] == str(secret_file)
    log = a.sidecar.log_tail(400)
    assert "libp2p network is closed" in log and "made a network secret for this node" not in log  # join made it
    assert secret not in a.sidecar.log_path.read_text()


def test_a_stranger_with_its_own_default_secret_connects_and_is_refused(net: dict[str, Peer]) -> None:
    a, b = net["a"], net["b"]
    seen = a.wait_connected([b])
    assert seen[b.peer_id]["member"] is False
    status, body = http_json("POST", f"{url(b)}/tools/execute/p2p_bootstrap_list", {})
    [entry] = body["result"]["bootstrap"]
    assert entry["peer_id"] == a.peer_id and entry["status"] == "connected", entry  # its id, learned
    status, error = refused(url(b), "p2p_remote_call_tool", tool_name="hash_content", args={"data": "x"},
                            remote_peer_id=a.peer_id)  # fmt: skip
    assert status == 403 and error["code"] == "forbidden" and "has not proven" in error["message"], error
    # b's worker asks a for work (it runs every type): a stranger's claims get nothing, not even a's pinned task
    task_id = call(
        url(a), "task_submit", task_type="echo", payload="for b?", metadata={"placement": {"peer": b.peer_id}}
    )["task_id"]
    wait_for(lambda: a.metric('sidecar_p2p_refused_total{reason="bad_secret_proof"}') >= 1, 20, what="a refuses b")
    assert call(url(a), "task_status", task_id=task_id)["status"] == "queued"
    call(url(a), "task_cancel", task_id=task_id)


def test_a_node_that_joined_with_the_printed_lines_is_a_member(net: dict[str, Peer]) -> None:
    a, c = net["a"], net["c"]
    seen = a.wait_connected([c])
    assert seen[c.peer_id]["member"] is True
    status, body = http_json(
        "POST",
        f"{url(c)}/tools/execute/p2p_remote_call_tool",
        {"tool_name": "hash_content", "args": {"data": "joined"}, "remote_peer_id": a.peer_id},
    )
    assert status == 200, body
    _, local = http_json("POST", f"{url(a)}/tools/execute/hash_content", {"data": "joined"})
    assert body["result"]["result"] == local["result"]
    task_id = call(
        url(a), "task_submit", task_type="echo", payload="for c", metadata={"placement": {"peer": c.peer_id}}
    )["task_id"]
    view = wait_done(url(a), task_id, 30)
    assert view["status"] == "completed" and view["result"] == "for c" and view["executed_by"] == c.peer_id, view


def test_an_open_node_says_so(net: dict[str, Peer]) -> None:
    o = net["o"]
    assert call(url(o), "node_info")["membership"]["closed"] is False
    assert "libp2p network is OPEN (SIDECAR_NETWORK_OPEN=true)" in o.sidecar.log_tail(400)
    assert not (Path(o.sidecar.extra["data_dir"]) / "network.secret").exists()
    assert os.environ.get("SIDECAR_NETWORK_OPEN") is None  # the helpers never leak it into other tests
