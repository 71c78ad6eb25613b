"""Keeping the node connected: a target number of peers, bootstrap peers re-dialled with backoff.

``plan_dials`` is the pure decision (who to dial now), ``Backoff`` the pure
delay schedule; ``ConnectionManager`` is the loop that carries them out.
Bootstrap and persisted peers are always wanted: whenever one is not
connected it is re-dialled, with exponential backoff (0.5 s doubling up to
``SIDECAR_REDIAL_MAX_BACKOFF``, with jitter so a restarted network does not
dial in lock-step).  Other known peers (learned through peer exchange, the
database or mDNS) are dialled only while fewer than
``SIDECAR_TARGET_CONNECTIONS`` peers are connected, best candidates first.
A peer we hung up on (``peer_disconnect``) is left alone.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from p2p_sidecar.node.peers import LIVE_STATES, PeerRecord, PeerState, PeerTable
from shared_schema import BridgeError

log = logging.getLogger(__name__)

Dialer = Callable[[PeerRecord], Awaitable[None]]
"""Connect to a peer and exchange hellos; raise ``BridgeError`` on failure."""

_DIALABLE = (PeerState.KNOWN, PeerState.GONE)


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: float = 0.5) -> float:
        """Seconds to wait after ``failures`` consecutive failed dials (``rand`` in [0, 1) spreads it)."""
        if failures <= 0:
            return 0.0
        base = min(self.maximum, self.initial * self.factor ** min(failures - 1, 64))
        return min(self.maximum, base * (1.0 - self.jitter + 2.0 * self.jitter * rand))


def wanted(record: PeerRecord) -> bool:
    """Peers the node keeps connected whatever the target: bootstrap and persisted ones."""
    return record.is_bootstrap or record.persist


def plan_dials(table: PeerTable, now: float, *, target: int, in_flight: set[str], limit: int) -> list[PeerRecord]:
    """Whom to dial now, most important first, at most ``limit``."""

    def ready(record: PeerRecord) -> bool:
        return (
            record.state in _DIALABLE
            and bool(record.addrs)
            and record.next_dial_mono <= now
            and record.peer_id not in in_flight
        )

    must = [record for record in table if wanted(record) and ready(record)]
    live = sum(1 for record in table if record.state in LIVE_STATES)
    room = target - live - len(in_flight) - len(must)
    optional: list[PeerRecord] = []
    if room > 0:
        others = [record for record in table if not wanted(record) and ready(record)]
        others.sort(key=lambda r: (r.dial_failures, -(r.last_seen or 0.0), r.peer_id))
        optional = others[:room]
    return (must + optional)[: max(0, limit)]


class ConnectionManager:
    def __init__(
        self,
        table: PeerTable,
        dial: Dialer,
        *,
        target: int,
        backoff: Backoff,
        tick: float = 1.0,
        max_parallel: int = 8,
    ) -> None:
        self._table = table
        self._dial = dial
        self._target = target
        self._backoff = backoff
        self._tick = tick
        self._max_parallel = max_parallel
        self._in_flight: set[str] = set()
        self._wake = trio.Event()

    def wake(self) -> None:
        """Something changed (a peer learned or lost): plan again now rather than at the next tick."""
        self._wake.set()

    def record_failure(self, record: PeerRecord, error: str) -> None:
        record.dial_failures += 1
        record.last_error = error
        delay = self._backoff.delay(record.dial_failures, random.random())
        record.next_dial_mono = trio.current_time() + delay
        log.info(
            "dial to %s failed (%d in a row, next try in %.1fs): %s",
            record.peer_id,
            record.dial_failures,
            delay,
            error,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                room = self._max_parallel - len(self._in_flight)
                plan = plan_dials(
                    self._table, trio.current_time(), target=self._target, in_flight=self._in_flight, limit=room
                )
                for record in plan:
                    self._in_flight.add(record.peer_id)
                    nursery.start_soon(self._dial_one, record)
                with trio.move_on_after(self._tick):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _dial_one(self, record: PeerRecord) -> None:
        try:
            await self._dial(record)
        except BridgeError as exc:
            self.record_failure(record, exc.message)
        finally:
            self._in_flight.discard(record.peer_id)
