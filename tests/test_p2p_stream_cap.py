"""The per-peer cap on inbound streams of our protocol, on its own: a peer past it gets its new streams reset.

The combined socket attack (tests/test_socket_attacks.py) throws idle streams at the node too, but amid a
dozen other attacks on a shared machine it may not manage to open enough of them in its window; here one
peer opens streams until it is past the cap, nothing else going on, and the count is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from libp2p.host.exceptions import StreamFailure

from tests.p2p_client import Opener, run_client, writable
from tests.procs import Peer, http_json, p2p_network, running_network

pytestmark = pytest.mark.e2e
CAP = 8


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Peer]:
    peers = p2p_network(tmp_path, ["a"], SIDECAR_P2P_MAX_INBOUND_STREAMS_PER_PEER=str(CAP), SIDECAR_LOG_LEVEL="warning")
    with running_network(peers):
        yield peers["a"]


def metric(node: Peer, name: str) -> float:
    text = http_json("GET", f"{node.admin}/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_streams_past_the_per_peer_cap_are_reset_and_the_others_kept(node: Peer) -> None:
    refused = 'sidecar_p2p_protocol_errors_total{reason="too_many_streams"}'
    before = metric(node, refused)

    async def scenario(open_stream: Opener) -> tuple[int, int, bool]:
        await trio.sleep(0.5)  # the hello's stream, closed, has left the node's count
        usable, refused_here = [], 0
        for _ in range(CAP + 3):
            try:
                stream = await open_stream()
            except StreamFailure:  # reset while the protocol was being confirmed: refused all the same
                refused_here += 1
                continue
            await trio.sleep(0.05)  # the node looks at each new stream as it is handed over
            if await writable(stream):
                usable.append(stream)
            else:
                refused_here += 1
        for stream in usable:
            await stream.close()
        await trio.sleep(0.5)
        try:
            again = await open_stream()  # with the others closed, a new one is served again
        except StreamFailure:
            return len(usable), refused_here, False
        return len(usable), refused_here, await writable(again)

    kept, reset, served_again = run_client(node.multiaddr, scenario)
    assert (kept, reset, served_again) == (CAP, 3, True)
    assert metric(node, refused) - before == 3
