"""What the node knows about other peers: one ``PeerRecord`` each, in a ``PeerTable``.

Pure data, no I/O: the liveness, connection and exchange services update
records through the small methods here, ``peer_store`` persists them, and
the peer tools read them.  Two clocks appear on purpose: ``*_mono`` fields
are ``trio.current_time()`` values used for timing decisions (they never
jump), the others are wall-clock epoch seconds for people and the database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class PeerState(StrEnum):
    KNOWN = "known"
    """Heard of (configuration, database, exchange, mDNS) but not connected in this run."""
    CONNECTED = "connected"
    """Answered us within the gone timeout."""
    UNREACHABLE = "unreachable"
    """Was connected; its last contact attempt failed; not gone yet."""
    GONE = "gone"
    """Nothing heard for the gone timeout: its connection was closed."""
    DISCONNECTED = "disconnected"
    """We hung up on request (``peer_disconnect``); not re-dialled until asked."""


LIVE_STATES = frozenset({PeerState.CONNECTED, PeerState.UNREACHABLE})


class RpcRole(StrEnum):
    """What a peer does with our protocol ``/mcp-p2p/rpc/1.0.0`` (docs/p2p-protocol.md, "Peers that do not serve")."""

    FULL = "full"
    """It serves the protocol: it answered a request of ours."""
    CLIENT = "client"
    """It sends us requests but refuses streams of the protocol we open (a client-only implementation)."""
    NONE = "none"
    """A libp2p peer that refuses the protocol and has not used it: identify, ping and nothing of ours."""


@dataclass
class PeerRecord:
    peer_id: str
    addrs: list[str] = field(default_factory=list)
    state: PeerState = PeerState.KNOWN
    sources: set[str] = field(default_factory=set)
    first_seen: float = 0.0
    last_seen: float | None = None
    latency_ms: float | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    capabilities_revision: str | None = None
    version: str | None = None
    persist: bool = False
    serves_rpc: bool | None = None
    """Whether it serves our protocol: True once it answered us, False once it refused the protocol, else unknown."""
    # -- this run only ------------------------------------------------------
    connected_since: float | None = None
    last_contact_mono: float | None = None
    last_ping_mono: float | None = None
    last_rtt_ms: float | None = None
    min_rtt_ms: float | None = None
    max_rtt_ms: float | None = None
    consecutive_failures: int = 0
    pings_ok: int = 0
    pings_failed: int = 0
    requests_out: int = 0
    requests_in: int = 0
    last_used_mono: float | None = None
    """When it connected, or last sent us a request (this run): how long a peer that does not serve us is kept."""
    dial_failures: int = 0
    next_dial_mono: float = 0.0
    last_error: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # A record in a table keeps that table's per-state tally right, whoever changes its state.
        if name == "state":
            tally: Counter[PeerState] | None = self.__dict__.get("_tally")
            if tally is not None:
                tally[self.__dict__["state"]] -= 1
                tally[value] += 1
        object.__setattr__(self, name, value)

    @property
    def is_bootstrap(self) -> bool:
        return "bootstrap" in self.sources

    @property
    def rpc_role(self) -> RpcRole | None:
        if self.serves_rpc:
            return RpcRole.FULL
        if self.serves_rpc is False:
            return RpcRole.CLIENT if self.requests_in else RpcRole.NONE
        return None

    def matches(self, capability_filter: Iterable[str]) -> bool:
        """Whether the peer offers every item: ``tool:NAME``, ``task:TYPE``, or a bare name meaning either."""
        tools = set(self.capabilities.get("tools", []))
        task_types = set(self.capabilities.get("task_types", []))
        for item in capability_filter:
            kind, _, name = item.partition(":")
            if kind == "tool" and name:
                found = name in tools
            elif kind == "task" and name:
                found = name in task_types
            else:
                found = item in tools or item in task_types
            if not found:
                return False
        return True

    def summary(self, *, include_metrics: bool = False) -> dict[str, Any]:
        report: dict[str, Any] = {
            "peer_id": self.peer_id,
            "status": self.state.value,
            "connected": self.state in LIVE_STATES,
            "addrs": list(self.addrs),
            "last_seen": self.last_seen,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "capabilities": self.capabilities,
            "sources": sorted(self.sources),
            "persist": self.persist,
            "version": self.version,
            "rpc": None if self.rpc_role is None else self.rpc_role.value,
        }
        if include_metrics:
            report["metrics"] = self.metrics()
        return report

    def metrics(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "latency_ms": ms(self.latency_ms),
            "last_rtt_ms": ms(self.last_rtt_ms),
            "min_rtt_ms": ms(self.min_rtt_ms),
            "max_rtt_ms": ms(self.max_rtt_ms),
            "pings_ok": self.pings_ok,
            "pings_failed": self.pings_failed,
            "consecutive_failures": self.consecutive_failures,
            "requests_out": self.requests_out,
            "requests_in": self.requests_in,
            "dial_failures": self.dial_failures,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "connected_since": self.connected_since,
            "last_error": self.last_error,
        }


SORT_KEYS = ("last_seen", "latency", "peer_id", "first_seen")


class PeerTable:
    """Every peer this node knows, by peer id (never including itself), at most ``max_peers`` of them.

    Past the limit, adding a peer forgets the stalest one that is neither live
    nor wanted (bootstrap, persisted); ``evicted`` collects their ids so the
    store can forget them too.  A network (or a peer lying in peer exchange)
    can therefore not grow the table without bound.

    How many peers are in each state is kept up to date as states change:
    ``count`` is what status probes and metrics read, with up to ``max_peers``
    records to count.
    """

    def __init__(self, own_id: str, max_peers: int = 10_000) -> None:
        self.own_id = own_id
        self.max_peers = max_peers
        self._peers: dict[str, PeerRecord] = {}
        self._tally: Counter[PeerState] = Counter()
        self.evicted: list[str] = []

    def _track(self, record: PeerRecord) -> None:
        self._peers[record.peer_id] = record
        record.__dict__["_tally"] = self._tally
        self._tally[record.state] += 1

    def _untrack(self, peer_id: str) -> None:
        record = self._peers.pop(peer_id, None)
        if record is not None:
            self._tally[record.state] -= 1
            record.__dict__.pop("_tally", None)

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def ensure(self, peer_id: str, *, now: float, source: str, addrs: Iterable[str] = ()) -> PeerRecord | None:
        """The record for ``peer_id``, created if new; addresses are merged.  ``None`` for ourselves."""
        if peer_id == self.own_id:
            return None
        record = self._peers.get(peer_id)
        if record is None:
            if len(self._peers) >= self.max_peers and not self._evict_one():
                return None
            record = PeerRecord(peer_id, first_seen=now)
            self._track(record)
        record.sources.add(source)
        for addr in addrs:
            if addr not in record.addrs:
                record.addrs.append(addr)
        del record.addrs[:-16]  # keep the newest few; a peer does not have more real addresses than that
        return record

    def add(self, record: PeerRecord) -> None:
        if record.peer_id == self.own_id:
            return
        if record.peer_id not in self._peers and len(self._peers) >= self.max_peers and not self._evict_one():
            return
        self._untrack(record.peer_id)
        self._track(record)

    def _evict_one(self) -> bool:
        candidates = [
            record
            for record in self._peers.values()
            if record.state not in LIVE_STATES and not record.is_bootstrap and not record.persist
        ]
        if not candidates:
            return False
        stalest = min(candidates, key=lambda r: (r.last_seen or 0.0, r.first_seen))
        self._untrack(stalest.peer_id)
        self.evicted.append(stalest.peer_id)
        return True

    def remove(self, peer_id: str) -> None:
        self._untrack(peer_id)

    def forget(self, peer_id: str) -> None:
        """Remove a peer here and (at the next save) from the database."""
        if self._peers.pop(peer_id, None) is not None:
            self.evicted.append(peer_id)

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def in_state(self, *states: PeerState) -> list[PeerRecord]:
        return [record for record in self._peers.values() if record.state in states]

    def count(self, state: PeerState) -> int:
        return self._tally[state]

    def select(
        self,
        *,
        statuses: Iterable[str] = (),
        capability_filter: Iterable[str] = (),
        sort_by: str = "last_seen",
    ) -> list[PeerRecord]:
        wanted = set(statuses)
        needs = list(capability_filter)
        chosen = [
            record
            for record in self._peers.values()
            if (not wanted or record.state.value in wanted) and record.matches(needs)
        ]
        if sort_by == "latency":
            chosen.sort(key=lambda r: (r.latency_ms is None, r.latency_ms or 0.0, r.peer_id))
        elif sort_by == "peer_id":
            chosen.sort(key=lambda r: r.peer_id)
        elif sort_by == "first_seen":
            chosen.sort(key=lambda r: (r.first_seen, r.peer_id))
        else:
            chosen.sort(key=lambda r: (-(r.last_seen or 0.0), r.peer_id))
        return chosen
