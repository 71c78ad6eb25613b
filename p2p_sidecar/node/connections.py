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

Every other peer is remembered only while it is worth it: one that failed
``SIDECAR_PEER_FORGET_AFTER_FAILURES`` dials in a row, or that nobody has heard
from for ``SIDECAR_PEER_MAX_AGE``, is forgotten (here and in the database), so
an address learned once is not dialled forever.  A peer that does not serve our
protocol is never dialled for it (only kept connected if it is a bootstrap or
persisted peer), and one that is neither wanted nor using our protocol is hung
up on after ``SIDECAR_PEER_IDLE_TIMEOUT`` without a request from it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from p2p_sidecar.node.peers import LIVE_STATES, PeerRecord, PeerState, PeerTable
from shared_schema import BridgeError

log = logging.getLogger(__name__)

Dialer = Callable[[PeerRecord], Awaitable[None]]
"""Connect to a peer and exchange hellos; raise ``BridgeError`` on failure."""
HangUp = Callable[[PeerRecord], Awaitable[None]]
"""Close the connection to a peer."""

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


@dataclass(frozen=True)
class Retention:
    """How long peers that are not wanted are kept (see the module docstring)."""

    forget_after_failures: int = 10
    max_age: float = 86400.0
    idle_timeout: float = 120.0

    def forget_reason(self, record: PeerRecord, wall: float) -> str | None:
        """Why the node should forget this peer now, or None; never a live, bootstrap or persisted peer."""
        if record.state in LIVE_STATES or wanted(record):
            return None
        if record.dial_failures >= self.forget_after_failures:
            return f"{record.dial_failures} dials in a row failed"
        heard = record.last_seen if record.last_seen is not None else record.first_seen
        if wall - heard > self.max_age:
            return f"nothing heard from it for {wall - heard:.0f}s (SIDECAR_PEER_MAX_AGE {self.max_age:.0f}s)"
        return None

    def idle(self, record: PeerRecord, now: float) -> bool:
        """A connected peer that does not serve our protocol, is not wanted, and has not used it for a while."""
        if record.state not in LIVE_STATES or record.serves_rpc is not False or wanted(record):
            return False
        return record.last_used_mono is not None and now - record.last_used_mono >= self.idle_timeout


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
    live = sum(1 for record in table if record.state in LIVE_STATES and record.serves_rpc is not False)
    room = target - live - len(in_flight) - len(must)
    optional: list[PeerRecord] = []
    if room > 0:
        # a peer known not to serve our protocol is no use as one of the target connections
        others = [record for record in table if not wanted(record) and ready(record) and record.serves_rpc is not False]
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
        retention: Retention | None = None,
        hang_up: HangUp | None = None,
    ) -> None:
        self._table = table
        self._dial = dial
        self._retention = retention or Retention()
        self._hang_up = hang_up
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
        reason = self._retention.forget_reason(record, time.time())
        if reason is not None:
            self._forget(record, reason, error)
            return
        # The first failure and then every tenth are worth a line; the rest are counted in dial_failures.
        level = logging.INFO if record.dial_failures == 1 or record.dial_failures % 10 == 0 else logging.DEBUG
        log.log(
            level,
            "dial to %s failed (%d in a row, next try in %.1fs): %s",
            record.peer_id,
            record.dial_failures,
            delay,
            error,
        )

    def _forget(self, record: PeerRecord, reason: str, error: str | None = None) -> None:
        self._table.forget(record.peer_id)
        last = f"; last error: {error}" if error else ""
        log.info("forgot peer %s: %s%s", record.peer_id, reason, last)

    def sweep(self, nursery: trio.Nursery) -> None:
        """Forget peers past their retention, and hang up on idle peers that do not serve our protocol."""
        wall, now = time.time(), trio.current_time()
        for record in self._table:
            reason = self._retention.forget_reason(record, wall)
            if reason is not None:
                self._forget(record, reason)
            elif self._hang_up is not None and self._retention.idle(record, now):
                record.state = PeerState.GONE
                record.connected_since = None
                record.last_error = "hung up: it does not serve our protocol and has not used it"
                log.info(
                    "closing the connection to %s: it does not serve %s and sent no request for %.0fs",
                    record.peer_id,
                    "/mcp-p2p/rpc/1.0.0",
                    self._retention.idle_timeout,
                )
                nursery.start_soon(self._hang_up, record)

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
                self.sweep(nursery)
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
