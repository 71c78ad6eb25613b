"""The owner's side on the network: peers' workers claim, heartbeat, report and release this node's tasks,
and peers hear when this node has more work than its own workers will take.

``Lending`` serves the owner ops (``protocol.OWNER_OPS``) against the
``LeaseOwner`` and runs the hint loop: whenever claimable work may have
appeared (and, while some waits, every half ``REFRESH_S``), it asks the
``Dispatcher`` which peers to tell and sends those hints.  Their answers,
claims and reports feed the dispatcher's view of each peer's free slots.
Cancel notices to workers that hold a cancelled task's lease go out from here
too.  Placement rules, lease fencing and the per-peer lease bound are
enforced on every claim: a peer's messages are untrusted input.
"""

from __future__ import annotations

import collections
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from p2p_sidecar.taskqueue.dispatch import Dispatcher, needs
from p2p_sidecar.taskqueue.model import Verdict
from p2p_sidecar.taskqueue.owner import LeaseOwner
from p2p_sidecar.taskqueue.protocol import (
    MAX_BATCH,
    OP_CANCEL,
    OP_CLAIM,
    OP_COMPLETE,
    OP_HEARTBEAT,
    OP_HINT,
    OP_PROGRESS,
    OP_RELEASE,
    REQUEST_TIMEOUT_S,
    BadRequest,
    Claim,
    ClaimReply,
    Heartbeat,
    HintReply,
    PeerRpc,
    PeerRpcError,
    answers_to_wire,
    free_from_wire,
    progress_from_wire,
    release_from_wire,
    reports_from_wire,
    worker_boot_from_wire,
)
from p2p_sidecar.taskqueue.sync import Broadcast

log = logging.getLogger(__name__)

LocalFree = Callable[[Sequence[str]], Mapping[str, int]]
"""This node's own free worker slots per task type."""
CLAIMS_REMEMBERED = 16
"""Per peer: how many recent claims can be asked again (a worker asks again at most once, at once)."""
NOTICES_IN_FLIGHT = 64
NOTICE_QUEUE = 1024


class Lending:
    def __init__(
        self,
        owner: LeaseOwner,
        rpc: PeerRpc,
        *,
        local_free: LocalFree,
        max_leases_per_peer: int,
        batch_bytes: int,
        dispatcher: Dispatcher | None = None,
        on_limit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._owner = owner
        self._rpc = rpc
        self._local_free = local_free
        self.max_leases_per_peer = max_leases_per_peer
        self.batch_bytes = batch_bytes
        self.dispatcher = dispatcher or Dispatcher()
        self._on_limit = on_limit
        self._peer_boots: dict[str, str] = {}
        self._answered: dict[str, collections.OrderedDict[str, list[tuple[str, int]]]] = {}
        """Recent claims per peer, by claim id: the leases each was answered with."""
        self._replan = Broadcast()
        owner.work.chain(self._replan)
        self._notices_send, self._notices_recv = trio.open_memory_channel[tuple[str, str, dict[str, Any]]](NOTICE_QUEUE)
        self.counters: Counter[str] = Counter()
        handlers = {
            OP_CLAIM: self.op_claim,
            OP_HEARTBEAT: self.op_heartbeat,
            OP_COMPLETE: self.op_complete,
            OP_RELEASE: self.op_release,
            OP_PROGRESS: self.op_progress,
        }
        for op, handler in handlers.items():
            rpc.register_op(op, handler)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hint_loop, nursery)
            nursery.start_soon(self._send_notices, nursery)
            task_status.started()

    # -- ops served to peers' workers -------------------------------------------------------------------------------
    def _check_boot(self, peer: str, boot: str) -> None:
        """A peer whose process restarted holds none of its old leases: give them back at once."""
        if self._peer_boots.get(peer) != boot:
            self._answered.pop(peer, None)
            lost = self._owner.lose_peer_leases(peer, boot_not=boot, why=f"worker peer {peer} restarted")
            if lost:
                log.warning("peer %s restarted: %d of its leases re-queued", peer, lost)
            self._peer_boots[peer] = boot

    async def op_claim(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        claim = Claim.from_wire(body)
        self._check_boot(peer, claim.boot)
        earlier = self._answered.get(peer)
        answered = earlier.get(claim.claim_id or "") if earlier is not None else None
        if answered is not None:  # the worker did not get our answer: the same leases, once more
            self.counters["claims_answered_again"] += 1
            again = self._owner.store.held(answered, peer=peer)
            return ClaimReply(tuple(again), self._owner.lease_s, not self._owner.handing_out).to_wire()
        # One peer may not hoard the queue: it holds at most max_leases_per_peer running tasks from us at once.
        held = self._owner.store.leases_held_by(peer)
        limit = max(0, min(claim.max, self.max_leases_per_peer - held))
        leases = self._owner.claim(
            claim.worker, claim.types, limit, peer=peer, boot=claim.boot, max_bytes=self.batch_bytes
        )
        self.dispatcher.claimed(
            peer, claim.types, asked=claim.max, got=len(leases), free=claim.free, now=trio.current_time()
        )
        self.counters["leased_to_peers"] += len(leases)
        if claim.claim_id is not None:
            self._remember(peer, claim.claim_id, [lease.key for lease in leases])
        limited = None
        if limit < claim.max:
            self.counters["claims_limited"] += 1
            self._on_limit("queue_max_leases_per_peer")
            limited = (
                f"peer {peer} holds {held} running task(s) from this node; SIDECAR_QUEUE_MAX_LEASES_PER_PEER is "
                f"{self.max_leases_per_peer}"
            )
        reply = ClaimReply(tuple(leases), self._owner.lease_s, not self._owner.handing_out, limited)
        return reply.to_wire()

    def _remember(self, peer: str, claim_id: str, keys: list[tuple[str, int]]) -> None:
        answered = self._answered.setdefault(peer, collections.OrderedDict())
        answered[claim_id] = keys
        while len(answered) > CLAIMS_REMEMBERED:
            answered.popitem(last=False)

    async def op_heartbeat(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        beat = Heartbeat.from_wire(body, now=self._owner.clock())
        self._check_boot(peer, beat.boot)
        self._owner.record_progress(beat.progress, peer=peer)
        return answers_to_wire(self._owner.heartbeat(beat.leases, peer=peer), self._owner.lease_s)

    async def op_progress(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        _worker, boot = worker_boot_from_wire(body)
        self._check_boot(peer, boot)
        updates = progress_from_wire(body.get("progress"), now=self._owner.clock())
        return {"stored": self._owner.record_progress(updates, peer=peer)}

    async def op_complete(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        reports = reports_from_wire(body)
        verdicts = self._owner.finish(reports, peer=peer)
        self.dispatcher.reported(peer, free_from_wire(body))
        self.counters["results_from_peers"] += verdicts.count(Verdict.RECORDED)
        return {"verdicts": [verdict.value for verdict in verdicts]}

    async def op_release(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        leases, why = release_from_wire(body)
        return {"released": self._owner.release(leases, peer=peer, why=f"{why} (peer {peer})")}

    # -- telling peers ---------------------------------------------------------------------------------------------
    def peers_for(self, task_type: str) -> list[str]:
        """Live member peers that run ``task_type`` (never this node)."""
        return [peer for peer in self._rpc.peers_with_capability(task_type) if peer != self._rpc.local_peer_id]

    def notify_cancelled(self, peer: str, task_id: str, attempt: int) -> None:
        self._notice(peer, OP_CANCEL, {"task_id": task_id, "attempt": attempt})

    def _notice(self, peer: str, op: str, body: dict[str, Any]) -> None:
        try:
            self._notices_send.send_nowait((peer, op, body))
        except trio.WouldBlock:
            log.warning("notice queue full: %s to %s dropped (heartbeats will carry it)", op, peer)

    async def _send_notices(self, nursery: trio.Nursery) -> None:
        limiter = trio.Semaphore(NOTICES_IN_FLIGHT)
        async for peer, op, body in self._notices_recv:
            await limiter.acquire()
            nursery.start_soon(self._send_notice, limiter, peer, op, body)

    async def _send_notice(self, limiter: trio.Semaphore, peer: str, op: str, body: dict[str, Any]) -> None:
        try:
            reply = await self._rpc.request(peer, op, body, timeout=REQUEST_TIMEOUT_S)
            if op == OP_HINT:
                answer = HintReply.from_wire(reply)
                self.dispatcher.hint_answered(peer, body["types"], accepted=answer.accepted, free=answer.free)
                if not answer.accepted or any(answer.free.get(name, 1) == 0 for name in body["types"]):
                    self._replan.fire()  # it cannot take what we counted on: others may
        except (PeerRpcError, BadRequest) as exc:
            log.debug("%s to %s failed: %s", op, peer, exc)
            if op == OP_HINT:
                self.dispatcher.hint_failed(peer, body["types"], trio.current_time())
                self._replan.fire()
        finally:
            limiter.release()

    async def _hint_loop(self, nursery: trio.Nursery) -> None:
        """Plan hints on news; while work waits for peers, also every half refresh (lost hints, lapsed claims)."""
        seen = self._replan.generation
        waiting = False
        while True:
            timeout = self.dispatcher.refresh_s / 2 if waiting else float("inf")
            await self._replan.wait_since(seen, timeout)
            seen = self._replan.generation
            if not self._owner.handing_out:
                waiting = False
                continue
            demand = self._owner.store.claimable()
            if not demand:
                waiting = False
                continue
            types = sorted({task_type for task_type, _ in demand})
            wanted = needs(demand, self._local_free(types))
            waiting = bool(wanted)
            for peer, hint in self.dispatcher.plan(trio.current_time(), wanted, self.peers_for):
                self.counters["hints_sent"] += 1
                self._notice(peer, OP_HINT, hint.to_wire())

    def describe(self) -> dict[str, Any]:
        return {**self.counters, "max_batch": MAX_BATCH, "peer_boots": len(self._peer_boots)}
