"""What the status tools (``p2p_service_status``, ``node_info``) read, kept cheap: counts and addresses.

Probes and dashboards call these tools; with a full peer table (10,000 records) counting states by
scanning it cost milliseconds per call, and building the advertised multiaddrs cost about 100 µs each
time.  These tests hold the cheap versions to the same answers as the expensive ones.
"""

from __future__ import annotations

import random
import time
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from p2p_sidecar.node import host as node_host
from p2p_sidecar.node.host import Node
from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.node.peers import PeerRecord, PeerState, PeerTable
from p2p_sidecar.settings import SidecarSettings

ME = "12D3KooWAyj1GoXC3PNoPUNCbBDkFEFHU9JHuxN6F2iwpZZPWHNJ"


def scanned(table: PeerTable) -> dict[PeerState, int]:
    return {state: sum(1 for record in table if record.state is state) for state in PeerState}


def counted(table: PeerTable) -> dict[PeerState, int]:
    return {state: table.count(state) for state in PeerState}


def test_state_counts_follow_every_change_to_the_table() -> None:
    """Random adds, replacements, state changes, evictions and removals: the kept counts equal a full scan."""
    rng = random.Random(7)
    table = PeerTable(ME, max_peers=40)
    ids = [f"12D3KooWpeer{n:04d}" for n in range(80)]
    states = list(PeerState)
    for step in range(5000):
        peer_id = rng.choice(ids)
        action = rng.randrange(6)
        if action == 0:
            table.ensure(peer_id, now=step, source=rng.choice(["exchange", "bootstrap", "mdns"]))
        elif action == 1:  # a record loaded from the store replaces the live one
            table.add(PeerRecord(peer_id, state=rng.choice(states), first_seen=step))
        elif action in (2, 3):
            record = table.get(peer_id)
            if record is not None:
                record.state = rng.choice(states)
        elif action == 4:
            table.remove(peer_id)
        else:
            record = table.get(peer_id)
            if record is not None:
                record.last_seen = float(step)
        assert counted(table) == scanned(table), f"step {step}"
    assert sum(counted(table).values()) == len(table) <= 40
    assert table.evicted  # the bound was reached and records were forgotten on the way


def test_a_record_outside_the_table_no_longer_counts() -> None:
    table = PeerTable(ME)
    record = table.ensure("12D3KooWpeer0001", now=0, source="exchange")
    assert record is not None and table.count(PeerState.KNOWN) == 1
    table.remove(record.peer_id)
    record.state = PeerState.CONNECTED  # someone still holding the record changes it: the table is not fooled
    assert counted(table) == dict.fromkeys(PeerState, 0)
    replaced = PeerRecord(record.peer_id, state=PeerState.GONE)
    table.add(replaced)
    table.add(PeerRecord(record.peer_id))  # and the replaced one drops out when it is replaced in turn
    replaced.state = PeerState.CONNECTED
    assert counted(table) == {**dict.fromkeys(PeerState, 0), PeerState.KNOWN: 1}


class _CountingHost:
    """Stands in for py-libp2p's host where ``info`` reads it: counts how often addresses are built."""

    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs
        self.built = 0

    def get_addrs(self) -> list[str]:
        self.built += 1
        return list(self.addrs)

    def get_mux(self) -> _CountingHost:
        return self

    def get_protocols(self) -> list[str]:
        return ["/mcp-p2p/rpc/1.0.0"]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    async def no_gateway(*_args: Any) -> Any:
        raise AssertionError("not called")

    return Node(
        SidecarSettings(data_dir=tmp_path),
        NodeMetrics(CollectorRegistry()),
        gateway_tools=list,
        gateway_connected=lambda: False,
        call_gateway=no_gateway,
    )


def test_advertised_addresses_are_built_again_only_when_the_listeners_change_or_they_are_old(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(node_host, "time", fake_time)  # the clock advertised_addrs reads, in the node module only
    fake = _CountingHost([f"/ip4/127.0.0.1/tcp/4001/p2p/{node.peer_id}"])
    node.host = fake  # type: ignore[assignment]
    node.listen_addrs = ["/ip4/127.0.0.1/tcp/4001"]
    info = node.info()
    assert info["announce_addrs"] == ["/ip4/127.0.0.1/tcp/4001"]
    assert info["multiaddrs"] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{node.peer_id}"]
    assert node.advertised_addrs() == ["/ip4/127.0.0.1/tcp/4001"] and fake.built == 1
    node.advertised_addrs().append("/ip4/6.6.6.6/tcp/1")  # a caller changing its copy changes nothing
    assert node.advertised_addrs() == ["/ip4/127.0.0.1/tcp/4001"] and fake.built == 1
    fake.addrs = [f"/ip4/127.0.0.1/tcp/4002/p2p/{node.peer_id}"]
    node.listen_addrs = ["/ip4/127.0.0.1/tcp/4002"]  # listening elsewhere (a restart of the host)
    assert node.advertised_addrs() == ["/ip4/127.0.0.1/tcp/4002"] and fake.built == 2
    fake.addrs = [f"/ip4/10.0.0.5/tcp/4002/p2p/{node.peer_id}"]  # an interface changed under a wildcard bind
    clock[0] += node_host.ADDRESS_REFRESH_SECONDS - 1
    assert node.advertised_addrs() == ["/ip4/127.0.0.1/tcp/4002"] and fake.built == 2
    clock[0] += 2
    assert node.advertised_addrs() == ["/ip4/10.0.0.5/tcp/4002"] and fake.built == 3
    node.host = None
    assert node.advertised_addrs() == []
