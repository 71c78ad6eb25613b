"""The owner's side of the queue: this node's tasks and the rules of their leases.

``LeaseOwner`` is what every claim, heartbeat, report and release meets,
whether it comes from this node's own workers (``sources.LocalSource``) or
from a peer's (``lending.Lending``), and what the tools change when they
submit, cancel, retry or pause.  It owns the store, the clock, this process's
boot id, the pause and drain switches, two timers (expired leases; retries
whose backoff ended) and the parked ``task_wait`` callers.  It knows nothing
of peers or workers beyond their ids: it announces "there may be claimable
work" on ``work`` and lets whoever pulls decide.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import trio

from p2p_sidecar.taskqueue.errors import SourceUnavailable, StorageError
from p2p_sidecar.taskqueue.model import TERMINAL, LeaseAnswer, RetryPolicy, TaskStatus, Verdict
from p2p_sidecar.taskqueue.records import Ended, Lease, NewTask, Progress, Report, TaskRecord
from p2p_sidecar.taskqueue.store import TaskStore
from p2p_sidecar.taskqueue.sync import Broadcast

log = logging.getLogger(__name__)

EndListener = Callable[[list[Ended]], None]


class Waiters:
    """``task_wait`` callers parked on one event per task, set when the store reports the task ended."""

    def __init__(self) -> None:
        self._events: dict[str, tuple[trio.Event, list[int]]] = {}

    async def wait(self, task_id: str, timeout: float) -> None:
        event, users = self._events.setdefault(task_id, (trio.Event(), [0]))
        users[0] += 1
        try:
            with trio.move_on_after(timeout):
                await event.wait()
        finally:
            users[0] -= 1
            if users[0] == 0 and self._events.get(task_id, (None,))[0] is event:
                del self._events[task_id]

    def ended(self, task_id: str) -> None:
        entry = self._events.pop(task_id, None)
        if entry is not None:
            entry[0].set()

    def release_all(self) -> None:
        """Shutdown: every parked caller answers now ("not finished") instead of holding up the drain."""
        for event, _ in self._events.values():
            event.set()


class CompletionRate:
    """Completed tasks per second over the last minutes, in per-second buckets."""

    def __init__(self, clock: Callable[[], float] = time.time, keep_s: int = 600) -> None:
        self._clock = clock
        self._buckets: collections.deque[list[int]] = collections.deque(maxlen=keep_s)

    def add(self, count: int) -> None:
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])

    def per_second(self, window: int = 60) -> float:
        cutoff = int(self._clock()) - window
        return round(sum(count for second, count in self._buckets if second > cutoff) / window, 3)

    def series(self, window: int = 300) -> list[tuple[int, int]]:
        """(second, completions) for the seconds of the window that had any."""
        cutoff = int(self._clock()) - window
        return [(second, count) for second, count in self._buckets if second > cutoff]


class LeaseOwner:
    def __init__(
        self,
        store: TaskStore,
        *,
        lease_s: float,
        boot: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.boot = boot
        self.clock = clock
        self.work = Broadcast()
        """Fired whenever claimable work may have appeared: a submit, a re-queue, a due retry, a resume."""
        self.paused_reason: str | None = store.get_meta("paused")
        self.draining = False
        self.waiters = Waiters()
        self.completions = CompletionRate(clock)
        self._end_listeners: list[EndListener] = []
        self._timers = Broadcast()
        """Fired when a lease was taken or a retry was scheduled: the timers look again."""
        store.on_ended = self._on_ended

    @property
    def handing_out(self) -> bool:
        return self.paused_reason is None and not self.draining

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand back what this node's workers held when its previous process died, then keep the timers."""
        now = self.clock()
        self.store.advance_backoffs(now)
        recovered = self.store.lose_leases_of(
            None, boot_not=self.boot, now=now, why="this node's sidecar restarted while the task ran"
        )
        if recovered:
            log.info("re-queued %d task(s) this node was running when its previous process died", recovered)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reap_leases)
            nursery.start_soon(self._wake_after_backoff)
            task_status.started()

    def stop_handing_out(self) -> None:
        """Shutdown, step one: no claim gets a task any more; ``task_wait`` callers answer now."""
        self.draining = True
        self.waiters.release_all()

    async def _reap_leases(self) -> None:
        """Expire leases not renewed in time; sleeps while nothing runs."""
        interval = max(0.05, min(1.0, self.lease_s / 4))
        while True:
            seen = self._timers.generation
            if self.store.count(TaskStatus.RUNNING) == 0:
                await self._timers.wait_since(seen)
                continue
            await trio.sleep(interval)
            try:
                expired = self.store.expire_leases(self.clock())
            except StorageError:
                continue  # logged by the store; the leases expire on a later round, once the disk works again
            if expired:
                log.warning("%d lease(s) expired: their tasks are queued again", expired)
                self.work.fire()

    async def _wake_after_backoff(self) -> None:
        """Count retries whose backoff ended as claimable, and say so; sleeps while no retry waits."""
        while True:
            seen = self._timers.generation
            now = self.clock()
            try:
                if self.store.advance_backoffs(now):
                    self.work.fire()
                ready_at = self.store.next_ready_at()
            except StorageError:
                ready_at = now + 1.0
            timeout = math.inf if ready_at is None else max(0.0, ready_at - now)
            await self._timers.wait_since(seen, timeout)

    # -- leases (this node's workers: peer None; a peer's: its peer id) -------------------------------------------
    def claim(
        self,
        worker: str,
        types: Sequence[str],
        limit: int,
        *,
        peer: str | None,
        boot: str,
        max_bytes: int | None = None,
    ) -> list[Lease]:
        if not self.handing_out:
            return []
        leases = self.store.claim(
            types=types,
            limit=limit,
            worker=worker,
            peer=peer,
            boot=boot,
            lease_s=self.lease_s,
            now=self.clock(),
            max_bytes=max_bytes,
        )
        if leases:
            self._timers.fire()
        return leases

    def heartbeat(self, leases: Iterable[tuple[str, int]], *, peer: str | None) -> dict[str, LeaseAnswer]:
        return self.store.heartbeat(leases, peer=peer, lease_s=self.lease_s, now=self.clock())

    def record_progress(self, updates: Sequence[tuple[str, int, Progress]], *, peer: str | None) -> int:
        return self.store.record_progress(updates, peer=peer) if updates else 0

    def finish(self, reports: Sequence[Report], *, peer: str | None) -> list[Verdict]:
        verdicts = self.store.finish(reports, peer=peer, now=self.clock())
        if any(not report.ok for report in reports):
            self._timers.fire()  # a retry may now be waiting out its backoff
            self.work.fire()
        return verdicts

    def release(self, leases: Iterable[tuple[str, int]], *, peer: str | None, why: str) -> int:
        released = self.store.release(leases, peer=peer, now=self.clock(), why=why)
        if released:
            self.work.fire()
        return released

    def lose_peer_leases(self, peer: str, *, boot_not: str, why: str) -> int:
        lost = self.store.lose_leases_of(peer, boot_not=boot_not, now=self.clock(), why=why)
        if lost:
            self.work.fire()
        return lost

    # -- tasks ------------------------------------------------------------------------------------------------
    def insert(self, task: NewTask) -> tuple[TaskRecord, bool]:
        record, created = self.store.insert(task, self.clock())
        if created:
            self.work.fire()
        return record, created

    def cancel(self, task_id: str, reason: str) -> TaskRecord:
        """Cancel a queued or running task; returns its record as it was (the caller tells a running worker)."""
        return self.store.cancel(task_id, reason, self.clock())

    def retry(self, task_id: str, policy: RetryPolicy | None) -> TaskRecord:
        record = self.store.retry(task_id, policy, self.clock())
        self.work.fire()
        return record

    def set_priority(self, task_id: str, priority: float) -> TaskRecord:
        record = self.store.set_priority(task_id, priority, self.clock())
        self.work.fire()
        return record

    def pause(self, reason: str | None) -> None:
        self.store.set_meta("paused", reason or "paused by queue_pause")
        self.paused_reason = reason or "paused by queue_pause"

    def resume(self) -> bool:
        was = self.paused_reason is not None
        self.store.set_meta("paused", None)
        self.paused_reason = None
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

    # -- waiting and notices ----------------------------------------------------------------------------------
    async def wait(self, task_id: str, timeout: float) -> TaskRecord:
        """The task once it is finished, or as it is when ``timeout`` passes (no polling)."""
        record = self.store.require(task_id)
        if record.status not in TERMINAL and timeout > 0 and not self.draining:
            await self.waiters.wait(task_id, timeout)
            record = self.store.require(task_id)
        return record

    def on_task_end(self, listener: EndListener) -> None:
        self._end_listeners.append(listener)

    def _on_ended(self, ended: list[Ended]) -> None:
        completed = 0
        for item in ended:
            self.waiters.ended(item.task_id)
            completed += item.status is TaskStatus.COMPLETED
        if completed:
            self.completions.add(completed)
        for listener in self._end_listeners:
            listener(ended)


class LocalSource:
    """This node's own queue as its workers see it (``worker.Source``): direct calls, no network.

    A database failure (disk full, I/O error) reads to a worker like an owner it
    cannot reach: it retries later instead of crashing, as it would for a remote
    owner that is down.  This is the one place that translation happens.
    """

    owner: str | None = None

    def __init__(self, lease_owner: LeaseOwner) -> None:
        self._owner = lease_owner
        self._reports: list[tuple[Report, _Outcome]] = []
        self._committing = False
        self._committed = Broadcast()

    async def claim(self, worker: str, types: Sequence[str], limit: int) -> list[Lease]:
        with _unavailable_on_storage_error("claim"):
            return self._owner.claim(worker, types, limit, peer=None, boot=self._owner.boot)

    async def heartbeat(
        self, worker: str, leases: Sequence[tuple[str, int]], progress: Sequence[tuple[str, int, Progress]]
    ) -> dict[str, LeaseAnswer]:
        with _unavailable_on_storage_error("heartbeat"):
            self._owner.record_progress(progress, peer=None)
            return self._owner.heartbeat(leases, peer=None)

    async def progress(self, worker: str, updates: Sequence[tuple[str, int, Progress]]) -> None:
        with _unavailable_on_storage_error("progress"):
            self._owner.record_progress(updates, peer=None)

    async def report(self, worker: str, report: Report) -> Verdict:
        """Record one outcome, committed together with the others reported in the same scheduler pass.

        Local slots running short tasks finish in bursts, and one SQLite
        transaction per report was the owner's largest cost (group commit:
        the first reporter yields once so the rest of the burst can join, then
        commits them all).  Nobody is answered before the commit that holds
        their report, and a failed commit fails every report in it.
        """
        outcome = _Outcome()
        self._reports.append((report, outcome))
        if self._committing:
            while outcome.verdict is None and outcome.error is None:
                await self._committed.wait_since(self._committed.generation)
        else:
            self._committing = True
            try:
                await trio.lowlevel.checkpoint()
            finally:  # commit even if cancelled here: the others waiting on this commit are not
                self._committing = False
                self._commit()
        if outcome.error is not None:
            raise SourceUnavailable(outcome.error)
        assert outcome.verdict is not None
        return outcome.verdict

    def _commit(self) -> None:
        batch, self._reports = self._reports, []
        try:
            with _unavailable_on_storage_error("report"):
                verdicts = self._owner.finish([report for report, _ in batch], peer=None)
        except SourceUnavailable as exc:
            for _, outcome in batch:
                outcome.error = str(exc)
        except BaseException as exc:  # a bug in the store: the waiting reporters must not wait forever
            for _, outcome in batch:
                outcome.error = f"report not recorded: {type(exc).__name__}"
            raise
        else:
            for (_, outcome), verdict in zip(batch, verdicts, strict=True):
                outcome.verdict = verdict
        finally:
            self._committed.fire()

    async def release(self, worker: str, leases: Sequence[tuple[str, int]], why: str) -> None:
        with _unavailable_on_storage_error("release"):
            self._owner.release(leases, peer=None, why=why)


class _Outcome:
    """What became of one report in a group commit: a verdict, or why there is none."""

    __slots__ = ("error", "verdict")

    def __init__(self) -> None:
        self.verdict: Verdict | None = None
        self.error: str | None = None


@contextlib.contextmanager
def _unavailable_on_storage_error(what: str) -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        raise SourceUnavailable(f"this node's queue, {what}: {exc.message}") from None
