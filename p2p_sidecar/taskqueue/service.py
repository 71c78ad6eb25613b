"""The queue service: the store, this node's workers, the lease reaper, and task_wait.

Started from ``p2p_sidecar.main`` with ``await nursery.start(queue.run)``.
Start-up first hands back every task that this node's own workers held when
the previous process died (the leases carry the boot id of the process that
took them), so that work resumes at once instead of after a lease timeout.

Shutdown (SIGTERM) is ``stop_claiming`` -> ``wait_idle`` (up to the grace
period) -> cancellation, at which point every attempt still running releases
its lease: the task is queued again, with no failure counted, and runs after
restart (or on another peer).

Everything that changes a task goes through the store; this module decides
*when* (timers, wake-ups, notices to workers) and shapes what tools return.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import trio

from p2p_sidecar.taskqueue.errors import Conflict, InvalidRequest, NoNetwork, NotFound, QueueFull, StorageError
from p2p_sidecar.taskqueue.executors import ExecutorRegistry
from p2p_sidecar.taskqueue.model import TERMINAL, RetryPolicy, TaskStatus
from p2p_sidecar.taskqueue.records import Ended, Lease, NewTask, Report, dumps
from p2p_sidecar.taskqueue.store import LOCAL, REMOTE, StoreStartupError, TaskStore
from p2p_sidecar.taskqueue.sync import Broadcast
from p2p_sidecar.taskqueue.views import describe_task, history
from p2p_sidecar.taskqueue.worker import EndpointUnavailable, QueueEndpoint, Worker, WorkerConfig, WorkerSpec

if TYPE_CHECKING:
    from p2p_sidecar.settings import SidecarSettings
    from p2p_sidecar.taskqueue.distribution import Distribution, PeerRpc

log = logging.getLogger(__name__)

DEFAULT_WORKER_ID = "local"
MAX_TAGS = 32
MAX_ID_LENGTH = 128


class LocalEndpoint:
    """This node's own queue, as a worker sees it: direct calls, no network.

    A database failure (disk full, I/O error) reads to the worker like an owner it cannot reach: it
    retries later instead of crashing, exactly as it would for a remote owner that is down.
    """

    key = "local"
    owner: str | None = None

    def __init__(self, service: QueueService) -> None:
        self._service = service

    async def claim(self, worker_id: str, types: Sequence[str], limit: int) -> list[Lease]:
        with _unavailable_on_storage_error("claim"):
            return self._service.claim(worker_id, types, limit, peer=None, boot=self._service.boot)

    async def heartbeat(self, worker_id: str, leases: Sequence[tuple[str, int]]) -> dict[str, str]:
        with _unavailable_on_storage_error("heartbeat"):
            return self._service.heartbeat(leases, peer=None)

    async def report(self, worker_id: str, report: Report) -> str:
        with _unavailable_on_storage_error("report"):
            return self._service.finish([report], peer=None)[0]

    async def release(self, worker_id: str, leases: Sequence[tuple[str, int]], why: str) -> None:
        with _unavailable_on_storage_error("release"):
            self._service.release(leases, peer=None, why=why)


@contextlib.contextmanager
def _unavailable_on_storage_error(what: str) -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        raise EndpointUnavailable(f"local {what}: {exc.message}") from None


class QueueService:
    def __init__(
        self,
        settings: SidecarSettings,
        *,
        executors: ExecutorRegistry | None = None,
        rpc: PeerRpc | None = None,
        call_gateway: Callable[..., Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.time,
        on_limit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.boot = uuid.uuid4().hex[:16]
        self.lease_s = settings.queue_lease_seconds
        self.store = TaskStore(
            settings.data_dir / "queue.db",
            sync=settings.queue_sync,
            max_result_bytes=settings.task_max_result_bytes,
            on_ended=self._on_ended,
        )
        self.executors = executors or ExecutorRegistry.discover(settings.worker_task_types)
        self.work = Broadcast()
        self._failures = Broadcast()
        self._waiters: dict[str, list[Any]] = {}
        self._end_listeners: list[Callable[[list[Ended]], None]] = []
        self._call_gateway = call_gateway
        self.local = LocalEndpoint(self)
        self.workers: dict[str, Worker] = {}
        self._new_workers_send, self._new_workers_recv = trio.open_memory_channel[Worker](16)
        self._worker_config = WorkerConfig(
            lease_s=self.lease_s,
            max_result_bytes=settings.task_max_result_bytes,
            claim_batch=settings.queue_claim_batch,
            remote_tools_allow=frozenset(settings.remote_tools_allow),
        )
        self.paused_reason: str | None = self.store.get_meta("paused")
        self.draining = False
        self.started_at = time.time()
        self._completions: collections.deque[list[int]] = collections.deque(maxlen=120)
        self.submitted_types: set[str] = set(self.executors.types)
        """Task types this node has queued: which peers may need to hear about its work."""
        self.distribution: Distribution | None = None
        if rpc is not None:
            from p2p_sidecar.taskqueue.distribution import Distribution

            self.distribution = Distribution(self, rpc, on_limit=on_limit)

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            try:
                recovered = self.store.lose_leases_of(
                    None, boot_not=self.boot, now=self.clock(), why="this node's sidecar restarted while the task ran"
                )
            except StorageError as exc:
                raise StoreStartupError(exc.message) from None
            if recovered:
                log.info("re-queued %d task(s) this node was running when its previous process died", recovered)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reap_leases)
                nursery.start_soon(self._wake_after_backoff)
                if self.distribution is not None:
                    await nursery.start(self.distribution.run)
                await nursery.start(self._run_workers)
                log.info(
                    "task queue ready: %s queued, types %s, %d worker(s)",
                    self.store.count(TaskStatus.QUEUED),
                    self.executors.types,
                    len(self.workers),
                )
                task_status.started()
        finally:
            self.store.close()

    async def _run_workers(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns every worker's task: the defaults at start, then those worker_register adds."""
        specs = []
        if self.settings.worker_concurrency > 0:
            specs.append(WorkerSpec(DEFAULT_WORKER_ID, tuple(self.executors.types), self.settings.worker_concurrency))
        for saved in self.store.saved_workers():
            specs.append(self._spec_from_saved(saved))
        async with trio.open_nursery() as nursery:
            for spec in specs:
                if spec.worker_id not in self.workers:
                    await nursery.start(self._serve_worker, self._make_worker(spec))
            self._advertise()
            task_status.started()
            async for worker in self._new_workers_recv:
                await nursery.start(self._serve_worker, worker)

    async def _serve_worker(
        self, worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.workers[worker.worker_id] = worker
        try:
            await worker.run(task_status=task_status)
        finally:
            if self.workers.get(worker.worker_id) is worker:
                del self.workers[worker.worker_id]

    def _make_worker(self, spec: WorkerSpec) -> Worker:
        return Worker(
            spec,
            executors=self.executors,
            source=self,
            config=self._worker_config,
            call_gateway=self._call_gateway,
        )

    def stop_claiming(self) -> None:
        """Shutdown, step one: no worker takes new work and no peer is handed any."""
        self.draining = True
        for worker in self.workers.values():
            worker.stop_claiming()
        for waiter in self._waiters.values():
            waiter[0].set()  # task_wait callers answer now ("not finished") instead of holding the drain

    async def wait_idle(self) -> None:
        for worker in list(self.workers.values()):
            await worker.wait_idle()

    @property
    def running_here(self) -> int:
        return sum(len(worker.running) for worker in self.workers.values())

    # -- WorkSource (what workers pull from) ---------------------------------------------------------
    def endpoints(self) -> list[QueueEndpoint]:
        remote = self.distribution.endpoints() if self.distribution is not None else []
        return [self.local, *remote]

    def claimable_types(self, endpoint: QueueEndpoint, capabilities: Sequence[str]) -> list[str]:
        if endpoint.owner is not None and self.distribution is not None:
            return self.distribution.claimable_types(endpoint, capabilities)
        return list(capabilities)

    def exhausted(self, endpoint: QueueEndpoint) -> None:
        if self.distribution is not None:
            self.distribution.exhausted(endpoint)

    def unreachable(self, endpoint: QueueEndpoint) -> None:
        if self.distribution is not None:
            self.distribution.unreachable(endpoint)

    # -- the owner's side of leases (local workers and remote peers alike) --------------------------------
    def claim(
        self,
        worker_id: str,
        types: Sequence[str],
        limit: int,
        *,
        peer: str | None,
        boot: str,
        max_bytes: int | None = None,
    ) -> list[Lease]:
        if self.paused_reason is not None or self.draining:
            return []
        return self.store.claim(
            types=types,
            limit=limit,
            worker=worker_id,
            peer=peer,
            boot=boot,
            lease_s=self.lease_s,
            now=self.clock(),
            max_bytes=max_bytes,
        )

    def heartbeat(self, leases: Sequence[tuple[str, int]], *, peer: str | None) -> dict[str, str]:
        return self.store.heartbeat(leases, peer=peer, lease_s=self.lease_s, now=self.clock())

    def finish(self, reports: Sequence[Report], *, peer: str | None) -> list[str]:
        verdicts = self.store.finish(reports, peer=peer, now=self.clock())
        if any(not report.ok for report in reports):
            self._failures.fire()  # a retry may now be waiting out its backoff
            self.work.fire()
        return verdicts

    def release(self, leases: Sequence[tuple[str, int]], *, peer: str | None, why: str) -> int:
        released = self.store.release(leases, peer=peer, now=self.clock(), why=why)
        if released:
            self.work.fire()
        return released

    def lose_peer_leases(self, peer: str, *, boot_not: str, why: str) -> int:
        lost = self.store.lose_leases_of(peer, boot_not=boot_not, now=self.clock(), why=why)
        if lost:
            self.work.fire()
        return lost

    async def _reap_leases(self) -> None:
        interval = max(0.05, min(1.0, self.lease_s / 4))
        while True:
            await trio.sleep(interval)
            try:
                expired = self.store.expire_leases(self.clock())
            except StorageError:
                continue  # logged by the store; the leases expire on a later round, once the disk works again
            if expired:
                log.warning("%d lease(s) expired: their tasks are queued again", expired)
                self.work.fire()

    async def _wake_after_backoff(self) -> None:
        """Wake the workers when a backed-off retry becomes claimable (they also poll, but slowly)."""
        while True:
            seen = self._failures.generation
            now = self.clock()
            try:
                ready_at = self.store.next_ready_at(now)
            except sqlite3.Error as exc:
                log.error("reading the next retry time failed: %s", exc)
                ready_at = now + 1.0
            timeout = math.inf if ready_at is None else max(0.0, ready_at - now)
            if not await self._failures.wait_since(seen, timeout):
                self.work.fire()

    # -- notices ------------------------------------------------------------------------------------------
    def on_task_end(self, listener: Callable[[list[Ended]], None]) -> None:
        self._end_listeners.append(listener)

    def _on_ended(self, ended: list[Ended]) -> None:
        completed = 0
        for item in ended:
            waiter = self._waiters.pop(item.task_id, None)
            if waiter is not None:
                waiter[0].set()
            completed += item.status is TaskStatus.COMPLETED
        if completed:
            second = int(time.time())
            if self._completions and self._completions[-1][0] == second:
                self._completions[-1][1] += completed
            else:
                self._completions.append([second, completed])
        for listener in self._end_listeners:
            listener(ended)

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
    ) -> tuple[dict[str, Any], bool]:
        """Validate and store one task; returns (task view, created).  Re-submission with the same
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
                return describe_task(existing, now=self.clock()), False
        self.check_type(task_type)
        self.executors.validate(task_type, payload)
        self.submitted_types.add(task_type)
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
        placement = self._placement(metadata.get("placement"))
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
        )
        row, created = self.store.insert(task, self.clock())
        if created:
            self.work.fire()
        return describe_task(row, now=self.clock()), created

    def check_type(self, task_type: str) -> None:
        """A task type is accepted if this node runs it or a connected peer advertises it."""
        if task_type in self.executors:
            return
        if self.distribution is not None and self.distribution.peers_for(task_type):
            return
        raise InvalidRequest(
            f"unknown task_type {task_type!r}: not installed here ({', '.join(self.executors.types)}) "
            "and no connected peer advertises it"
        )

    def _placement(self, raw: Any) -> str | None:
        if raw is None or raw == "any":
            return None
        if raw == LOCAL:
            return LOCAL
        local_peer = self.distribution.local_peer_id if self.distribution is not None else None
        if isinstance(raw, dict) and set(raw) == {"peer"} and isinstance(raw["peer"], str) and raw["peer"]:
            if raw["peer"] == local_peer:
                return LOCAL
            if self.distribution is None:
                raise NoNetwork("metadata.placement names a peer, but this node has no P2P network")
            return f"peer:{raw['peer']}"
        if raw == REMOTE:
            if self.distribution is None:
                raise NoNetwork("metadata.placement 'remote' needs a P2P network, and this node has none")
            return REMOTE
        raise InvalidRequest('metadata.placement must be "any", "local", "remote" or {"peer": "<peer id>"}')

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any]:
        return describe_task(self.store.require(task_id), now=self.clock())

    def row(self, task_id: str) -> Any:
        return self.store.require(task_id)

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Return the task once it is finished, or as it is when ``timeout`` passes (no polling)."""
        row = self.store.require(task_id)
        if TaskStatus(row["status"]) not in TERMINAL and timeout > 0 and not self.draining:
            waiter = self._waiters.setdefault(task_id, [trio.Event(), 0])
            waiter[1] += 1
            try:
                with trio.move_on_after(timeout):
                    await waiter[0].wait()
            finally:
                waiter[1] -= 1
                if waiter[1] == 0 and self._waiters.get(task_id) is waiter:
                    del self._waiters[task_id]
            row = self.store.require(task_id)
        return describe_task(row, now=self.clock())

    def completed_per_second(self, window: int = 60) -> float:
        """Tasks completed per second over the last ``window`` whole seconds (kept in per-second buckets)."""
        cutoff = int(time.time()) - window
        return round(sum(count for second, count in self._completions if second > cutoff) / window, 3)

    # -- operator actions -----------------------------------------------------------------------------------------
    def cancel(self, task_id: str, reason: str) -> tuple[TaskStatus, dict[str, Any]]:
        before, row = self.store.cancel(task_id, reason, self.clock())
        if before is TaskStatus.RUNNING:
            peer = row["worker_peer"]
            if peer is None:
                for worker in self.workers.values():
                    worker.notify(self.local.key, task_id, "cancelled")
            elif self.distribution is not None:
                self.distribution.notify_cancelled(peer, task_id, row["attempt"])
        return before, self.get(task_id)

    def retry(self, task_id: str, retry_config: dict[str, Any] | None) -> dict[str, Any]:
        row = self.store.require(task_id)
        if TaskStatus(row["status"]) not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise Conflict(f"task {task_id} is {row['status']}; only failed or cancelled tasks can be retried")
        base = RetryPolicy(**json.loads(row["retry_policy"]))
        policy = RetryPolicy.parse(retry_config, base) if retry_config is not None else None
        self.store.retry(task_id, policy, self.clock())
        self.work.fire()
        return self.get(task_id)

    def set_priority(self, task_id: str, priority: float, requeue: bool) -> dict[str, Any]:
        if not _finite(priority):
            raise InvalidRequest("new_priority must be a finite number (higher runs first)")
        row = self.store.require(task_id)
        status = TaskStatus(row["status"])
        if requeue and status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            self.store.retry(task_id, None, self.clock())
            status = TaskStatus.QUEUED
        if status in TERMINAL:
            raise Conflict(f"task {task_id} is {status.value}; its priority no longer matters")
        self.store.set_priority(task_id, float(priority), self.clock())
        self.work.fire()
        return self.get(task_id)

    def pause(self, reason: str | None) -> None:
        self.paused_reason = reason or "paused by queue_pause"
        with self.store.transaction():
            self.store.set_meta("paused", self.paused_reason)

    def resume(self) -> bool:
        was = self.paused_reason is not None
        self.paused_reason = None
        with self.store.transaction():
            self.store.db.execute("DELETE FROM meta WHERE key = 'paused'")
        self.work.fire()
        return was

    def clear(self, statuses: Sequence[TaskStatus]) -> dict[str, int]:
        cleared: dict[str, int] = {}
        if TaskStatus.QUEUED in statuses:
            cleared["queued"] = self.store.cancel_queued("queue cleared by queue_clear", self.clock())
        finished = [status for status in statuses if status in TERMINAL]
        if finished:
            cleared["deleted"] = self.store.delete_finished(finished)
        return cleared

    # -- workers -----------------------------------------------------------------------------------------------
    async def add_worker(self, spec: WorkerSpec) -> Worker:
        if spec.worker_id in self.workers:
            raise Conflict(f"a worker named {spec.worker_id!r} is already registered on this node")
        unknown = sorted(set(spec.capabilities) - set(self.executors.types))
        if unknown:
            raise InvalidRequest(f"capabilities {unknown} are not task types installed here: {self.executors.types}")
        if self.draining:
            raise Conflict("the sidecar is shutting down")
        worker = self._make_worker(spec)
        self.workers[spec.worker_id] = worker  # visible at once; _serve_worker keeps it there
        if spec.registered:
            self.store.save_worker(spec.worker_id, spec.to_dict())
        await self._new_workers_send.send(worker)
        await worker.ready.wait()
        self._advertise()
        self.work.fire()
        return worker

    async def remove_worker(self, worker_id: str, *, graceful: bool, timeout: float) -> dict[str, Any]:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker named {worker_id!r} on this node")
        self.store.delete_worker(worker_id)
        running = len(worker.running)
        worker.stop_claiming()
        finished_in_time = await worker.wait_idle(timeout) if graceful else False
        released = 0 if finished_in_time else worker.release_all("worker unregistered")
        await worker.wait_idle()
        self._advertise()
        return {"running_at_request": running, "finished": running - released, "released": released}

    def _spec_from_saved(self, saved: dict[str, Any]) -> WorkerSpec:
        capabilities = [cap for cap in saved.get("capabilities", []) if cap in self.executors]
        return WorkerSpec(
            saved["worker_id"],
            tuple(capabilities),
            int(saved.get("max_concurrent_tasks", 5)),
            resource_limits=saved.get("resource_limits") or {},
            metadata=saved.get("metadata") or {},
            registered=True,
        )

    def capabilities(self) -> list[str]:
        """Task types some worker of this node currently takes."""
        return sorted(
            {cap for worker in self.workers.values() if worker.state != "stopped" for cap in worker.spec.capabilities}
        )

    def _advertise(self) -> None:
        if self.distribution is not None:
            self.distribution.advertise(self.capabilities())

    def stats(self, *, include_workers: bool, include_historical: bool) -> dict[str, Any]:
        counts = self.store.counts()
        report: dict[str, Any] = {
            "counts": counts,
            "total": sum(counts.values()),
            "paused": self.paused_reason is not None,
            "paused_reason": self.paused_reason,
            "draining": self.draining,
            "max_queued": self.settings.queue_max_queued,
            "workers": len(self.workers),
            "slots": sum(worker.spec.max_concurrent for worker in self.workers.values()),
            "running_here": self.running_here,
            "task_types": self.executors.types,
            "completed_per_s_60s": self.completed_per_second(),
            "lease_s": self.lease_s,
            "node": self.distribution.local_peer_id if self.distribution is not None else None,
        }
        if include_workers:
            report["worker_stats"] = [
                worker.describe(include_metrics=True)
                for worker in sorted(self.workers.values(), key=lambda w: w.worker_id)
            ]
        if include_historical:
            report["historical"] = history(self.store.db)
        return report


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_id(value: Any, name: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH or not value.isprintable():
        raise InvalidRequest(f"{name} must be a printable string of 1-{MAX_ID_LENGTH} characters")
