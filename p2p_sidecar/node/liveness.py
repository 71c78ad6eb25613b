"""Our own liveness: ping every live peer on a fixed interval and mark it gone within a bound.

py-libp2p 0.8.1 keeps listing a peer in ``get_connected_peers()`` after its
process died, and ``new_stream`` to it fails without redialling, so its view
of "connected" cannot be trusted.  Here a peer is CONNECTED only while it
answers: every ``SIDECAR_PEER_PING_INTERVAL`` it gets a ping on our own
protocol (which goes through the peer's event loop, so a stuck process shows
too); any successful exchange counts as contact.  A failed ping makes it
UNREACHABLE; once nothing has been heard for ``SIDECAR_PEER_GONE_TIMEOUT`` it
is GONE and its connection is closed.  A dead peer is therefore marked gone
at most ``gone_timeout + tick`` after its last answer.

``LivenessPolicy`` is the synchronous state machine (unit-tested without any
network); ``LivenessService`` is the thin Trio loop that carries it out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from p2p_sidecar.node.peers import LIVE_STATES, PeerRecord, PeerState, PeerTable
from shared_schema import BridgeError

log = logging.getLogger(__name__)

Pinger = Callable[[str, float], Awaitable[float | None]]
"""Ping ``peer_id`` within ``timeout`` seconds; return the round trip in ms (None: alive, nothing to time) or raise
``BridgeError``."""


@dataclass(frozen=True)
class LivenessPolicy:
    ping_interval: float
    gone_timeout: float
    smoothing: float = 0.3
    """Weight of the newest round trip in the smoothed latency."""

    @property
    def tick(self) -> float:
        """How often the service looks for due pings and expired peers."""
        return max(0.05, min(1.0, self.ping_interval / 4))

    @property
    def ping_timeout(self) -> float:
        return min(max(self.ping_interval, 1.0), self.gone_timeout)

    def connected(self, record: PeerRecord, now: float, wall: float) -> bool:
        """A fresh handshake with the peer; returns whether it was not live before."""
        was_live = record.state in LIVE_STATES
        record.state = PeerState.CONNECTED
        record.last_contact_mono = now
        record.last_seen = wall
        record.consecutive_failures = 0
        record.last_used_mono = now
        record.dial_failures = 0
        record.next_dial_mono = 0.0
        record.last_error = None
        if not was_live or record.connected_since is None:
            record.connected_since = wall
        return not was_live

    def contact(self, record: PeerRecord, now: float, wall: float) -> None:
        """Any successful exchange with a live peer proves it is alive."""
        if record.state in LIVE_STATES:
            record.state = PeerState.CONNECTED
            record.last_contact_mono = now
            record.last_seen = wall
            record.consecutive_failures = 0

    def pinged(self, record: PeerRecord, now: float, wall: float, rtt_ms: float | None) -> None:
        self.contact(record, now, wall)
        record.pings_ok += 1
        if rtt_ms is None:
            return
        record.last_rtt_ms = rtt_ms
        record.min_rtt_ms = rtt_ms if record.min_rtt_ms is None else min(record.min_rtt_ms, rtt_ms)
        record.max_rtt_ms = rtt_ms if record.max_rtt_ms is None else max(record.max_rtt_ms, rtt_ms)
        if record.latency_ms is None:
            record.latency_ms = rtt_ms
        else:
            record.latency_ms += self.smoothing * (rtt_ms - record.latency_ms)

    def failed(self, record: PeerRecord, now: float, error: str) -> bool:
        """A ping or request failed; returns whether the peer is now GONE."""
        record.pings_failed += 1
        record.consecutive_failures += 1
        record.last_error = error
        if record.state is PeerState.CONNECTED:
            record.state = PeerState.UNREACHABLE
        return self.expire(record, now)

    def due(self, record: PeerRecord, now: float) -> bool:
        if record.state not in LIVE_STATES:
            return False
        return record.last_ping_mono is None or now - record.last_ping_mono >= self.ping_interval

    def expire(self, record: PeerRecord, now: float) -> bool:
        """Mark a live peer GONE when nothing was heard for ``gone_timeout``; returns whether it happened now."""
        if record.state not in LIVE_STATES:
            return False
        last = record.last_contact_mono
        if last is not None and now - last < self.gone_timeout:
            return False
        record.state = PeerState.GONE
        record.connected_since = None
        return True


class LivenessService:
    def __init__(
        self,
        table: PeerTable,
        policy: LivenessPolicy,
        ping: Pinger,
        on_gone: Callable[[PeerRecord], Awaitable[None]],
    ) -> None:
        self._table = table
        self._policy = policy
        self._ping = ping
        self._on_gone = on_gone
        self._in_flight: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                for record in self._table:
                    if record.peer_id not in self._in_flight and self._policy.due(record, now):
                        record.last_ping_mono = now
                        self._in_flight.add(record.peer_id)
                        nursery.start_soon(self._ping_one, record)
                self.expire_all(nursery)
                await trio.sleep(self._policy.tick)

    def expire_all(self, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        for record in self._table:
            if self._policy.expire(record, now):
                self._log_gone(record)
                nursery.start_soon(self._on_gone, record)

    def _log_gone(self, record: PeerRecord) -> None:
        log.info(
            "peer %s gone: nothing heard for %.1fs (last error: %s)",
            record.peer_id,
            self._policy.gone_timeout,
            record.last_error,
        )

    async def _ping_one(self, record: PeerRecord) -> None:
        try:
            rtt = await self._ping(record.peer_id, self._policy.ping_timeout)
        except BridgeError as exc:
            if record.state in LIVE_STATES:
                log.debug("ping to %s failed: %s", record.peer_id, exc.message)
                if self._policy.failed(record, trio.current_time(), exc.message):
                    self._log_gone(record)
                    await self._on_gone(record)
        else:
            self._policy.pinged(record, trio.current_time(), time.time(), rtt)
        finally:
            self._in_flight.discard(record.peer_id)
