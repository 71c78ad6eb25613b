"""Another peer's queue as this node's workers see it (``worker.Source``): the owner ops over ``PeerRpc``.

Reports travel in batches: whoever reports while no batch is in flight
sends everything that waits, so a burst of completions to one owner costs a
few messages, not one each.  Claims and report batches tell the owner how
many slots this node still has free for those types (its credit), which is
how the owner decides whom to tell about its next overflow.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2p_sidecar.taskqueue.errors import SourceUnavailable
from p2p_sidecar.taskqueue.model import LeaseAnswer, Verdict
from p2p_sidecar.taskqueue.protocol import (
    MAX_BATCH,
    MAX_BATCH_BYTES,
    MAX_ERROR_CHARS,
    OP_CLAIM,
    OP_COMPLETE,
    OP_HEARTBEAT,
    OP_PROGRESS,
    OP_RELEASE,
    REQUEST_TIMEOUT_S,
    BadRequest,
    Claim,
    ClaimReply,
    Heartbeat,
    PeerRpc,
    PeerUnreachable,
    answers_from_wire,
    progress_to_wire,
    report_to_wire,
    verdicts_from_wire,
)
from p2p_sidecar.taskqueue.records import Lease, Progress, Report
from p2p_sidecar.taskqueue.sync import Broadcast

FreeSlots = Callable[[Sequence[str]], Mapping[str, int]]
"""This node's free worker slots for the given task types, or for every type it runs when given none
(what it tells owners as credit)."""


@dataclass(eq=False)
class _Slot:
    verdict: Verdict | None = None
    error: str | None = None


class PeerSource:
    def __init__(
        self, rpc: PeerRpc, owner: str, boot: str, *, free_slots: FreeSlots, batch_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        self._owner = owner
        self._rpc = rpc
        self._boot = boot
        self._free_slots = free_slots
        self._batch_bytes = batch_bytes
        self._pending: list[tuple[Report, _Slot]] = []
        self._flushing = False
        self._flushed = Broadcast()

    @property
    def owner(self) -> str:
        return self._owner

    async def _request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Raises ``PeerUnreachable`` / ``PeerOpFailed`` (both ``SourceUnavailable``) as the node reported them."""
        return await self._rpc.request(self._owner, op, body, timeout=REQUEST_TIMEOUT_S)

    async def claim(self, worker: str, types: Sequence[str], limit: int) -> list[Lease]:
        """One claim; if its answer is lost (no reply in time), the same claim once more, so leases the owner
        granted are not left to expire unused."""
        credit = {name: max(0, count - limit) for name, count in self._free_slots(types).items()}
        body = Claim(worker, self._boot, tuple(types), limit, credit, uuid.uuid4().hex[:16]).to_wire()
        try:
            reply = await self._request(OP_CLAIM, body)
        except PeerUnreachable:
            reply = await self._request(OP_CLAIM, body)
        try:
            return list(ClaimReply.from_wire(reply).leases)
        except BadRequest as exc:
            # Leases we cannot read are leases we cannot run: they come back to the owner when they expire.
            raise SourceUnavailable(f"{OP_CLAIM} to {self._owner}: malformed reply ({exc.message})") from None

    async def heartbeat(
        self, worker: str, leases: Sequence[tuple[str, int]], progress: Sequence[tuple[str, int, Progress]]
    ) -> dict[str, LeaseAnswer]:
        body = Heartbeat(worker, self._boot, tuple(leases), tuple(progress)).to_wire()
        return answers_from_wire(await self._request(OP_HEARTBEAT, body))

    async def progress(self, worker: str, updates: Sequence[tuple[str, int, Progress]]) -> None:
        body = {"worker": worker, "boot": self._boot, "progress": progress_to_wire(updates)}
        await self._request(OP_PROGRESS, body)

    async def release(self, worker: str, leases: Sequence[tuple[str, int]], why: str) -> None:
        body = {"worker": worker, "leases": [list(lease) for lease in leases], "reason": why}
        await self._request(OP_RELEASE, body)

    async def report(self, worker: str, report: Report) -> Verdict:
        slot = _Slot()
        self._pending.append((report, slot))
        while slot.verdict is None and slot.error is None:
            if self._flushing:
                await self._flushed.wait_since(self._flushed.generation)
            else:
                await self._flush()
        if slot.verdict is None:
            raise SourceUnavailable(slot.error or "report interrupted")
        return slot.verdict

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
            body: dict[str, Any] = {"reports": [report_to_wire(report) for report, _ in batch]}
            body["free"] = dict(self._free_slots(()))
            reply = await self._request(OP_COMPLETE, body)
            for (_, slot), verdict in zip(batch, verdicts_from_wire(reply, len(batch)), strict=True):
                slot.verdict = verdict
        except BadRequest as exc:
            for _, slot in batch:
                slot.error = f"{OP_COMPLETE} to {self._owner}: malformed reply ({exc.message})"
        except SourceUnavailable as exc:
            for _, slot in batch:
                slot.error = str(exc)
        finally:
            for _, slot in batch:
                if slot.verdict is None and slot.error is None:
                    slot.error = "report interrupted"
            self._flushing = False
            self._flushed.fire()
