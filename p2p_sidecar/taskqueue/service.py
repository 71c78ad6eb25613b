"""The queue as its tools see it: one object that wires the owner, the workers and the network together.

``QueueService`` is the composition root of the queue and the API the tools
(``tools.py``) and the workflow engine call: it validates what callers send,
then asks the ``LeaseOwner`` (this node's tasks), the ``WorkerPool`` (this
node's workers) or ``Lending`` (peers) to act.  It holds no task state of
its own.

Started from ``p2p_sidecar.main`` with ``await nursery.start(queue.run)``;
the nesting inside is the shutdown order: the owner's timers outlive the
network shell, which outlives the workers, so attempts still running when
the grace period ends can hand their leases back (to this node's store, or
to a remote owner over the live network).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from p2p_sidecar.taskqueue.errors import Conflict, InvalidRequest, NoNetwork, QueueFull
from p2p_sidecar.taskqueue.executors import ExecutorRegistry, LocalTools, ToolCaller
from p2p_sidecar.taskqueue.lending import Lending
from p2p_sidecar.taskqueue.model import TERMINAL, LeaseAnswer, RetryPolicy, TaskStatus
from p2p_sidecar.taskqueue.owner import LeaseOwner, LocalSource
from p2p_sidecar.taskqueue.pool import WorkerPool
from p2p_sidecar.taskqueue.protocol import PeerRpc, batch_budget
from p2p_sidecar.taskqueue.records import NewTask, Placement, PlacementKind, TaskRecord, dumps
from p2p_sidecar.taskqueue.store import TaskStore
from p2p_sidecar.taskqueue.views import describe_task
from p2p_sidecar.taskqueue.worker import Worker, WorkerConfig, WorkerSpec
from shared_schema import tracing

if TYPE_CHECKING:
    from p2p_sidecar.settings import SidecarSettings

log = logging.getLogger(__name__)

MAX_TAGS = 32
MAX_ID_LENGTH = 128


class QueueService:
    def __init__(
        self,
        settings: SidecarSettings,
        store: TaskStore,
        *,
        rpc: PeerRpc | None = None,
        executors: ExecutorRegistry | None = None,
        call_gateway: ToolCaller | None = None,
        local_tools: LocalTools | None = None,
        clock: Callable[[], float] = time.time,
        on_limit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.boot = uuid.uuid4().hex[:16]
        self.local_peer = rpc.local_peer_id if rpc is not None else None
        self.owner = LeaseOwner(store, lease_s=settings.queue_lease_seconds, boot=self.boot, clock=clock)
        self.executors = executors or ExecutorRegistry.discover(
            settings.worker_task_types, test_aids=settings.worker_test_task_types
        )
        batch_bytes = batch_budget(settings.p2p_max_message_bytes)
        config = WorkerConfig(
            lease_s=settings.queue_lease_seconds,
            max_result_bytes=settings.task_max_result_bytes,
            claim_batch=settings.queue_claim_batch,
            remote_tools_allow=frozenset(settings.remote_tools_allow),
            local_peer=self.local_peer,
        )
        self.pool = WorkerPool(
            local=LocalSource(self.owner),
            executors=self.executors,
            config=config,
            book=store,
            default_slots=settings.worker_concurrency,
            rpc=rpc,
            boot=self.boot,
            batch_bytes=batch_bytes,
            allow_remote_tool=bool(settings.remote_tools_allow),
            call_gateway=call_gateway,
            local_tools=local_tools,
        )
        self.owner.work.chain(self.pool.news)
        self.lending: Lending | None = None
        if rpc is not None:
            self.lending = Lending(
                self.owner,
                rpc,
                local_free=self.pool.free_slots,
                max_leases_per_peer=settings.queue_max_leases_per_peer,
                batch_bytes=batch_bytes,
                on_limit=on_limit,
            )

    @property
    def clock(self) -> Callable[[], float]:
        return self.owner.clock

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.owner.run)
            if self.lending is not None:
                await nursery.start(self.lending.run)
            await nursery.start(self.pool.run)
            log.info(
                "task queue ready: %s queued, types %s, %d worker(s)",
                self.store.count(TaskStatus.QUEUED),
                self.executors.types,
                len(self.pool.workers),
            )
            task_status.started()

    def stop_claiming(self) -> None:
        """Shutdown, step one: no worker takes new work and no peer is handed any."""
        self.owner.stop_handing_out()
        self.pool.stop_claiming()

    async def wait_idle(self) -> None:
        await self.pool.wait_idle()

    @property
    def running_here(self) -> int:
        return self.pool.running_count

    # -- submitting ------------------------------------------------------------------------------------------
    def submit(
        self,
        *,
        task_type: str,
        payload: Any,
        task_id: str | None = None,
        priority: float = 1.0,
        tags: Sequence[str] | None = None,
        timeout: float | None = None,
        retry_policy: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        step_id: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Validate and store one task; returns (its record, created).  Re-submission with the same
        idempotency key (``metadata.idempotency_key``, else the caller's ``task_id``) returns the
        existing task, whatever its state, and creates nothing."""
        metadata = dict(metadata or {})
        key = metadata.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 256):
            raise InvalidRequest("metadata.idempotency_key must be a string of 1-256 characters")
        if task_id is not None:
            _check_id(task_id, "task_id")
        idem_key = key or task_id
        if idem_key is not None:
            existing = self.store.by_idem_key(idem_key)
            if existing is not None:
                return existing, False
        self.check_type(task_type)
        self.executors.validate(task_type, payload)
        size = len(dumps(payload).encode())
        if size > self.settings.task_max_payload_bytes:
            raise InvalidRequest(
                f"payload of {size} bytes exceeds the limit of {self.settings.task_max_payload_bytes} bytes "
                "(SIDECAR_TASK_MAX_PAYLOAD_BYTES)"
            )
        if not _finite(priority):
            raise InvalidRequest("priority must be a finite number (higher runs first)")
        tags = list(tags or [])
        if len(tags) > MAX_TAGS or not all(isinstance(tag, str) and 0 < len(tag) <= 128 for tag in tags):
            raise InvalidRequest(f"tags must be at most {MAX_TAGS} strings of 1-128 characters")
        if timeout is None:
            timeout = self.settings.task_default_timeout_seconds
        if not _finite(timeout) or not 0 < timeout <= 7 * 86400:
            raise InvalidRequest("timeout must be a number of seconds, more than 0 and at most 604800 (7 days)")
        policy = RetryPolicy.parse(retry_policy)
        placement = Placement.parse(metadata.get("placement"), local_peer=self.local_peer)
        if placement.kind in (PlacementKind.REMOTE, PlacementKind.PEER) and self.lending is None:
            raise NoNetwork(f"metadata.placement {placement.kind.value!r} needs a P2P network, and this node has none")
        if self.store.count(TaskStatus.QUEUED) >= self.settings.queue_max_queued:
            raise QueueFull(
                f"queue full: {self.settings.queue_max_queued} tasks already queued (SIDECAR_QUEUE_MAX_QUEUED); "
                "retry later"
            )
        task = NewTask(
            task_id=task_id or uuid.uuid4().hex,
            task_type=task_type,
            payload=payload,
            priority=float(priority),
            timeout_s=float(timeout),
            policy=policy,
            idem_key=idem_key,
            placement=placement,
            tags=tags,
            metadata=metadata,
            workflow_id=workflow_id,
            step_id=step_id,
            traceparent=tracing.traceparent_of_current(),
        )
        return self.owner.insert(task)

    def check_type(self, task_type: str) -> None:
        """A task type is accepted if this node runs it or a connected peer advertises it."""
        if task_type in self.executors:
            return
        if self.lending is not None and self.lending.peers_for(task_type):
            return
        raise InvalidRequest(
            f"unknown task_type {task_type!r}: not installed here ({', '.join(self.executors.types)}) "
            "and no connected peer advertises it"
        )

    # -- reading ------------------------------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord:
        return self.store.require(task_id)

    def view(self, record: TaskRecord, **options: bool) -> dict[str, Any]:
        return describe_task(record, now=self.clock(), local_peer=self.local_peer, **options)

    async def wait(self, task_id: str, timeout: float) -> TaskRecord:
        return await self.owner.wait(task_id, timeout)

    # -- operator actions ----------------------------------------------------------------------------------------
    def cancel(self, task_id: str, reason: str) -> TaskRecord:
        """Cancel a queued or running task and stop its worker; returns the record as it was before."""
        before = self.owner.cancel(task_id, reason)
        if before.status is TaskStatus.RUNNING:
            if before.worker_peer is None:
                self.pool.notify(None, task_id, LeaseAnswer.CANCELLED)
            elif self.lending is not None:
                self.lending.notify_cancelled(before.worker_peer, task_id, before.attempt)
        return before

    def retry(self, task_id: str, retry_config: dict[str, Any] | None) -> TaskRecord:
        record = self.store.require(task_id)
        if record.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise Conflict(f"task {task_id} is {record.status.value}; only failed or cancelled tasks can be retried")
        policy = RetryPolicy.parse(retry_config, record.policy) if retry_config is not None else None
        return self.owner.retry(task_id, policy)

    def set_priority(self, task_id: str, priority: float, requeue: bool) -> TaskRecord:
        if not _finite(priority):
            raise InvalidRequest("new_priority must be a finite number (higher runs first)")
        status = self.store.require(task_id).status
        if requeue and status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            self.owner.retry(task_id, None)
            status = TaskStatus.QUEUED
        if status in TERMINAL:
            raise Conflict(f"task {task_id} is {status.value}; its priority no longer matters")
        return self.owner.set_priority(task_id, float(priority))

    def pause(self, reason: str | None) -> None:
        self.owner.pause(reason)

    def resume(self) -> bool:
        return self.owner.resume()

    def clear(self, statuses: Sequence[TaskStatus]) -> dict[str, int]:
        return self.owner.clear(statuses)

    # -- workers ---------------------------------------------------------------------------------------------------
    async def add_worker(self, spec: WorkerSpec) -> Worker:
        return await self.pool.add(spec)

    async def remove_worker(self, worker_id: str, *, graceful: bool, timeout: float) -> dict[str, Any]:
        return await self.pool.remove(worker_id, graceful=graceful, timeout=timeout)

    def stats(self, *, include_workers: bool, include_historical: bool) -> dict[str, Any]:
        counts = self.store.counts()
        report: dict[str, Any] = {
            "counts": counts,
            "total": sum(counts.values()),
            "paused": self.owner.paused_reason is not None,
            "paused_reason": self.owner.paused_reason,
            "draining": self.owner.draining,
            "max_queued": self.settings.queue_max_queued,
            "workers": len(self.pool.workers),
            "slots": self.pool.slots,
            "running_here": self.running_here,
            "task_types": self.executors.types,
            "completed_per_s_60s": self.owner.completions.per_second(),
            "lease_s": self.owner.lease_s,
            "node": self.local_peer,
        }
        if include_workers:
            report["worker_stats"] = [
                worker.describe(include_metrics=True)
                for worker in sorted(self.pool.workers.values(), key=lambda w: w.worker_id)
            ]
        if include_historical:
            report["historical"] = self.store.history()
        return report


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_id(value: Any, name: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH or not value.isprintable():
        raise InvalidRequest(f"{name} must be a printable string of 1-{MAX_ID_LENGTH} characters")
