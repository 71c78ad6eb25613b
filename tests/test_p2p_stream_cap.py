"""The per-peer cap on inbound streams of our protocol, on its own: a peer past it gets its new streams reset.

The combined socket attack (tests/test_socket_attacks.py) throws idle streams at the node too, but amid a
dozen other attacks on a shared machine it may not manage to open enough of them in its window; here one
peer opens streams until it is past the cap, nothing else going on, and the count is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.host.exceptions import StreamFailure

from tests.p2p_client import Opener, run_client, writable
from tests.procs import Peer, http_json, p2p_network, running_network

pytestmark = pytest.mark.e2e
CAP = 8
REFUSED = 'sidecar_p2p_protocol_errors_total{reason="too_many_streams"}'


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Peer]:
    peers = p2p_network(tmp_path, ["a"], SIDECAR_P2P_MAX_INBOUND_STREAMS_PER_PEER=str(CAP), SIDECAR_LOG_LEVEL="warning")
    with running_network(peers):
        yield peers["a"]


def metric(node: Peer, name: str) -> float:
    text = http_json("GET", f"{node.admin}/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def node_sees(node: Peer, condition: Callable[[float, float], bool], what: str) -> None:
    """Wait (at most 10 s) until the node's open inbound streams and its refusals so far satisfy ``condition``."""

    def both() -> tuple[float, float]:
        return metric(node, "sidecar_p2p_inbound_streams"), metric(node, REFUSED)

    with trio.move_on_after(10):
        while not condition(*await trio.to_thread.run_sync(both)):
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not seen within 10 s: {what} (open streams, refusals: {both()})")


def _handled(streams: float, open_: float, refused: float) -> bool:
    """The node has looked at ``streams`` new streams in all (counting the refusals before this test's)."""
    return open_ + refused == streams


def test_streams_past_the_per_peer_cap_are_reset_and_the_others_kept(node: Peer) -> None:
    before = metric(node, REFUSED)

    async def scenario(open_stream: Opener) -> tuple[int, int, bool]:
        await node_sees(node, lambda open_, _: open_ == 0, "the hello's stream, closed, left the node's count")
        usable: list[INetStream] = []
        refused_here = 0
        for index in range(CAP + 3):
            try:
                stream = await open_stream()
            except StreamFailure:  # reset while the protocol was being confirmed: refused all the same
                refused_here += 1
                continue
            # the node has looked at the new stream: counted it, or refused it
            await node_sees(node, partial(_handled, index + 1 + before), "the node took the stream")
            if await writable(stream):
                usable.append(stream)
            else:
                refused_here += 1
        for stream in usable:
            await stream.close()
        await node_sees(node, lambda open_, _: open_ == 0, "the closed streams left the node's count")
        try:
            again = await open_stream()  # with the others closed, a new one is served again
        except StreamFailure:
            return len(usable), refused_here, False
        return len(usable), refused_here, await writable(again)

    kept, reset, served_again = run_client(node.multiaddr, scenario)
    assert (kept, reset, served_again) == (CAP, 3, True)
    assert metric(node, REFUSED) - before == 3
