"""How tasks move between peers: workers with free slots pull leases from owners who hinted.

The owner of a task is the node where it was submitted; its record, lease
and result stay in that node's SQLite.  Work moves like this::

    owner A                                          peer B (runs the type, has free slots)
      | -- queue.hint {types} ---------------------> |   "A has claimable work of these types"
      | <- queue.claim {worker, boot, types, max} -- |   only when B has free slots
      | -- {tasks: [lease...], lease_s} -----------> |   atomic claim in A's store
      | <- queue.heartbeat {leases} (every lease/3)  |   -> ok | cancelled | lost per task
      | -- queue.cancel {task_id, attempt} --------> |   best effort; the heartbeat says it too
      | <- queue.complete {reports} ---------------- |   batched; recorded only for the lease holder
      | <- queue.release {leases} ------------------ |   B stops without finishing (shutdown)

Pulling makes load-awareness free: a saturated node does not ask.  Hints
keep idle peers from polling: A hints a peer when it has ready tasks its own
workers did not take (or tasks placed on other peers), and again after that
peer's claim came back short and new work arrived, or after
``HINT_REFRESH_S`` if the hint may have been lost.

This module needs only ``PeerRpc`` from the libp2p node (issue 3); see
docs/taskqueue.md for the failure cases.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from p2p_sidecar.settings import PEER_MESSAGE_FRAMING_BYTES
from p2p_sidecar.taskqueue.records import Lease, Report
from p2p_sidecar.taskqueue.store import LOCAL
from p2p_sidecar.taskqueue.sync import Broadcast
from p2p_sidecar.taskqueue.worker import EndpointUnavailable, QueueEndpoint

if TYPE_CHECKING:
    from p2p_sidecar.taskqueue.service import QueueService

log = logging.getLogger(__name__)

OpHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""``async handler(peer_id, body) -> reply body``; raise ``BadRequest`` for a malformed body."""

OP_CLAIM = "queue.claim"
OP_HEARTBEAT = "queue.heartbeat"
OP_COMPLETE = "queue.complete"
OP_RELEASE = "queue.release"
OP_HINT = "queue.hint"
OP_CANCEL = "queue.cancel"
OPS = (OP_CLAIM, OP_HEARTBEAT, OP_COMPLETE, OP_RELEASE, OP_HINT, OP_CANCEL)

REQUEST_TIMEOUT_S = 5.0
HINT_COALESCE_S = 0.005
"""After new work appears, how long local workers get to take it before peers are hinted."""
HINT_REFRESH_S = 1.0
HINT_TTL_S = 30.0
MAX_BATCH = 256
MAX_BATCH_BYTES = 2 * 1024 * 1024
"""Payloads in one claim reply, results in one report batch (JSON bytes): one message stays a few MiB at most.

Lowered to what fits ``SIDECAR_P2P_MAX_MESSAGE_BYTES`` (see ``batch_budget``).  A single task may
exceed it and then travels alone; settings validation makes sure one task always fits a message.
"""
ITEM_OVERHEAD_BYTES = 1024
"""Room for what surrounds one lease or report in a batch: its task id, type, keys, numbers."""
MAX_ERROR_CHARS = 4096


def batch_budget(max_message_bytes: int) -> int:
    """JSON bytes of payloads (or results) one claim reply (or report batch) may carry.

    Its msgpack form (at most 9/4 as large), plus the items' own overhead and the frame, stays
    within the node's message limit.
    """
    room = max_message_bytes - PEER_MESSAGE_FRAMING_BYTES - MAX_BATCH * ITEM_OVERHEAD_BYTES
    return max(1, min(MAX_BATCH_BYTES, room * 4 // 9))


class PeerRpcError(Exception):
    """Root of what ``PeerRpc.request`` may raise."""


class PeerUnreachable(PeerRpcError):
    """No answer: not connected, the stream failed, or the timeout passed."""


class PeerOpFailed(PeerRpcError):
    """The peer answered with an error (it refused the op or the body)."""


class BadRequest(PeerRpcError):
    """Raised by an op handler for a malformed body; the node answers it as an error."""


@runtime_checkable
class PeerRpc(Protocol):
    """What the task queue needs from the libp2p node; phase 2 adapts the node to it."""

    @property
    def local_peer_id(self) -> str: ...

    def register_op(self, op: str, handler: OpHandler) -> None:
        """Serve ``op`` for every connected peer from now on."""
        ...

    async def request(self, peer_id: str, op: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send ``body`` to ``peer_id``'s handler of ``op`` and return its reply.

        Raises ``PeerUnreachable`` (including on timeout) or ``PeerOpFailed``.
        """
        ...

    def peers_with_capability(self, capability: str) -> list[str]:
        """Connected peers (never this node) that currently advertise ``capability`` (a task type)."""
        ...

    def advertise(self, capabilities: Iterable[str]) -> None:
        """Replace the task types this node advertises to its peers."""
        ...


# -- body checks (a peer's message is untrusted input) ------------------------------------------------------
def _str(body: dict[str, Any], key: str, limit: int = 256) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise BadRequest(f"{key} must be a string of 1-{limit} characters")
    return value


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}")
    return value


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or len(value) > 256 or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{key} must be a list of at most 256 strings")
    return value


def _leases(body: dict[str, Any]) -> list[tuple[str, int]]:
    value = body.get("leases")
    if not isinstance(value, list) or len(value) > 4096:
        raise BadRequest("leases must be a list of [task_id, attempt] pairs (at most 4096)")
    leases = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
        ):
            raise BadRequest("each lease must be [task_id, attempt]")
        leases.append((item[0], item[1]))
    return leases


def report_to_wire(report: Report) -> dict[str, Any]:
    if report.ok:
        return {"task_id": report.task_id, "attempt": report.attempt, "ok": True, "result": report.result}
    error = {"message": report.message[:MAX_ERROR_CHARS], "code": report.code, "retryable": report.retryable}
    return {"task_id": report.task_id, "attempt": report.attempt, "ok": False, "error": error}


def report_from_wire(raw: Any) -> Report:
    if not isinstance(raw, dict):
        raise BadRequest("each report must be an object")
    task_id = _str(raw, "task_id")
    attempt = _int(raw, "attempt", 1, 1 << 31)
    if raw.get("ok") is True:
        return Report(task_id, attempt, ok=True, result=raw.get("result"))
    error = raw.get("error") if isinstance(raw.get("error"), dict) else {}
    return Report(
        task_id,
        attempt,
        ok=False,
        message=str(error.get("message", "failed"))[:MAX_ERROR_CHARS],
        code=str(error.get("code", "task_error"))[:64],
        retryable=error.get("retryable", True) is not False,
    )


# -- the worker's view of a remote owner ---------------------------------------------------------------------
@dataclass(eq=False)
class _Slot:
    verdict: str | None = None
    error: str | None = None


class RemoteEndpoint:
    """Another peer's queue: claims, heartbeats, reports (batched) and releases over ``PeerRpc``."""

    def __init__(self, rpc: PeerRpc, owner: str, boot: str, *, batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self.key = f"peer:{owner}"
        self.owner: str | None = owner
        self._rpc = rpc
        self._boot = boot
        self._batch_bytes = batch_bytes
        self._pending: list[tuple[Report, _Slot]] = []
        self._flushing = False
        self._flushed = Broadcast()

    async def _request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.owner is not None
        try:
            reply = await self._rpc.request(self.owner, op, body, timeout=REQUEST_TIMEOUT_S)
        except PeerRpcError as exc:
            raise EndpointUnavailable(f"{op} to {self.owner}: {exc}") from None
        if not isinstance(reply, dict):
            raise EndpointUnavailable(f"{op} to {self.owner}: malformed reply")
        return reply

    async def claim(self, worker_id: str, types: Sequence[str], limit: int) -> list[Lease]:
        body = {"worker": worker_id, "boot": self._boot, "types": list(types), "max": limit}
        reply = await self._request(OP_CLAIM, body)
        try:
            return [Lease.from_wire(raw) for raw in reply.get("tasks", [])]
        except (KeyError, TypeError, ValueError) as exc:
            # Leases we cannot read are leases we cannot run: they come back to the owner when they expire.
            raise EndpointUnavailable(f"{OP_CLAIM} to {self.owner}: malformed lease ({exc})") from None

    async def heartbeat(self, worker_id: str, leases: Sequence[tuple[str, int]]) -> dict[str, str]:
        body = {"worker": worker_id, "boot": self._boot, "leases": [list(lease) for lease in leases]}
        answers = (await self._request(OP_HEARTBEAT, body)).get("leases")
        return {str(key): str(value) for key, value in answers.items()} if isinstance(answers, dict) else {}

    async def release(self, worker_id: str, leases: Sequence[tuple[str, int]], why: str) -> None:
        body = {"worker": worker_id, "leases": [list(lease) for lease in leases], "reason": why}
        await self._request(OP_RELEASE, body)

    async def report(self, worker_id: str, report: Report) -> str:
        """Reports travel in batches: whoever arrives while no batch is in flight sends all that wait."""
        slot = _Slot()
        self._pending.append((report, slot))
        while slot.verdict is None and slot.error is None:
            if self._flushing:
                await self._flushed.wait_since(self._flushed.generation)
            else:
                await self._flush()
        if slot.error is not None:
            raise EndpointUnavailable(slot.error)
        return slot.verdict  # type: ignore[return-value]

    async def _flush(self) -> None:
        count, total = 0, 0
        for report, _ in self._pending[:MAX_BATCH]:
            size = report.size if report.ok else len(report.message[:MAX_ERROR_CHARS].encode())
            if count and total + size > self._batch_bytes:
                break
            count, total = count + 1, total + size
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._flushing = True
        try:
            reply = await self._request(OP_COMPLETE, {"reports": [report_to_wire(report) for report, _ in batch]})
            verdicts = reply.get("verdicts")
            if not isinstance(verdicts, list) or len(verdicts) != len(batch):
                raise EndpointUnavailable(f"{OP_COMPLETE} to {self.owner}: malformed reply")
            for (_, slot), verdict in zip(batch, verdicts, strict=True):
                slot.verdict = str(verdict)
        except EndpointUnavailable as exc:
            for _, slot in batch:
                slot.error = str(exc)
        finally:
            for _, slot in batch:
                if slot.verdict is None and slot.error is None:
                    slot.error = "report interrupted"
            self._flushing = False
            self._flushed.fire()


# -- both sides, wired to one queue service ----------------------------------------------------------------------
class Distribution:
    """Serves this node's queue to peers (owner side) and finds work on peers (worker side)."""

    def __init__(
        self, service: QueueService, rpc: PeerRpc, *, on_limit: Callable[[str], None] = lambda limit: None
    ) -> None:
        self.service = service
        self.rpc = rpc
        self.max_leases_per_peer = service.settings.queue_max_leases_per_peer
        self._on_limit = on_limit
        self.local_peer_id = rpc.local_peer_id
        self._allow_remote_tool = bool(service.settings.remote_tools_allow)
        self.batch_bytes = batch_budget(service.settings.p2p_max_message_bytes)
        # worker side
        self._hints: dict[str, tuple[frozenset[str], float]] = {}
        self._endpoints: dict[str, RemoteEndpoint] = {}
        # owner side
        self._peer_boots: dict[str, str] = {}
        self._hinted_at: dict[str, float] = {}
        self._notices_send, self._notices_recv = trio.open_memory_channel[tuple[str, str, dict[str, Any]]](1024)
        self.counters: dict[str, int] = defaultdict(int)
        handlers: dict[str, OpHandler] = {
            OP_CLAIM: self.op_claim,
            OP_HEARTBEAT: self.op_heartbeat,
            OP_COMPLETE: self.op_complete,
            OP_RELEASE: self.op_release,
            OP_HINT: self.op_hint,
            OP_CANCEL: self.op_cancel,
        }
        for op, handler in handlers.items():
            rpc.register_op(op, handler)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hint_peers)
            nursery.start_soon(self._send_notices, nursery)
            task_status.started()

    # -- owner side: ops served to peers --------------------------------------------------------------------------
    def _check_boot(self, peer: str, boot: str) -> None:
        """A peer whose process restarted holds none of its old leases: give them back at once."""
        if self._peer_boots.get(peer) != boot:
            lost = self.service.lose_peer_leases(peer, boot_not=boot, why=f"worker peer {peer} restarted")
            if lost:
                log.warning("peer %s restarted: %d of its leases re-queued", peer, lost)
            self._peer_boots[peer] = boot

    async def op_claim(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        worker, boot = _str(body, "worker"), _str(body, "boot")
        types, asked = _str_list(body, "types"), _int(body, "max", 1, MAX_BATCH)
        self._check_boot(peer, boot)
        # One peer may not hoard the queue: it holds at most max_leases_per_peer running tasks from us at once.
        held = self.service.store.leases_held_by(peer)
        limit = max(0, min(asked, self.max_leases_per_peer - held))
        limited = limit < asked
        leases = self.service.claim(worker, types, limit, peer=peer, boot=boot, max_bytes=self.batch_bytes)
        if len(leases) < asked:
            self._hinted_at.pop(peer, None)  # the peer drops our hint now; hint again when work comes
        self.counters["leased_to_peers"] += len(leases)
        paused = self.service.paused_reason is not None or self.service.draining
        reply: dict[str, Any] = {
            "tasks": [lease.to_wire() for lease in leases],
            "lease_s": self.service.lease_s,
            "paused": paused,
        }
        if limited:
            self.counters["claims_limited"] += 1
            self._on_limit("queue_max_leases_per_peer")
            reply["limited"] = (
                f"peer {peer} holds {held} running task(s) from this node; SIDECAR_QUEUE_MAX_LEASES_PER_PEER is "
                f"{self.max_leases_per_peer}"
            )
        return reply

    async def op_heartbeat(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        _str(body, "worker")
        self._check_boot(peer, _str(body, "boot"))
        answers = self.service.heartbeat(_leases(body), peer=peer)
        return {"leases": answers, "lease_s": self.service.lease_s}

    async def op_complete(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("reports")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BATCH:
            raise BadRequest(f"reports must be a list of 1-{MAX_BATCH} reports")
        reports = [report_from_wire(item) for item in raw]
        verdicts = self.service.finish(reports, peer=peer)
        self.counters["results_from_peers"] += verdicts.count("recorded")
        return {"verdicts": verdicts}

    async def op_release(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        why = str(body.get("reason", "released by the worker"))[:200]
        released = self.service.release(_leases(body), peer=peer, why=f"{why} (peer {peer})")
        return {"released": released}

    # -- worker side: ops served to owners ---------------------------------------------------------------------
    async def op_hint(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        types = frozenset(_str_list(body, "types"))
        wanted = types & set(self.advertised_types())
        if wanted:
            self._hints[peer] = (wanted, trio.current_time() + HINT_TTL_S)
            self.service.work.fire()
        return {"accepted": bool(wanted)}

    async def op_cancel(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        task_id = _str(body, "task_id")
        _int(body, "attempt", 1, 1 << 31)
        key = f"peer:{peer}"
        found = any(worker.notify(key, task_id, "cancelled") for worker in list(self.service.workers.values()))
        return {"found": found}

    # -- worker side: where to pull from (WorkSource helpers) -------------------------------------------------------
    def endpoints(self) -> list[QueueEndpoint]:
        now = trio.current_time()
        owners = []
        for owner, (_, expires) in list(self._hints.items()):
            if expires < now:
                del self._hints[owner]
            else:
                owners.append(owner)
        return [self._endpoint(owner) for owner in owners]

    def _endpoint(self, owner: str) -> RemoteEndpoint:
        endpoint = self._endpoints.get(owner)
        if endpoint is None:
            endpoint = self._endpoints[owner] = RemoteEndpoint(
                self.rpc, owner, self.service.boot, batch_bytes=self.batch_bytes
            )
        return endpoint

    def claimable_types(self, endpoint: QueueEndpoint, capabilities: Sequence[str]) -> list[str]:
        hint = self._hints.get(endpoint.owner or "")
        hinted = hint[0] if hint is not None else frozenset()
        return [cap for cap in capabilities if cap in hinted and (cap != "tool" or self._allow_remote_tool)]

    def exhausted(self, endpoint: QueueEndpoint) -> None:
        self._hints.pop(endpoint.owner or "", None)

    def unreachable(self, endpoint: QueueEndpoint) -> None:
        self._hints.pop(endpoint.owner or "", None)

    def advertised_types(self) -> list[str]:
        return [cap for cap in self.service.capabilities() if cap != "tool" or self._allow_remote_tool]

    def advertise(self, capabilities: Sequence[str]) -> None:
        self.rpc.advertise([cap for cap in capabilities if cap != "tool" or self._allow_remote_tool])

    def peers_for(self, task_type: str) -> list[str]:
        return [peer for peer in self.rpc.peers_with_capability(task_type) if peer != self.local_peer_id]

    # -- owner side: telling peers ------------------------------------------------------------------------------------
    def notify_cancelled(self, peer: str, task_id: str, attempt: int) -> None:
        self._notice(peer, OP_CANCEL, {"task_id": task_id, "attempt": attempt})

    def _notice(self, peer: str, op: str, body: dict[str, Any]) -> None:
        try:
            self._notices_send.send_nowait((peer, op, body))
        except trio.WouldBlock:
            log.warning("notice queue full: %s to %s dropped (heartbeats will carry it)", op, peer)

    async def _send_notices(self, nursery: trio.Nursery) -> None:
        limiter = trio.Semaphore(64)  # notices in flight at once
        async for peer, op, body in self._notices_recv:
            await limiter.acquire()
            nursery.start_soon(self._send_notice, limiter, peer, op, body)

    async def _send_notice(self, limiter: trio.Semaphore, peer: str, op: str, body: dict[str, Any]) -> None:
        try:
            await self.rpc.request(peer, op, body, timeout=REQUEST_TIMEOUT_S)
        except PeerRpcError as exc:
            log.debug("%s to %s failed: %s", op, peer, exc)
        finally:
            limiter.release()

    async def _hint_peers(self) -> None:
        """Hint peers about claimable work: on news (a submit, a retry, a lost lease), and every half refresh.

        On news, the demand query (a scan of the queued rows) runs only if some capable peer
        is not already hinted, so a burst of submits to peers that are busy pulling costs nothing.
        """
        work = self.service.work
        seen = work.generation
        while True:
            news = await work.wait_since(seen, HINT_REFRESH_S / 2)
            seen = work.generation
            if self.service.paused_reason is not None or self.service.draining:
                continue
            if news and not self._some_peer_unhinted():
                continue
            self._send_hints(anywhere=False)  # tasks placed on peers: local workers cannot take them anyway
            await trio.sleep(HINT_COALESCE_S)  # let this node's own workers take what they can first
            self._send_hints(anywhere=True)

    def _some_peer_unhinted(self) -> bool:
        now = trio.current_time()
        for task_type in self.service.submitted_types:
            for peer in self.peers_for(task_type):
                hinted = self._hinted_at.get(peer)
                if hinted is None or now - hinted >= HINT_REFRESH_S:
                    return True
        return False

    def _send_hints(self, *, anywhere: bool) -> None:
        targets: dict[str, set[str]] = defaultdict(set)
        for task_type, placement, _count in self.service.store.ready_demand(self.service.clock()):
            if placement == LOCAL:
                continue
            if placement is None:
                if anywhere:
                    for peer in self.peers_for(task_type):
                        targets[peer].add(task_type)
            elif placement.startswith("peer:"):
                targets[placement[5:]].add(task_type)
            else:  # remote
                for peer in self.peers_for(task_type):
                    targets[peer].add(task_type)
        now = trio.current_time()
        for peer, types in targets.items():
            hinted = self._hinted_at.get(peer)
            if hinted is not None and now - hinted < HINT_REFRESH_S:
                continue
            self._hinted_at[peer] = now
            self.counters["hints_sent"] += 1
            self._notice(peer, OP_HINT, {"types": sorted(types)})
