"""The node's synchronous parts on their own: liveness, backoff, dial planning, peer table, exchange, store, keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from p2p_sidecar.node import identity
from p2p_sidecar.node.addresses import advertised_addrs, parse_peer_addr, parse_peer_list
from p2p_sidecar.node.capabilities import Capabilities
from p2p_sidecar.node.connections import Backoff, plan_dials
from p2p_sidecar.node.liveness import LivenessPolicy
from p2p_sidecar.node.peer_exchange import merge, shareable
from p2p_sidecar.node.peer_store import DB_FILE, PeerStore
from p2p_sidecar.node.peers import PeerRecord, PeerState, PeerTable

ME = "12D3KooWAyj1GoXC3PNoPUNCbBDkFEFHU9JHuxN6F2iwpZZPWHNJ"
P1 = "12D3KooWBE2ucXFS2cfStcm8tNA3PqaHCw1wchf3US3k8kUoVGWg"
P2 = "12D3KooWFTqGwDGmH9ahr7yvLdrsTVS2z3KMTW5iAWVJtaQ11S4j"
P3 = "12D3KooWMrZ9H4wV7dodAN3Y9dmepy32kqECUJgA6hWtAidwsNMc"


def live(table: PeerTable, peer_id: str, now: float = 0.0) -> PeerRecord:
    record = table.ensure(peer_id, now=now, source="test", addrs=["/ip4/127.0.0.1/tcp/1"])
    assert record is not None
    LivenessPolicy(1.0, 3.0).connected(record, now, 1000.0 + now)
    return record


def state(record: PeerRecord) -> PeerState:
    """The record's state, read afresh (after a call that changed it, mypy would still assume the last one)."""
    return record.state


# -- liveness -------------------------------------------------------------------------------------------


def test_a_silent_peer_is_gone_exactly_after_the_timeout() -> None:
    policy = LivenessPolicy(ping_interval=1.0, gone_timeout=3.0)
    record = live(PeerTable(ME), P1, now=10.0)
    assert policy.due(record, 10.0)
    record.last_ping_mono = 10.0
    assert not policy.due(record, 10.5) and policy.due(record, 11.0)
    assert not policy.failed(record, 11.0, "refused")
    assert record.state is PeerState.UNREACHABLE and record.consecutive_failures == 1
    assert not policy.expire(record, 12.9)
    assert policy.expire(record, 13.0)
    assert state(record) is PeerState.GONE and record.connected_since is None
    assert not policy.expire(record, 20.0)  # only once
    assert not policy.due(record, 20.0)  # gone peers are not pinged; the connection manager redials them


def test_a_late_answer_brings_an_unreachable_peer_back() -> None:
    policy = LivenessPolicy(1.0, 3.0)
    record = live(PeerTable(ME), P1)
    policy.failed(record, 1.0, "timeout")
    policy.pinged(record, 2.0, 2000.0, rtt_ms=4.0)
    assert record.state is PeerState.CONNECTED and record.consecutive_failures == 0
    assert record.last_seen == 2000.0 and not policy.expire(record, 4.9)


def test_latency_is_smoothed_and_bounded() -> None:
    policy = LivenessPolicy(1.0, 3.0, smoothing=0.5)
    record = live(PeerTable(ME), P1)
    for rtt in (10.0, 20.0, 2.0):
        policy.pinged(record, 0.0, 0.0, rtt)
    assert record.latency_ms == pytest.approx(8.5)
    assert (record.min_rtt_ms, record.max_rtt_ms, record.last_rtt_ms, record.pings_ok) == (2.0, 20.0, 2.0, 3)


def test_contact_does_not_revive_a_peer_we_hung_up_on() -> None:
    policy = LivenessPolicy(1.0, 3.0)
    record = live(PeerTable(ME), P1)
    record.state = PeerState.DISCONNECTED
    policy.contact(record, 5.0, 5.0)
    assert record.state is PeerState.DISCONNECTED
    assert policy.connected(record, 6.0, 6.0)  # a new hello does
    assert state(record) is PeerState.CONNECTED


# -- backoff and dial planning -----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum_with_bounded_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, jitter=0.2)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert 0.4 <= backoff.delay(1, 0.0) <= backoff.delay(1, 0.999) <= 0.6
    assert backoff.delay(1000, 0.999) == 8.0


def test_bootstrap_peers_are_always_redialled_others_only_below_target() -> None:
    table = PeerTable(ME)
    boot = table.ensure(P1, now=0, source="bootstrap", addrs=["/ip4/127.0.0.1/tcp/1"])
    other = table.ensure(P2, now=0, source="exchange", addrs=["/ip4/127.0.0.1/tcp/2"])
    live(table, P3)
    assert boot is not None and other is not None
    assert plan_dials(table, 0.0, target=2, in_flight=set(), limit=10) == [boot]
    assert plan_dials(table, 0.0, target=3, in_flight=set(), limit=10) == [boot, other]
    assert plan_dials(table, 0.0, target=0, in_flight=set(), limit=10) == [boot]
    assert plan_dials(table, 0.0, target=3, in_flight={P1}, limit=10) == [other]
    boot.next_dial_mono = 5.0  # backing off
    assert plan_dials(table, 1.0, target=0, in_flight=set(), limit=10) == []
    assert plan_dials(table, 5.0, target=0, in_flight=set(), limit=10) == [boot]
    boot.state = PeerState.DISCONNECTED  # hung up on request: left alone
    assert plan_dials(table, 9.0, target=9, in_flight=set(), limit=10) == [other]


def test_plan_prefers_peers_that_failed_less_and_were_seen_recently() -> None:
    table = PeerTable(ME)
    a = table.ensure(P1, now=0, source="exchange", addrs=["/ip4/127.0.0.1/tcp/1"])
    b = table.ensure(P2, now=0, source="exchange", addrs=["/ip4/127.0.0.1/tcp/2"])
    assert a is not None and b is not None
    a.dial_failures, b.last_seen = 2, 50.0
    assert plan_dials(table, 0.0, target=1, in_flight=set(), limit=10) == [b]


# -- table, exchange, capabilities ---------------------------------------------------------------------------


def test_table_never_holds_itself_and_filters_and_sorts() -> None:
    table = PeerTable(ME)
    assert table.ensure(ME, now=0, source="x") is None
    fast, slow = live(table, P1), live(table, P2)
    fast.latency_ms, slow.latency_ms = 1.0, 9.0
    slow.capabilities = {"tools": ["echo"], "task_types": ["hash"]}
    assert [r.peer_id for r in table.select(sort_by="latency")] == [P1, P2]
    assert [r.peer_id for r in table.select(capability_filter=["echo", "hash"])] == [P2]
    assert [r.peer_id for r in table.select(capability_filter=["tool:echo", "task:hash"])] == [P2]
    assert table.select(capability_filter=["task:echo"]) == [] and table.select(capability_filter=["nope"]) == []
    slow.state = PeerState.GONE
    assert [r.peer_id for r in table.select(statuses=["gone"])] == [P2]


def test_table_is_bounded_and_forgets_the_stalest_idle_peer() -> None:
    table = PeerTable(ME, max_peers=2)
    boot = table.ensure(P1, now=0, source="bootstrap")
    old = table.ensure(P2, now=0, source="exchange")
    assert boot is not None and old is not None
    old.last_seen = 5.0
    assert table.ensure(P3, now=1, source="exchange") is not None
    assert table.get(P2) is None and table.evicted == [P2] and table.get(P1) is boot  # bootstrap peers stay
    live(table, P3)
    assert table.ensure(P2, now=2, source="exchange") is None  # nothing left that may be forgotten
    assert len(table) == 2


def test_exchange_shares_connected_peers_and_merges_only_valid_entries() -> None:
    table = PeerTable(ME)
    live(table, P1)
    assert shareable(table, requester=P1) == []
    assert shareable(table, requester=P2) == [{"peer_id": P1, "addrs": ["/ip4/127.0.0.1/tcp/1"]}]
    entries = [
        {"peer_id": P2, "addrs": ["/ip4/127.0.0.1/tcp/2", "not an addr", 7]},
        {"peer_id": ME, "addrs": ["/ip4/127.0.0.1/tcp/9"]},  # ourselves
        {"peer_id": P3, "addrs": [f"/ip4/127.0.0.1/tcp/3/p2p/{P1}"]},  # id mismatch
        {"peer_id": "garbage", "addrs": ["/ip4/127.0.0.1/tcp/4"]},
        "nonsense",
    ]
    assert merge(table, entries, now=1.0) == [P2]
    record = table.get(P2)
    assert record is not None and record.addrs == ["/ip4/127.0.0.1/tcp/2"] and record.state is PeerState.KNOWN
    assert table.get(P3) is None and merge(table, "not a list", now=1.0) == []


def test_capabilities_are_the_allowed_tools_the_gateway_has() -> None:
    gateway_tools = ["echo", "hash_content"]
    caps = Capabilities(["hash_content", "content_cid"], lambda: gateway_tools)
    assert caps.served_tools() == ["hash_content"] and caps.serves("hash_content") and not caps.serves("echo")
    first = caps.revision
    gateway_tools.append("content_cid")
    assert caps.served_tools() == ["content_cid", "hash_content"] and caps.revision != first
    caps.add_task_types(["hash"])
    assert caps.snapshot() == {"tools": ["content_cid", "hash_content"], "task_types": ["hash"]}
    assert Capabilities([], lambda: gateway_tools).served_tools() == []  # nothing exposed by default


# -- addresses ------------------------------------------------------------------------------------------------


def test_peer_addresses() -> None:
    peer = parse_peer_addr(f"/ip4/10.0.0.1/tcp/4001/p2p/{P1}")
    assert (peer.peer_id, peer.addr) == (P1, "/ip4/10.0.0.1/tcp/4001")
    assert parse_peer_addr("/ip4/10.0.0.1/tcp/4001", peer_id=P1).full == f"/ip4/10.0.0.1/tcp/4001/p2p/{P1}"
    for bad in ["/ip4/10.0.0.1/tcp/4001", f"/ip4/10.0.0.1/udp/1/p2p/{P1}", "nonsense", "/ip4/1.2.3/tcp/1"]:
        with pytest.raises(ValueError):
            parse_peer_addr(bad)
    with pytest.raises(ValueError, match="names peer"):
        parse_peer_addr(f"/ip4/10.0.0.1/tcp/1/p2p/{P1}", peer_id=P2)
    good, bad_lines = parse_peer_list([f"/ip4/1.1.1.1/tcp/1/p2p/{P1}  # first", "", "# only a comment", "oops"])
    assert [p.peer_id for p in good] == [P1] and bad_lines == [4]


def test_wildcard_binds_are_advertised_as_real_addresses() -> None:
    addrs = advertised_addrs(["/ip4/0.0.0.0/tcp/4001", "/ip4/10.1.2.3/tcp/5"])
    assert "/ip4/127.0.0.1/tcp/4001" in addrs and "/ip4/10.1.2.3/tcp/5" in addrs
    assert not any("0.0.0.0" in addr for addr in addrs)


# -- persistence ------------------------------------------------------------------------------------------------


def test_peer_store_survives_a_restart(tmp_path: Path) -> None:
    store = PeerStore.open(tmp_path)
    table = PeerTable(ME)
    record = live(table, P1)
    record.capabilities, record.persist, record.latency_ms, record.last_rtt_ms = {"tools": ["echo"]}, True, 1.5, 1.5
    record.sources.add("bootstrap")
    store.save(table, now=100.0)
    store.save(table, now=110.0)  # within SAMPLE_EVERY: no second sample
    store.close()
    assert stat.S_IMODE((tmp_path / DB_FILE).stat().st_mode) == 0o600
    reopened = PeerStore.open(tmp_path)
    [loaded] = reopened.load()
    assert loaded.peer_id == P1 and loaded.state is PeerState.KNOWN  # alive or not is for liveness to find out
    assert loaded.persist and loaded.capabilities == {"tools": ["echo"]} and loaded.latency_ms == 1.5
    assert loaded.addrs == ["/ip4/127.0.0.1/tcp/1"] and "store" in loaded.sources
    assert not loaded.is_bootstrap  # the configuration of the new run decides that
    assert reopened.history(P1, since=0.0) == [(100.0, 1.5)]
    reopened.forget(P1)
    assert reopened.load() == []
    reopened.close()


def test_an_unreadable_peer_store_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"this is not sqlite" * 100)
    store = PeerStore.open(tmp_path)
    assert store.load() == []
    store.close()
    assert any(path.name.startswith(DB_FILE + ".corrupt-") for path in tmp_path.iterdir())


def test_identity_is_created_once_private_and_stable(tmp_path: Path) -> None:
    first, created = identity.load_or_create(tmp_path)
    second, created_again = identity.load_or_create(tmp_path)
    assert created and not created_again
    assert first.public_key.to_bytes() == second.public_key.to_bytes()
    assert stat.S_IMODE(identity.key_path(tmp_path).stat().st_mode) == 0o600
    identity.key_path(tmp_path).chmod(0o644)
    identity.load_or_create(tmp_path)
    assert stat.S_IMODE(identity.key_path(tmp_path).stat().st_mode) == 0o600


def test_a_corrupt_key_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    identity.key_path(tmp_path).write_bytes(b"garbage")
    with pytest.raises(identity.IdentityError, match="not a libp2p private key"):
        identity.load_or_create(tmp_path)
    assert identity.key_path(tmp_path).read_bytes() == b"garbage"
