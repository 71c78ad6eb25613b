"""The node's rules for strangers, without a network: hello's fields, the partial-frame budget, how long peers
are kept, what a peer's role is, and which py-libp2p log lines are ordinary."""

from __future__ import annotations

import logging
import os

import pytest

from p2p_sidecar.node.budget import NODE, PEER, PartialFrameBudget
from p2p_sidecar.node.connections import Retention, plan_dials
from p2p_sidecar.node.hello import MAX_ADDRS, MAX_CAPABILITIES, parse_hello
from p2p_sidecar.node.log_noise import Libp2pNoiseFilter
from p2p_sidecar.node.peers import PeerRecord, PeerState, PeerTable, RpcRole
from p2p_sidecar.node.wire import HEADER, FrameReader
from shared_schema import BridgeError, ErrorCode

PEER_ID = "12D3KooWGbkUhx9TC3jEhwcKaPZvvS6wTXQ4ZuBSYAEwmRCMimN6"
OTHER = "12D3KooWEMGfSgJg1qe7Sjtaxt3N2TUbmhUPjpHwwK3xvhdy7XV1"


# -- hello ----------------------------------------------------------------------------------------------------


def good_hello(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "version": "0.1.0",
        "wire_version": 1,
        "addrs": ["/ip4/192.0.2.7/tcp/4001"],
        "capabilities": {"tools": ["echo"], "task_types": ["hash"]},
        "capabilities_revision": "abc",
    }
    body.update(changes)
    return body


def test_a_good_hello_is_read_and_unknown_fields_are_ignored() -> None:
    hello = parse_hello(good_hello(future_field={"x": 1}), PEER_ID)
    assert hello.addrs == ["/ip4/192.0.2.7/tcp/4001"] and hello.capabilities["tools"] == ["echo"]
    assert hello.version == "0.1.0" and hello.capabilities_revision == "abc"


def test_addresses_of_other_transports_or_other_peers_are_skipped_not_refused() -> None:
    addrs = [
        "/ip4/192.0.2.7/tcp/4001",
        "/ip4/192.0.2.7/udp/4001/quic-v1",  # a js-libp2p or go node's other transports
        f"/ip4/192.0.2.8/tcp/4001/p2p/{OTHER}",  # names another peer
        f"/ip4/192.0.2.9/tcp/4001/p2p/{PEER_ID}",  # names this one: kept, without the suffix
        "/ip4/0.0.0.0/tcp/4001",  # nobody can dial a wildcard
        "/ip4/192.0.2.7/tcp/0",
        "/ip4/192.0.2.7/tcp/4001",  # a duplicate
        "not a multiaddr",
    ]
    assert parse_hello(good_hello(addrs=addrs), PEER_ID).addrs == ["/ip4/192.0.2.7/tcp/4001", "/ip4/192.0.2.9/tcp/4001"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"addrs": ["/ip4/192.0.2.7/tcp/4001"] * (MAX_ADDRS + 1)}, "addrs"),
        ({"addrs": [7]}, "addrs"),
        ({"addrs": "/ip4/192.0.2.7/tcp/4001"}, "addrs"),
        ({"capabilities": {"tools": [f"t{n}" for n in range(MAX_CAPABILITIES + 1)]}}, "capabilities.tools"),
        ({"capabilities": {"task_types": [""]}}, "capabilities.task_types"),
        ({"capabilities": {"tools": ["x" * 129]}}, "capabilities.tools"),
        ({"capabilities": ["echo"]}, "capabilities"),
        ({"version": 1}, "version"),
        ({"version": "v" * 65}, "version"),
        ({"capabilities_revision": ["a"]}, "capabilities_revision"),
        ({"wire_version": None}, "wire_version"),
        ({"wire_version": True}, "wire_version"),
    ],
)
def test_a_hello_breaking_a_bound_is_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    body = good_hello(**changes)
    if changes.get("wire_version", 1) is None:
        del body["wire_version"]
    with pytest.raises(BridgeError) as caught:
        parse_hello(body, PEER_ID)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENTS and caught.value.data == {"field": field}


def test_another_wire_version_is_a_version_mismatch() -> None:
    with pytest.raises(BridgeError) as caught:
        parse_hello(good_hello(wire_version=2), PEER_ID)
    assert caught.value.code is ErrorCode.VERSION_MISMATCH and caught.value.data == {"wire_version": 1}
    with pytest.raises(BridgeError):
        parse_hello([1], PEER_ID)


# -- unfinished frames ------------------------------------------------------------------------------------------


def test_the_budget_bounds_each_peer_and_the_node_and_gives_back() -> None:
    budget = PartialFrameBudget(per_peer=100, total=150)
    assert budget.take("a", 60) is None and budget.take("a", 41) == PEER and budget.held_by("a") == 60
    assert budget.take("b", 80) is None and budget.take("c", 20) == NODE and budget.held == 140
    assert budget.high_water == 140
    budget.give_back("a", 60)
    budget.give_back("b", 500)  # never below zero, never someone else's
    assert budget.held == 0 and budget.peers == 0 and budget.take("c", 100) is None


def test_the_frame_reader_says_when_a_frame_is_in_progress_and_what_it_holds() -> None:
    reader = FrameReader(1 << 20)
    assert not reader.in_frame and reader.buffered == 0
    assert reader.feed(HEADER.pack(10)[:2]) == [] and reader.in_frame and reader.buffered == 2
    assert reader.feed(HEADER.pack(10)[2:]) == [] and reader.in_frame and reader.buffered == 0  # a header alone
    assert reader.feed(b"x" * 4) == [] and reader.buffered == 4
    assert reader.feed(b"y" * 6 + HEADER.pack(0)) == [b"xxxxyyyyyy", b""] and not reader.in_frame


# -- which peers are kept -------------------------------------------------------------------------------------------


def record(peer_id: str = PEER_ID, **fields: object) -> PeerRecord:
    entry = PeerRecord(peer_id, addrs=["/ip4/192.0.2.7/tcp/4001"], first_seen=1000.0, last_seen=1000.0)
    for key, value in fields.items():
        setattr(entry, key, value)
    return entry


def test_peers_not_wanted_are_forgotten_after_failed_dials_or_an_age_and_wanted_ones_never() -> None:
    rules = Retention(forget_after_failures=3, max_age=100.0)
    assert rules.forget_reason(record(dial_failures=2), wall=1050.0) is None
    assert "3 dials" in (rules.forget_reason(record(dial_failures=3), wall=1050.0) or "")
    assert "nothing heard" in (rules.forget_reason(record(), wall=1101.0) or "")
    learned_never_seen = record(last_seen=None, first_seen=900.0, sources={"exchange"})
    assert rules.forget_reason(learned_never_seen, wall=1001.0) is not None
    for kept in (record(dial_failures=50, sources={"bootstrap"}), record(dial_failures=50, persist=True),
                 record(dial_failures=50, state=PeerState.CONNECTED)):  # fmt: skip
        assert rules.forget_reason(kept, wall=1e9) is None


def test_a_peer_that_does_not_serve_our_protocol_is_hung_up_on_when_idle_unless_wanted() -> None:
    rules = Retention(idle_timeout=60.0)
    idle = record(state=PeerState.CONNECTED, serves_rpc=False, last_used_mono=0.0)
    assert not rules.idle(idle, now=59.0) and rules.idle(idle, now=60.0)
    assert not rules.idle(record(state=PeerState.CONNECTED, serves_rpc=True, last_used_mono=0.0), now=1e6)
    assert not rules.idle(record(state=PeerState.CONNECTED, serves_rpc=False, last_used_mono=0.0, persist=True), 1e6)


def test_peers_that_do_not_serve_our_protocol_are_never_dialled_to_reach_the_target() -> None:
    table = PeerTable("self")
    table.add(record(PEER_ID, serves_rpc=False))
    table.add(record(OTHER))
    assert [entry.peer_id for entry in plan_dials(table, 0.0, target=8, in_flight=set(), limit=8)] == [OTHER]
    bootstrap = table.get(PEER_ID)
    assert bootstrap is not None
    bootstrap.sources.add("bootstrap")
    assert {entry.peer_id for entry in plan_dials(table, 0.0, target=8, in_flight=set(), limit=8)} == {PEER_ID, OTHER}


def test_roles() -> None:
    assert record().rpc_role is None
    assert record(serves_rpc=True).rpc_role is RpcRole.FULL
    assert record(serves_rpc=False).rpc_role is RpcRole.NONE
    assert record(serves_rpc=False, requests_in=3).rpc_role is RpcRole.CLIENT
    assert record(serves_rpc=False).summary()["rpc"] == "none"


# -- py-libp2p's log ------------------------------------------------------------------------------------------------


def libp2p_record(path: str, level: int, message: str, lineno: int = 10) -> logging.LogRecord:
    site = os.path.join(os.sep, "venv", "site-packages", "libp2p", *path.split("/"))
    return logging.LogRecord("libp2p.x", level, site, lineno, message, None, None)


def test_ordinary_network_events_are_debug_and_the_rest_once_a_minute_in_one_line() -> None:
    noise = Libp2pNoiseFilter(window=60.0)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        na = libp2p_record("host/basic_host.py", logging.ERROR, "Failed to open stream to peer X:\n  Error: na")
        push = libp2p_record("identity/identify_push/identify_push.py", logging.ERROR, "Error processing identify/push")
        assert not noise.filter(na) and not noise.filter(push)
        root.setLevel(logging.DEBUG)
        assert noise.filter(na) and na.levelno == logging.DEBUG
        other = [
            libp2p_record("network/swarm.py", logging.WARNING, f"odd thing {n}\nsecond line", 99) for n in range(5)
        ]
        assert [noise.filter(entry) for entry in other] == [True, False, False, False, False]
        assert other[0].getMessage() == "odd thing 0 | second line"
        ours = logging.LogRecord(
            "p2p_sidecar.node.host", logging.ERROR, "/work/p2p_sidecar/node/host.py", 1, "x", None, None
        )
        assert noise.filter(ours) and ours.levelno == logging.ERROR  # only py-libp2p's lines are touched
    finally:
        root.setLevel(level)
