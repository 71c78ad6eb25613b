"""Workers: pull leased tasks from queues, run their executors, heartbeat, report.

A worker does not care whose queue a task came from.  It talks to
``QueueEndpoint`` objects: this node's own queue (``service.LocalEndpoint``,
direct calls) or another peer's (``distribution.RemoteEndpoint``, requests
over the P2P network).  It pulls only when it has free slots, so a busy node
simply stops asking, and load spreads without anyone measuring it.

Each running attempt has its own cancel scope, whose deadline is the task's
timeout.  The scope is cancelled when the owner says the lease is gone
(``cancelled`` / ``lost`` from a heartbeat, or a direct notice), when the
worker is unregistered without grace (the lease is *released*: handed back
without counting a failure) and when the sidecar shuts down (also released).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2p_sidecar.taskqueue.errors import TaskFailed
from p2p_sidecar.taskqueue.executors import ExecutorRegistry, TaskContext
from p2p_sidecar.taskqueue.records import Lease, Report, dumps
from p2p_sidecar.taskqueue.sync import Broadcast

log = logging.getLogger(__name__)


class EndpointUnavailable(Exception):
    """The queue behind an endpoint cannot be reached right now (a peer down, a timeout)."""


class QueueEndpoint(Protocol):
    """One queue a worker can pull from: this node's own or a remote owner's."""

    key: str
    owner: str | None
    """The owning peer's id; None for this node's own queue."""

    async def claim(self, worker_id: str, types: Sequence[str], limit: int) -> list[Lease]: ...

    async def heartbeat(self, worker_id: str, leases: Sequence[tuple[str, int]]) -> dict[str, str]: ...

    async def report(self, worker_id: str, report: Report) -> str: ...

    async def release(self, worker_id: str, leases: Sequence[tuple[str, int]], why: str) -> None: ...


class WorkSource(Protocol):
    """Where a worker looks for work, and how it waits for more."""

    work: Broadcast

    def endpoints(self) -> list[QueueEndpoint]:
        """The local queue first, then remote owners that said they have work."""
        ...

    def claimable_types(self, endpoint: QueueEndpoint, capabilities: Sequence[str]) -> list[str]: ...

    def exhausted(self, endpoint: QueueEndpoint) -> None:
        """A claim came back short: that owner has nothing more for us now."""
        ...

    def unreachable(self, endpoint: QueueEndpoint) -> None: ...


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: str
    capabilities: tuple[str, ...]
    max_concurrent: int
    resource_limits: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    registered: bool = False
    """Added by worker_register (kept in the database and re-created at start)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "capabilities": list(self.capabilities),
            "max_concurrent_tasks": self.max_concurrent,
            "resource_limits": self.resource_limits,
            "metadata": self.metadata,
        }


@dataclass(eq=False)
class Running:
    endpoint: QueueEndpoint
    lease: Lease
    scope: trio.CancelScope
    started_at: float
    last_ok: float
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.scope.cancel()


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    discarded: int = 0
    """Attempts whose report the owner refused (lease lost or task cancelled meanwhile)."""
    released: int = 0
    busy_s: float = 0.0


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float
    max_result_bytes: int
    claim_batch: int = 32
    idle_poll_s: float = 1.0
    remote_tools_allow: frozenset[str] = frozenset()


class Worker:
    def __init__(
        self,
        spec: WorkerSpec,
        *,
        executors: ExecutorRegistry,
        source: WorkSource,
        config: WorkerConfig,
        call_gateway: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.spec = spec
        self._executors = executors
        self._source = source
        self._config = config
        self._call_gateway = call_gateway
        self._running: dict[tuple[str, str], Running] = {}
        self._reporting = 0
        """Finished attempts whose outcome is still on its way to the owner (their slots are free already)."""
        self._changed = Broadcast()
        self._claiming = True
        self.state = "starting"
        self.ready = trio.Event()
        self.started_at = time.time()
        self.stats = WorkerStats()

    @property
    def worker_id(self) -> str:
        return self.spec.worker_id

    @property
    def running(self) -> list[Running]:
        return list(self._running.values())

    @property
    def free_slots(self) -> int:
        return max(0, self.spec.max_concurrent - len(self._running)) if self._claiming else 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pull and run until ``stop_claiming``; then wait for running attempts; then return."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats)
            self.state = "running"
            self.ready.set()
            task_status.started()
            await self._pull(nursery)
            await self.wait_idle()
            nursery.cancel_scope.cancel()
        self.state = "stopped"

    def stop_claiming(self) -> None:
        """Take no new work; attempts already running go on."""
        if self._claiming:
            self._claiming = False
            self.state = "draining"
            self._changed.fire()
            self._source.work.fire()

    def release_all(self, why: str) -> int:
        """Stop every running attempt and hand its lease back (no failure counted)."""
        for running in self._running.values():
            running.stop(f"release:{why}")
        return len(self._running)

    async def wait_idle(self, timeout: float = math.inf) -> bool:
        """True once nothing runs and every outcome has been reported; False if ``timeout`` passed first."""
        with trio.move_on_after(timeout):
            while self._running or self._reporting:
                await self._changed.wait_since(self._changed.generation)
            return True
        return False

    def notify(self, endpoint_key: str, task_id: str, verdict: str) -> bool:
        """The owner says this attempt's lease is over (``cancelled`` or ``lost``): stop it now."""
        running = self._running.get((endpoint_key, task_id))
        if running is None:
            return False
        running.stop(verdict)
        return True

    # -- pulling -----------------------------------------------------------------------------------
    async def _pull(self, nursery: trio.Nursery) -> None:
        work = self._source.work
        while self._claiming:
            if self.free_slots == 0:
                await self._changed.wait_since(self._changed.generation)
                continue
            seen = work.generation
            claimed = 0
            for endpoint in self._source.endpoints():
                want = min(self.free_slots, self._config.claim_batch)
                if want <= 0:
                    break
                types = self._source.claimable_types(endpoint, self.spec.capabilities)
                if not types:
                    continue
                try:
                    leases = await endpoint.claim(self.worker_id, types, want)
                except EndpointUnavailable as exc:
                    log.info("worker %s: queue %s unreachable: %s", self.worker_id, endpoint.key, exc)
                    self._source.unreachable(endpoint)
                    continue
                if len(leases) < want:
                    self._source.exhausted(endpoint)
                for lease in leases:
                    self._start(nursery, endpoint, lease)
                claimed += len(leases)
                if not self._claiming:
                    break
            if claimed == 0 and self._claiming:
                await work.wait_since(seen, self._config.idle_poll_s)

    def _start(self, nursery: trio.Nursery, endpoint: QueueEndpoint, lease: Lease) -> None:
        now = trio.current_time()
        scope = trio.CancelScope(deadline=now + lease.timeout_s)
        running = Running(endpoint, lease, scope, time.time(), now)
        self._running[(endpoint.key, lease.task_id)] = running
        if not self._claiming:  # stop_claiming arrived while this claim was in flight
            running.stop("release:worker stopping")
        nursery.start_soon(self._run, running, name=f"task {lease.task_id}")

    # -- running one attempt ---------------------------------------------------------------------------
    async def _run(self, running: Running) -> None:
        lease, endpoint = running.lease, running.endpoint
        report: Report | None = None
        try:
            with running.scope:
                report = await self._execute(running)
            if report is None and running.stop_reason is None:  # the task's own timeout
                report = Report(
                    lease.task_id,
                    lease.attempt,
                    ok=False,
                    message=f"did not finish within its timeout of {lease.timeout_s:g}s",
                    code="timeout",
                )
            elif report is None and (running.stop_reason or "").startswith("release:"):
                self.stats.released += 1
                try:
                    await endpoint.release(self.worker_id, [(lease.task_id, lease.attempt)], running.stop_reason[8:])
                except EndpointUnavailable as exc:  # the owner cannot be told: the lease expires there instead
                    log.info("task %s: could not hand the lease back to %s: %s", lease.task_id, endpoint.key, exc)
        except trio.Cancelled:
            # The sidecar is shutting down: hand the lease back so the task runs again at once elsewhere
            # (or here after restart) without counting as a failure.
            self.stats.released += 1
            with trio.CancelScope(shield=True), trio.move_on_after(2.0), contextlib.suppress(EndpointUnavailable):
                await endpoint.release(self.worker_id, [(lease.task_id, lease.attempt)], "sidecar shutting down")
            raise
        finally:
            self.stats.busy_s += time.time() - running.started_at
            del self._running[(endpoint.key, lease.task_id)]
            if report is not None:
                self._reporting += 1
            self._changed.fire()
        if report is not None:
            try:
                await self._report(running, report)
            finally:
                self._reporting -= 1
                self._changed.fire()

    async def _execute(self, running: Running) -> Report | None:
        lease = running.lease
        executor = self._executors.get(lease.task_type)
        if executor is None:
            return Report(lease.task_id, lease.attempt, ok=False, message=f"no executor for {lease.task_type!r}")
        context = TaskContext(
            task_id=lease.task_id,
            task_type=lease.task_type,
            attempt=lease.attempt,
            owner=running.endpoint.owner,
            call_gateway=self._call_gateway,
            remote_tools_allow=self._config.remote_tools_allow,
        )
        try:
            value = await executor(lease.payload, context)
            # One line per execution that ran to its end (debug): fault runs count these against recorded results.
            log.debug("executed task %s attempt %d for %s: ok", lease.task_id, lease.attempt, running.endpoint.key)
        except TaskFailed as exc:
            log.debug("executed task %s attempt %d for %s: failed", lease.task_id, lease.attempt, running.endpoint.key)
            return Report(
                lease.task_id, lease.attempt, ok=False, message=exc.message, code=exc.code, retryable=exc.retryable
            )
        except Exception as exc:  # boundary: executor code, ours or a plugin's; its failure is the task's
            log.warning("task %s (%s) attempt %d raised", lease.task_id, lease.task_type, lease.attempt, exc_info=True)
            return Report(lease.task_id, lease.attempt, ok=False, message=f"{type(exc).__name__}: {exc}")
        try:
            size = len(dumps(value).encode())
        except (TypeError, ValueError) as exc:
            message = f"result is not JSON: {exc}"
            return Report(lease.task_id, lease.attempt, ok=False, message=message, code="bad_result", retryable=False)
        if size > self._config.max_result_bytes:
            message = (
                f"result of {size} bytes exceeds the limit of {self._config.max_result_bytes} bytes "
                "(SIDECAR_TASK_MAX_RESULT_BYTES)"
            )
            return Report(lease.task_id, lease.attempt, ok=False, message=message, code="too_large", retryable=False)
        return Report(lease.task_id, lease.attempt, ok=True, result=value, size=size)

    async def _report(self, running: Running, report: Report) -> None:
        """Deliver the outcome to its owner, retrying while the lease may still be valid."""
        endpoint = running.endpoint
        give_up = trio.current_time() + 2 * self._config.lease_s
        delay = 0.1
        while True:
            try:
                verdict = await endpoint.report(self.worker_id, report)
                break
            except EndpointUnavailable as exc:
                if trio.current_time() + delay > give_up:
                    log.warning("task %s: owner %s unreachable, result dropped: %s", report.task_id, endpoint.key, exc)
                    self.stats.discarded += 1
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if verdict == "rejected":
            self.stats.discarded += 1
            log.info("task %s attempt %d: owner refused the report (lease gone)", report.task_id, report.attempt)
        elif report.ok:
            self.stats.completed += 1
        else:
            self.stats.failed += 1

    # -- heartbeats -------------------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        interval = self._config.lease_s / 3
        while True:
            await trio.sleep(interval)
            groups: dict[str, list[Running]] = {}
            for running in self._running.values():
                if running.stop_reason is None:
                    groups.setdefault(running.endpoint.key, []).append(running)
            async with trio.open_nursery() as nursery:
                for runs in groups.values():
                    nursery.start_soon(self._beat, runs)

    async def _beat(self, runs: list[Running]) -> None:
        endpoint = runs[0].endpoint
        leases = [(run.lease.task_id, run.lease.attempt) for run in runs]
        now = trio.current_time()
        try:
            with trio.fail_after(self._config.lease_s / 3):
                answers = await endpoint.heartbeat(self.worker_id, leases)
        except (EndpointUnavailable, trio.TooSlowError):
            for run in runs:
                if now - run.last_ok > self._config.lease_s:
                    log.warning(
                        "task %s: no heartbeat reached %s within the lease; stopping", run.lease.task_id, endpoint.key
                    )
                    run.stop("lost")
            return
        for run in runs:
            answer = answers.get(run.lease.task_id, "lost")
            if answer == "ok":
                run.last_ok = now
            else:
                log.info("task %s attempt %d: owner says %s; stopping", run.lease.task_id, run.lease.attempt, answer)
                run.stop(answer)

    def describe(self, *, include_tasks: bool = False, include_metrics: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            **self.spec.to_dict(),
            "state": self.state,
            "running": len(self._running),
            "free_slots": self.free_slots,
            "registered": self.spec.registered,
        }
        if include_tasks:
            info["tasks"] = [
                {
                    "task_id": run.lease.task_id,
                    "task_type": run.lease.task_type,
                    "attempt": run.lease.attempt,
                    "owner": run.endpoint.owner or "local",
                    "started_at": run.started_at,
                }
                for run in self._running.values()
            ]
        if include_metrics:
            uptime = max(1e-9, time.time() - self.started_at)
            info["metrics"] = {
                "completed": self.stats.completed,
                "failed": self.stats.failed,
                "discarded": self.stats.discarded,
                "released": self.stats.released,
                "busy_s": round(self.stats.busy_s, 3),
                "utilization": round(self.stats.busy_s / (uptime * self.spec.max_concurrent), 4),
                "uptime_s": round(uptime, 3),
            }
        return info
