"""One worker: its slots, the attempts it runs, their heartbeats and their reports.

A worker does not care whose queue a task came from.  It talks to ``Source``
objects: this node's own queue (``owner.LocalSource``, direct calls) or
another peer's (``peer_source.PeerSource``, requests over the network), and
learns where work waits from its ``Feed`` (the pool).  It claims only when it
has free slots, so a busy node simply stops asking.

Claims from this node's queue are made inline (they never wait on the
network); a claim from a peer runs as its own task with the slots it asked
for reserved, so a slow or vanished owner holds up nothing else.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import trio

from p2p_sidecar.taskqueue.errors import InvalidRequest, SourceUnavailable, TaskFailed
from p2p_sidecar.taskqueue.executors import ExecutorRegistry, LocalTools, TaskContext, ToolCaller
from p2p_sidecar.taskqueue.model import LeaseAnswer, Verdict
from p2p_sidecar.taskqueue.records import Lease, Progress, Report, dumps
from p2p_sidecar.taskqueue.spans import attempt_context
from p2p_sidecar.taskqueue.sync import Broadcast

log = logging.getLogger(__name__)

PROGRESS_FLUSH_S = 0.2
"""How soon an executor's progress leaves for its owner (changes within this interval travel together)."""
RELEASE_TIMEOUT_S = 2.0


class Source(Protocol):
    """One queue a worker can pull from: this node's own or a remote owner's.  Raises ``SourceUnavailable``."""

    @property
    def owner(self) -> str | None:
        """The owning peer's id; None for this node's own queue."""
        ...

    async def claim(self, worker: str, types: Sequence[str], limit: int) -> list[Lease]: ...

    async def heartbeat(
        self, worker: str, leases: Sequence[tuple[str, int]], progress: Sequence[tuple[str, int, Progress]]
    ) -> dict[str, LeaseAnswer]: ...

    async def progress(self, worker: str, updates: Sequence[tuple[str, int, Progress]]) -> None: ...

    async def report(self, worker: str, report: Report) -> Verdict: ...

    async def release(self, worker: str, leases: Sequence[tuple[str, int]], why: str) -> None: ...


class Feed(Protocol):
    """Where a worker finds work (the pool): its own node's queue, and owners that hinted."""

    news: Broadcast
    local: Source

    def owners(self, capabilities: Sequence[str]) -> list[tuple[Source, list[str], int]]:
        """Remote owners with hinted work of these types: (source, types, tasks hinted, 0 if not said)."""
        ...

    def claimed(self, source: Source, *, asked: int, got: int) -> None:
        """A claim's outcome; a short one means that owner has nothing more for us now."""
        ...

    def unreachable(self, source: Source) -> None: ...


class WorkerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    """Takes no new work; its running attempts go on."""
    STOPPED = "stopped"


class StopKind(StrEnum):
    """Why an attempt was stopped before its executor returned."""

    CANCELLED = "cancelled"
    """The task was cancelled at its owner: nothing to report (the owner already recorded it)."""
    LOST = "lost"
    """The lease is gone (expired, claimed again, owner unreachable for a whole lease): nothing to report."""
    RELEASE = "release"
    """Handed back unfinished on purpose (worker unregistered, shutting down): no failure counted."""


@dataclass(frozen=True, slots=True)
class Stop:
    kind: StopKind
    why: str = ""


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
    source: Source
    lease: Lease
    scope: trio.CancelScope
    started_at: float
    last_ok: float
    stop: Stop | None = None
    progress: Progress | None = None
    progress_sent: Progress | None = None

    def halt(self, stop: Stop) -> None:
        if self.stop is None:
            self.stop = stop
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
    safety_poll_s: float = 10.0
    """A worker is woken by news; this long without any, it looks anyway."""
    remote_tools_allow: frozenset[str] = frozenset()
    local_peer: str | None = None


class Worker:
    def __init__(
        self,
        spec: WorkerSpec,
        *,
        executors: ExecutorRegistry,
        feed: Feed,
        config: WorkerConfig,
        call_gateway: ToolCaller | None = None,
        local_tools: LocalTools | None = None,
    ) -> None:
        self.spec = spec
        self._executors = executors
        self._feed = feed
        self._config = config
        self._call_gateway = call_gateway
        self._local_tools = local_tools
        self._running: dict[tuple[str | None, str], Running] = {}
        self._reserved = 0
        """Slots held for claims in flight to remote owners."""
        self._claiming_from: set[str | None] = set()
        self._reporting = 0
        """Finished attempts whose outcome is still on its way to the owner (their slots are free already)."""
        self._changed = Broadcast()
        self.wake = Broadcast()
        """Fired by the pool's news and by this worker's own changes (a slot freed, a claim back)."""
        self._changed.chain(self.wake)
        self._claiming = True
        self._progress_due: set[Source] = set()
        self.state = WorkerState.STARTING
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
        """Slots neither running an attempt nor held for a claim in flight to a remote owner."""
        if not self._claiming:
            return 0
        return max(0, self.spec.max_concurrent - len(self._running) - self._reserved)

    @property
    def _room(self) -> int:
        """Slots not running an attempt: this node's own work may take slots held for remote claims."""
        return max(0, self.spec.max_concurrent - len(self._running)) if self._claiming else 0

    def runs(self, task_type: str) -> bool:
        return task_type in self.spec.capabilities

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pull and run until ``stop_claiming``; then wait for running attempts; then return."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats)
            self.state = WorkerState.RUNNING
            self.ready.set()
            task_status.started()
            await self._pull(nursery)
            await self.wait_idle()
            nursery.cancel_scope.cancel()
        self.state = WorkerState.STOPPED

    def stop_claiming(self) -> None:
        """Take no new work; attempts already running go on."""
        if self._claiming:
            self._claiming = False
            self.state = WorkerState.DRAINING
            self._changed.fire()

    def release_all(self, why: str) -> int:
        """Stop every running attempt and hand its lease back (no failure counted)."""
        for running in self._running.values():
            running.halt(Stop(StopKind.RELEASE, why))
        return len(self._running)

    async def wait_idle(self, timeout: float = math.inf) -> bool:
        """True once nothing runs and every outcome has been reported; False if ``timeout`` passed first."""
        with trio.move_on_after(timeout):
            while self._running or self._reporting or self._reserved:
                await self._changed.wait_since(self._changed.generation)
            return True
        return False

    def notify(self, owner: str | None, task_id: str, answer: LeaseAnswer) -> bool:
        """The owner says this attempt's lease is over (``cancelled`` or ``lost``): stop it now."""
        running = self._running.get((owner, task_id))
        if running is None:
            return False
        running.halt(Stop(StopKind.CANCELLED if answer is LeaseAnswer.CANCELLED else StopKind.LOST))
        return True

    # -- pulling ---------------------------------------------------------------------------------------------
    async def _pull(self, nursery: trio.Nursery) -> None:
        while self._claiming:
            seen = self.wake.generation
            if not await self._pull_once(nursery):
                await self.wake.wait_since(seen, self._config.safety_poll_s)

    async def _pull_once(self, nursery: trio.Nursery) -> bool:
        """One look for work; True if it should look again at once (it got a full batch from its own node)."""
        want = min(self._room, self._config.claim_batch)
        if want == 0:
            return False
        local = self._feed.local
        try:
            leases = await local.claim(self.worker_id, self.spec.capabilities, want)
        except SourceUnavailable as exc:
            log.warning("worker %s: this node's queue cannot hand out tasks now: %s", self.worker_id, exc)
            leases = []
        for lease in leases:
            self._start(nursery, local, lease)
        again = len(leases) == want
        for source, types, hinted in self._feed.owners(self.spec.capabilities):
            free = self.free_slots
            if free == 0:
                break
            if source.owner in self._claiming_from:
                continue
            want = min(free, self._config.claim_batch, hinted or free)
            self._reserved += want
            self._claiming_from.add(source.owner)
            nursery.start_soon(self._claim_remote, nursery, source, types, want)
        return again and self._claiming

    async def _claim_remote(self, nursery: trio.Nursery, source: Source, types: list[str], want: int) -> None:
        leases: list[Lease] = []
        try:
            leases = await source.claim(self.worker_id, types, want)
        except SourceUnavailable as exc:
            log.info("worker %s: queue of %s unreachable: %s", self.worker_id, source.owner, exc)
            self._feed.unreachable(source)
        finally:
            self._reserved -= want
            self._claiming_from.discard(source.owner)
        # This node's own work may have taken the slots held for this claim meanwhile: hand the excess back.
        room = self._room
        taken, excess = leases[:room], leases[room:]
        for lease in taken:
            self._start(nursery, source, lease)
        if excess:
            self.stats.released += len(excess)
            try:
                await source.release(self.worker_id, [lease.key for lease in excess], "no free slot any more")
            except SourceUnavailable as exc:  # they expire at the owner instead
                log.info(
                    "worker %s: could not hand back %d lease(s) to %s: %s",
                    self.worker_id,
                    len(excess),
                    source.owner,
                    exc,
                )
        self._feed.claimed(source, asked=want, got=len(leases))
        self._changed.fire()

    def _start(self, nursery: trio.Nursery, source: Source, lease: Lease) -> None:
        now = trio.current_time()
        scope = trio.CancelScope(deadline=now + lease.timeout_s)
        running = Running(source, lease, scope, time.time(), now)
        self._running[(source.owner, lease.task_id)] = running
        if not self._claiming:  # stop_claiming arrived while this claim was in flight
            running.halt(Stop(StopKind.RELEASE, "worker stopping"))
        nursery.start_soon(self._run, nursery, running, name=f"task {lease.task_id}")

    # -- running one attempt ---------------------------------------------------------------------------------
    async def _run(self, nursery: trio.Nursery, running: Running) -> None:
        lease, source = running.lease, running.source
        report: Report | None = None
        try:
            with running.scope:
                report = await self._execute(nursery, running)
            if report is None and running.stop is None:  # the task's own timeout
                report = Report(
                    lease.task_id,
                    lease.attempt,
                    ok=False,
                    message=f"did not finish within its timeout of {lease.timeout_s:g}s",
                    code="timeout",
                )
            elif report is None and running.stop is not None and running.stop.kind is StopKind.RELEASE:
                self.stats.released += 1
                try:
                    await source.release(self.worker_id, [lease.key], running.stop.why)
                except SourceUnavailable as exc:  # the owner cannot be told: the lease expires there instead
                    log.info("task %s: could not hand the lease back to %s: %s", lease.task_id, source.owner, exc)
        except trio.Cancelled:
            # The sidecar is shutting down: hand the lease back so the task runs again at once elsewhere
            # (or here after restart) without counting as a failure.
            self.stats.released += 1
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S) as waited:
                try:
                    await source.release(self.worker_id, [lease.key], "sidecar shutting down")
                except SourceUnavailable as exc:
                    log.warning(
                        "task %s: lease not handed back to %s at shutdown: %s", lease.task_id, source.owner, exc
                    )
            if waited.cancelled_caught:
                log.warning(
                    "task %s: %s did not answer the hand-back within %gs; it may still record it, or the lease expires",
                    lease.task_id,
                    source.owner,
                    RELEASE_TIMEOUT_S,
                )
            raise
        finally:
            self.stats.busy_s += time.time() - running.started_at
            del self._running[(source.owner, lease.task_id)]
            if report is not None:
                self._reporting += 1
            self._changed.fire()
        if report is not None:
            try:
                await self._report(running, report)
            finally:
                self._reporting -= 1
                self._changed.fire()

    async def _execute(self, nursery: trio.Nursery, running: Running) -> Report | None:
        lease = running.lease
        executor = self._executors.get(lease.task_type)
        if executor is None:
            return Report(lease.task_id, lease.attempt, ok=False, message=f"no executor for {lease.task_type!r}")

        def report_progress(message: str | None = None, done: float | None = None, total: float | None = None) -> None:
            self._progress(nursery, running, {"message": message, "done": done, "total": total})

        context = TaskContext(
            task_id=lease.task_id,
            task_type=lease.task_type,
            attempt=lease.attempt,
            owner=running.source.owner,
            call_gateway=self._call_gateway,
            local_tools=self._local_tools,
            remote_tools_allow=self._config.remote_tools_allow,
            report_progress=report_progress,
        )
        try:
            with attempt_context(lease, running.source.owner):
                value = await executor(lease.payload, context)
            # One line per execution that ran to its end (debug): fault runs count these against recorded results.
            log.debug("executed task %s attempt %d for %s: ok", lease.task_id, lease.attempt, running.source.owner)
        except TaskFailed as exc:
            log.debug("executed task %s attempt %d for %s: failed", lease.task_id, lease.attempt, running.source.owner)
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
        source = running.source
        give_up = trio.current_time() + 2 * self._config.lease_s
        delay = 0.1
        while True:
            try:
                verdict = await source.report(self.worker_id, report)
                break
            except SourceUnavailable as exc:
                if trio.current_time() + delay > give_up:
                    log.warning("task %s: owner %s unreachable, result dropped: %s", report.task_id, source.owner, exc)
                    self.stats.discarded += 1
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if verdict is Verdict.REJECTED:
            self.stats.discarded += 1
            log.info("task %s attempt %d: owner refused the report (lease gone)", report.task_id, report.attempt)
        elif report.ok:
            self.stats.completed += 1
        else:
            self.stats.failed += 1

    # -- progress ---------------------------------------------------------------------------------------------
    def _progress(self, nursery: trio.Nursery, running: Running, raw: Mapping[str, Any]) -> None:
        """An executor said how far it got: keep it, and send what changed to the owner shortly."""
        try:
            running.progress = Progress.parse(raw, at=time.time())
        except InvalidRequest as exc:
            raise TaskFailed(f"report_progress: {exc.message}", retryable=False, code="invalid_progress") from None
        if running.source not in self._progress_due:
            self._progress_due.add(running.source)
            nursery.start_soon(self._flush_progress, running.source)

    async def _flush_progress(self, source: Source) -> None:
        await trio.sleep(PROGRESS_FLUSH_S)
        self._progress_due.discard(source)
        updates = self._unsent_progress(source)
        if updates:
            with contextlib.suppress(SourceUnavailable):  # the heartbeat carries it again
                await source.progress(self.worker_id, updates)

    def _unsent_progress(self, source: Source) -> list[tuple[str, int, Progress]]:
        updates = []
        for running in self._running.values():
            if running.source is source and running.progress is not None and running.progress != running.progress_sent:
                updates.append((running.lease.task_id, running.lease.attempt, running.progress))
                running.progress_sent = running.progress
        return updates

    # -- heartbeats -------------------------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        interval = self._config.lease_s / 3
        while True:
            await trio.sleep(interval)
            groups: dict[str | None, list[Running]] = {}
            for running in self._running.values():
                if running.stop is None:
                    groups.setdefault(running.source.owner, []).append(running)
            async with trio.open_nursery() as nursery:
                for runs in groups.values():
                    nursery.start_soon(self._beat, runs)

    async def _beat(self, runs: list[Running]) -> None:
        source = runs[0].source
        leases = [run.lease.key for run in runs]
        progress = self._unsent_progress(source)
        now = trio.current_time()
        try:
            with trio.fail_after(self._config.lease_s / 3):
                answers = await source.heartbeat(self.worker_id, leases, progress)
        except (SourceUnavailable, trio.TooSlowError):
            for run in runs:
                if now - run.last_ok > self._config.lease_s:
                    log.warning(
                        "task %s: no heartbeat reached %s within the lease; stopping", run.lease.task_id, source.owner
                    )
                    run.halt(Stop(StopKind.LOST, "owner unreachable for a whole lease"))
            return
        for run in runs:
            answer = answers.get(run.lease.task_id, LeaseAnswer.LOST)
            if answer is LeaseAnswer.OK:
                run.last_ok = now
            else:
                log.info("task %s attempt %d: owner says %s; stopping", run.lease.task_id, run.lease.attempt, answer)
                run.halt(Stop(StopKind.CANCELLED if answer is LeaseAnswer.CANCELLED else StopKind.LOST))

    # -- reading -------------------------------------------------------------------------------------------------
    def describe(self, *, include_tasks: bool = False, include_metrics: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            **self.spec.to_dict(),
            "state": self.state.value,
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
                    "owner": run.source.owner or self._config.local_peer or "local",
                    "started_at": run.started_at,
                    **({"progress": run.progress.to_dict()} if run.progress is not None else {}),
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
