"""Which peers an owner tells about its waiting work, and how much of it: a pure state machine, no I/O, no clock.

Workers pull: a node claims tasks only when it has free slots, so a busy node
simply does not ask.  The owner's part is to make sure the right peers know
there is something to pull, without telling everyone about every task:

* **Local first.**  Tasks this node's own workers will take (their free slots,
  ``local_free``) are not offered; only the overflow is.  Tasks placed
  ``remote`` are all overflow, tasks placed on one peer go to that peer.
* **Credit.**  Each peer's free slots per task type, as it last said (in its
  answer to a hint, its claims and its reports).  A peer never heard from is
  assumed to have ``default_credit``.
* **Engaged peers.**  A hinted peer is expected to claim up to its credit (or
  the tasks it was told of, if fewer) soon.  The owner hints further peers only
  for the overflow that engaged peers do not cover, most credit first and
  least recently hinted among equals, so a burst spreads across the network
  and a trickle costs one hint per task, not one per peer.
* **Refresh.**  An engaged peer that does not claim within ``refresh_s`` lost
  the hint (or the claim): it is hinted again.  A peer that said it is full
  stays engaged for ``engaged_s``: it keeps the owner on its list and pulls
  as soon as a slot frees.  A claim that comes back short (the peer drained
  what was claimable) ends the engagement: the peer hears again when new work
  overflows.

The owner's network shell (``lending.py``) feeds events in and sends the hints
``plan`` returns; the rules here are tested exhaustively without a network.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from p2p_sidecar.taskqueue.protocol import Hint
from p2p_sidecar.taskqueue.records import Placement, PlacementKind

REFRESH_S = 1.0
ENGAGED_S = 2.0
"""How long a peer that said it is full is left to pull by itself before it is told again.  Short, because a
peer that restarted meanwhile lost the hint (its new process knows of no owner), and nothing else tells the
owner so; the cost is one hint per full peer every two seconds while work overflows."""
DEFAULT_CREDIT = 8
"""Free slots assumed for a peer that never said: the default ``SIDECAR_WORKER_CONCURRENCY``."""


@dataclass
class _Engagement:
    hinted_at: float
    expected: int
    """Tasks the peer should claim soon on account of this hint."""


@dataclass
class _Peer:
    credit: dict[str, int] = field(default_factory=dict)
    engaged: dict[str, _Engagement] = field(default_factory=dict)
    last_hint: float = float("-inf")
    quiet_until: float = float("-inf")
    """After a hint could not be delivered: not hinted again before this time."""


@dataclass(frozen=True, slots=True)
class Need:
    """What peers should take of one task type: the overflow beyond local slots, and per-peer pinned work."""

    anywhere: int
    pinned: Mapping[str, int]


def needs(demand: Mapping[tuple[str, Placement], int], local_free: Mapping[str, int]) -> dict[str, Need]:
    """Per task type: claimable tasks that this node's own workers will not take, and tasks placed on one peer."""
    any_count: dict[str, int] = defaultdict(int)
    remote: dict[str, int] = defaultdict(int)
    pinned: dict[str, dict[str, int]] = defaultdict(dict)
    for (task_type, placement), count in demand.items():
        if count <= 0:
            continue
        if placement.kind is PlacementKind.ANY:
            any_count[task_type] += count
        elif placement.kind is PlacementKind.REMOTE:
            remote[task_type] += count
        elif placement.kind is PlacementKind.PEER and placement.peer is not None:
            pinned[task_type][placement.peer] = pinned[task_type].get(placement.peer, 0) + count
    result = {}
    for task_type in set(any_count) | set(remote) | set(pinned):
        overflow = max(0, any_count[task_type] - local_free.get(task_type, 0)) + remote[task_type]
        if overflow or pinned[task_type]:
            result[task_type] = Need(overflow, dict(pinned[task_type]))
    return result


class Dispatcher:
    def __init__(
        self, *, refresh_s: float = REFRESH_S, engaged_s: float = ENGAGED_S, default_credit: int = DEFAULT_CREDIT
    ) -> None:
        self.refresh_s = refresh_s
        self.engaged_s = engaged_s
        self.default_credit = default_credit
        self._peers: dict[str, _Peer] = {}

    def _peer(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
        return state

    def credit(self, peer: str, task_type: str) -> int:
        state = self._peers.get(peer)
        if state is None:
            return self.default_credit
        return state.credit.get(task_type, self.default_credit)

    def engaged(self, peer: str, task_type: str, now: float) -> bool:
        state = self._peers.get(peer)
        engagement = state.engaged.get(task_type) if state is not None else None
        if engagement is None:
            return False
        window = self.refresh_s if engagement.expected > 0 else self.engaged_s
        return now - engagement.hinted_at < window

    def expected(self, peer: str, task_type: str, now: float) -> int:
        if not self.engaged(peer, task_type, now):
            return 0
        return self._peers[peer].engaged[task_type].expected

    # -- deciding ----------------------------------------------------------------------------------------------
    def plan(
        self, now: float, wanted: Mapping[str, Need], capable: Callable[[str], Sequence[str]]
    ) -> list[tuple[str, Hint]]:
        """The hints to send now, one per peer at most; records them as sent."""
        ready: dict[str, dict[str, int]] = defaultdict(dict)
        for task_type, need in sorted(wanted.items()):
            peers = [peer for peer in capable(task_type) if self._peer(peer).quiet_until <= now]
            for peer, count in need.pinned.items():
                if peer in peers and not self.engaged(peer, task_type, now):
                    ready[peer][task_type] = count
                    self._engage(peer, task_type, min(count, self.credit(peer, task_type)), now)
            if need.anywhere <= 0:
                continue
            uncovered = need.anywhere - sum(self.expected(peer, task_type, now) for peer in peers)
            if uncovered <= 0:
                continue
            idle = [peer for peer in peers if not self.engaged(peer, task_type, now)]
            idle.sort(key=lambda peer: (-self.credit(peer, task_type), self._peer(peer).last_hint))
            for peer in idle:
                if uncovered <= 0:
                    break
                give = min(self.credit(peer, task_type), uncovered)
                # A peer with no credit is told all the same: it keeps the hint and pulls when a slot frees.
                ready[peer][task_type] = give if give > 0 else uncovered
                self._engage(peer, task_type, give, now)
                uncovered -= give
        hints = []
        for peer, counts in ready.items():
            self._peer(peer).last_hint = now
            hints.append((peer, Hint(tuple(sorted(counts)), counts)))
        return hints

    def _engage(self, peer: str, task_type: str, expected: int, now: float) -> None:
        self._peer(peer).engaged[task_type] = _Engagement(now, max(0, expected))

    # -- learning ----------------------------------------------------------------------------------------------
    def hint_answered(self, peer: str, types: Iterable[str], *, accepted: bool, free: Mapping[str, int]) -> None:
        """A hinted peer's answer: its free slots now (fewer than expected: others must cover the rest)."""
        state = self._peer(peer)
        for task_type in types:
            engagement = state.engaged.get(task_type)
            if not accepted:
                state.engaged.pop(task_type, None)
                state.credit[task_type] = 0
                continue
            if task_type in free:
                state.credit[task_type] = free[task_type]
                if engagement is not None:
                    engagement.expected = min(engagement.expected, free[task_type])

    def hint_failed(self, peer: str, types: Iterable[str], now: float) -> None:
        """The hint did not arrive (peer unreachable): hint others instead, and this one not for a while."""
        state = self._peer(peer)
        for task_type in types:
            state.engaged.pop(task_type, None)
        state.quiet_until = now + self.refresh_s

    def claimed(
        self, peer: str, types: Sequence[str], *, asked: int, got: int, free: Mapping[str, int], now: float
    ) -> None:
        """A peer's claim: what it took counts against what we expected of it; a short one ends the engagement."""
        state = self._peer(peer)
        state.quiet_until = float("-inf")
        left = got
        for task_type in types:
            engagement = state.engaged.get(task_type)
            if engagement is None:
                continue
            if got < asked:
                del state.engaged[task_type]
            else:
                taken = min(left, engagement.expected)
                engagement.expected -= taken
                left -= taken
                engagement.hinted_at = now  # it is pulling: the hint arrived
        for task_type in types:
            spare = free.get(task_type)
            if spare is not None:
                state.credit[task_type] = spare + (asked - got)

    def reported(self, peer: str, free: Mapping[str, int]) -> None:
        """A peer's report batch told its free slots."""
        if free:
            self._peer(peer).credit.update(free)

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)
