"""How many bytes of unfinished messages the node holds for its peers, per peer and in total.

A frame of the peer protocol announces its length first and may then arrive
slowly, or never finish.  Until its last byte arrives, what came so far sits
in memory; a peer could announce many 4 MiB frames on many streams (and under
many peer ids, which cost nothing to make) and send all but the last byte of
each.  Each ``FramedStream`` charges the bytes of its unfinished frame here
as they arrive and gives them back when the frame completes or the stream
ends; a charge that would pass ``SIDECAR_P2P_MAX_PARTIAL_BYTES_PER_PEER`` or
``SIDECAR_P2P_MAX_PARTIAL_BYTES`` is refused, and the stream that asked is
reset.  Together with the deadline on a frame in progress
(``SIDECAR_P2P_FRAME_TIMEOUT``), this bounds both how much and how long.

Complete messages are not charged: they are decoded and handled at once, and
how many run at a time is bounded by ``SIDECAR_P2P_MAX_INBOUND_REQUESTS``.

py-libp2p's resource manager (``libp2p.rcmgr``) also counts memory, but for the
whole node only (no per-peer account), in whole megabytes, and behind a circuit
breaker that, once a few reservations fail, refuses every reservation for a
while: one peer holding the budget would then stall every other peer's messages
too.  So the node keeps this small account of its own.

Synchronous and free of I/O.
"""

from __future__ import annotations

PEER = "peer"
NODE = "node"


class PartialFrameBudget:
    def __init__(self, *, per_peer: int, total: int) -> None:
        self.per_peer = per_peer
        self.total = total
        self.held = 0
        self.high_water = 0
        """The most held at once since someone (``memory.HeapTrimmer``) last reset it."""
        self._by_peer: dict[str, int] = {}

    def held_by(self, peer_id: str) -> int:
        return self._by_peer.get(peer_id, 0)

    @property
    def peers(self) -> int:
        """Peers holding some of the budget now."""
        return len(self._by_peer)

    def take(self, peer_id: str, size: int) -> str | None:
        """Charge ``size`` more bytes to ``peer_id``; None if granted, else which limit it passes (PEER or NODE)."""
        if size <= 0:
            return None
        mine = self._by_peer.get(peer_id, 0)
        if mine + size > self.per_peer:
            return PEER
        if self.held + size > self.total:
            return NODE
        self._by_peer[peer_id] = mine + size
        self.held += size
        self.high_water = max(self.high_water, self.held)
        return None

    def give_back(self, peer_id: str, size: int) -> None:
        if size <= 0:
            return
        mine = self._by_peer.get(peer_id, 0)
        size = min(size, mine)
        self.held -= size
        if mine - size:
            self._by_peer[peer_id] = mine - size
        else:
            self._by_peer.pop(peer_id, None)
