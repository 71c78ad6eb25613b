"""The durable task table: SQLite in WAL mode, one connection, used from the Trio thread.

This is the only module that runs SQL on ``tasks`` (and ``task_log``); the
workflow engine keeps its own tables in the same database through
``transaction()`` and ``query()``, and every table is covered by one schema
version, migrated forward at open.

Why this shape:

* Every state change is one short transaction (``BEGIN IMMEDIATE`` ...
  ``COMMIT``).  With WAL and ``synchronous=NORMAL`` a commit is in the WAL
  file (the OS page cache) when it returns, so it survives ``kill -9`` of the
  process; power loss can drop the last commits unless ``SIDECAR_QUEUE_SYNC=full``
  (an fsync per commit).  Queries are small and indexed, so running them on
  the event loop's thread costs tens of microseconds, less than a thread hop.
* Claims are one ``UPDATE ... WHERE seq IN (SELECT ... LIMIT n) RETURNING``:
  atomic, batched, ordered by priority then submission.
* Completions are guarded by the lease: ``WHERE task_id = ? AND attempt = ?
  AND status = 'running'``.  A late or duplicate report changes nothing, so
  each task records exactly one result however often it runs.
* Queued tasks live only here, never in Python lists.  What the layers above
  ask for on every submit and claim is kept in memory instead, adjusted as
  transactions commit: counts per status, running leases per peer, and the
  claimable tasks per (type, placement) that the dispatcher weighs against
  free worker slots.  Those cost nothing per call, whatever the queue's depth.

Status decisions come from ``model`` (pure); this module only persists them.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import json
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p_sidecar.errors import StartupError
from p2p_sidecar.taskqueue import model
from p2p_sidecar.taskqueue.errors import Conflict, NotFound, StorageError
from p2p_sidecar.taskqueue.model import LeaseAnswer, RetryPolicy, TaskState, TaskStatus, Verdict
from p2p_sidecar.taskqueue.records import (
    Ended,
    EndedHook,
    Lease,
    NewTask,
    Placement,
    Progress,
    Report,
    TaskRecord,
    dumps,
)
from p2p_sidecar.taskqueue.schema import SyncMode, open_database

log = logging.getLogger(__name__)

DemandKey = tuple[str, str | None]
"""(task type, placement column): how claimable work is counted."""


def storage_error(path: Path | None, exc: sqlite3.Error) -> StorageError:
    """A clear refusal for a database failure while running; the transaction is already rolled back."""
    text = str(exc)
    where = str(path) if path is not None else "the queue database"
    if "locked" in text or "busy" in text:
        why = f"{where} is locked by another process ({text})"
    elif "full" in text:
        why = f"the disk holding {where} is full ({text})"
    else:
        why = f"{where} failed: {text}"
    log.error("task queue database error: %s", why)
    return StorageError(f"the task queue cannot use its database: {why}; nothing was changed, retry later")


@functools.lru_cache(maxsize=256)
def _policy(text: str) -> RetryPolicy:
    """Stored retry policies, decoded once each: most tasks share a handful (frozen, so sharing is safe)."""
    return RetryPolicy(**json.loads(text))


_LEASE_COLUMNS = "seq, task_id, task_type, status, placement, retry_policy, attempt, failures, worker, worker_peer, "
_LEASE_COLUMNS += "workflow_id, step_id"


@dataclass(frozen=True, slots=True)
class _Held:
    """What recording an attempt's outcome needs of a task: read by the hot paths instead of a whole record."""

    seq: int
    task_id: str
    task_type: str
    status: TaskStatus
    placement: Placement
    policy: RetryPolicy
    attempt: int
    failures: int
    worker: str | None
    worker_peer: str | None
    workflow_id: str | None
    step_id: str | None

    @property
    def state(self) -> TaskState:
        return TaskState(self.status, self.attempt, self.failures, self.policy)

    @classmethod
    def of(cls, row: sqlite3.Row) -> _Held:
        return cls(
            row["seq"],
            row["task_id"],
            row["task_type"],
            TaskStatus(row["status"]),
            Placement.from_column(row["placement"]),
            _policy(row["retry_policy"]),
            row["attempt"],
            row["failures"],
            row["worker"],
            row["worker_peer"],
            row["workflow_id"],
            row["step_id"],
        )


Leased = TaskRecord | _Held


def _record(row: sqlite3.Row) -> TaskRecord:
    """The one place a ``tasks`` row is decoded."""
    return TaskRecord(
        seq=row["seq"],
        task_id=row["task_id"],
        task_type=row["task_type"],
        status=TaskStatus(row["status"]),
        priority=float(row["priority"]),
        placement=Placement.from_column(row["placement"]),
        policy=_policy(row["retry_policy"]),
        timeout_s=float(row["timeout_s"]),
        attempt=row["attempt"],
        failures=row["failures"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        payload_json=row["payload"],
        idem_key=row["idem_key"],
        tags=tuple(json.loads(row["tags"])),
        metadata=json.loads(row["metadata"]),
        worker=row["worker"],
        worker_peer=row["worker_peer"],
        lease_boot=row["lease_boot"],
        lease_expires=row["lease_expires"],
        workflow_id=row["workflow_id"],
        step_id=row["step_id"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result_json=row["result"],
        error=json.loads(row["error"]) if row["error"] is not None else None,
        progress=_progress(row["progress"]),
        traceparent=row["trace"],
    )


def _progress(raw: str | None) -> Progress | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return Progress(value.get("message"), value.get("done"), value.get("total"), value.get("at", 0.0))


class TaskStore:
    """Open with ``TaskStore.open(...)`` (a context manager that closes it); the constructor does no I/O."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int, *, max_result_bytes: int) -> None:
        self.path = path
        self.db = db
        self.max_result_bytes = max_result_bytes
        self.on_ended: EndedHook | None = None
        self._lock_fd = lock_fd
        self._depth = 0
        self._pending_counts: Counter[str] = Counter()
        self._pending_ended: list[Ended] = []
        self._pending_ready: Counter[DemandKey] = Counter()
        self._pending_delayed: Counter[DemandKey] = Counter()
        self._pending_leases: Counter[str | None] = Counter()
        self._counts: Counter[str] = Counter()
        self._ready: Counter[DemandKey] = Counter()
        """Queued tasks claimable now (their backoff, if any, is over), by (type, placement)."""
        self._delayed: Counter[DemandKey] = Counter()
        """Queued tasks waiting out a retry backoff that ends after ``_watermark``."""
        self._watermark = 0.0
        self._leases: Counter[str | None] = Counter()
        """Running tasks by the peer holding the lease (None: this node's workers)."""

    # -- opening and closing ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, *, sync: SyncMode = "normal", max_result_bytes: int = 1 << 20) -> TaskStore:
        """Open (or create) the database, check it, migrate it; raise ``StartupError`` with one clear line."""
        db, lock_fd = open_database(path, sync=sync)
        store = cls(path, db, lock_fd, max_result_bytes=max_result_bytes)
        try:
            store._load_counts()
        except sqlite3.Error as exc:
            store.close()
            raise StartupError(f"cannot read the queue database {path}: {exc}") from None
        return store

    def __enter__(self) -> TaskStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _load_counts(self) -> None:
        for row in self.db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status"):
            self._counts[row[0]] = row[1]
        sql = (
            "SELECT task_type, placement, not_before > 0, COUNT(*) FROM tasks WHERE status = 'queued' GROUP BY 1, 2, 3"
        )
        for task_type, placement, delayed, count in self.db.execute(sql):
            (self._delayed if delayed else self._ready)[(task_type, placement)] += count
        for row in self.db.execute("SELECT worker_peer, COUNT(*) FROM tasks WHERE status = 'running' GROUP BY 1"):
            self._leases[row[0]] = row[1]

    # -- transactions -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit; nests (inner blocks join the outer transaction).

        In-memory counts and "task ended" notices are applied only after
        COMMIT, so a rolled-back transaction leaves no trace in memory either.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from None
        self._depth = 1
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            self._depth = 0
            if self.db.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            for pending in (self._pending_counts, self._pending_ready, self._pending_delayed, self._pending_leases):
                pending.clear()
            self._pending_ended.clear()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(self.path, exc) from None
            raise
        self._depth = 0
        self._counts.update(self._pending_counts)
        self._ready.update(self._pending_ready)
        self._delayed.update(self._pending_delayed)
        self._leases.update(self._pending_leases)
        for pending in (self._pending_counts, self._pending_ready, self._pending_delayed, self._pending_leases):
            pending.clear()
        ended, self._pending_ended = self._pending_ended, []
        if ended and self.on_ended is not None:
            self.on_ended(ended)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read for the workflow engine's own tables (writes go through ``transaction()``)."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from None

    # -- bookkeeping of what the layers above read on every call ----------------------------------------
    def _moved(self, old: TaskStatus | str | None, new: TaskStatus | str | None, n: int = 1) -> None:
        if old is not None:
            self._pending_counts[str(old)] -= n
        if new is not None:
            self._pending_counts[str(new)] += n

    def _queued(self, task_type: str, placement: str | None, not_before: float, n: int) -> None:
        """A queued task (n = 1) appeared or (n = -1) left; counted as claimable or as waiting out a backoff."""
        key = (task_type, placement)
        (self._pending_delayed if not_before > self._watermark else self._pending_ready)[key] += n

    def advance_backoffs(self, now: float) -> bool:
        """Count tasks whose backoff ended by ``now`` as claimable; True if any did."""
        if now <= self._watermark:
            return False
        moved = False
        if any(count > 0 for count in self._delayed.values()):
            sql = (
                "SELECT task_type, placement, COUNT(*) FROM tasks WHERE status = 'queued' AND not_before > ? "
                "AND not_before <= ? GROUP BY 1, 2"
            )
            for task_type, placement, count in self.db.execute(sql, (self._watermark, now)):
                self._delayed[(task_type, placement)] -= count
                self._ready[(task_type, placement)] += count
                moved = True
        self._watermark = now
        return moved

    def counts(self) -> dict[str, int]:
        return {status.value: self._counts.get(status.value, 0) for status in TaskStatus}

    def count(self, status: TaskStatus) -> int:
        return self._counts.get(status.value, 0)

    def _has_claimable(self, types: Sequence[str], peer: str | None) -> bool:
        """Whether the counts hold a claimable task of ``types`` that a worker of ``peer`` may take.

        The counts are kept exact at every commit (``counts_match_the_table`` in the
        tests checks them after each kind of change), so False means the claim's
        query would find nothing.
        """
        if self._depth:
            return True  # inside a caller's transaction its own changes are not counted yet: ask the table
        wanted = set(types)
        return any(task_type in wanted and placement.admits(peer) for task_type, placement in self.claimable())

    def claimable(self) -> dict[tuple[str, Placement], int]:
        """Queued tasks claimable now, by (type, placement); backed-off retries are not counted until due."""
        return {
            (task_type, Placement.from_column(placement)): count
            for (task_type, placement), count in self._ready.items()
            if count > 0
        }

    def leases_held_by(self, peer: str | None) -> int:
        """Running tasks leased to ``peer`` (None: this node's own workers)."""
        return self._leases.get(peer, 0)

    # -- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction():
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        row = self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def require(self, task_id: str) -> TaskRecord:
        record = self.get(task_id)
        if record is None:
            raise NotFound(f"no task with id {task_id!r} on this node")
        return record

    def by_idem_key(self, key: str) -> TaskRecord | None:
        row = self.db.execute("SELECT * FROM tasks WHERE idem_key = ?", (key,)).fetchone()
        return None if row is None else _record(row)

    def log_lines(self, seq: int) -> list[tuple[float, str]]:
        rows = self.db.execute("SELECT at, line FROM task_log WHERE task_seq = ? ORDER BY rowid", (seq,))
        return [(row[0], row[1]) for row in rows]

    def list(
        self,
        *,
        statuses: Iterable[TaskStatus] = (),
        worker: str | None = None,
        tag: str | None = None,
        priority_min: float | None = None,
        workflow_id: str | None = None,
        local_peer: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Newest first.  ``worker`` matches a worker id or the peer id of the node that ran the task."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        wanted = [str(status) for status in statuses]
        if wanted:
            clauses.append(f"status IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if worker is not None:
            if worker == local_peer:
                clauses.append("(worker = ? OR (worker IS NOT NULL AND worker_peer IS NULL))")
                params.append(worker)
            else:
                clauses.append("(worker = ? OR worker_peer = ?)")
                params.extend([worker, worker])
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(tasks.tags) WHERE json_each.value = ?)")
            params.append(tag)
        if priority_min is not None:
            clauses.append("priority >= ?")
            params.append(priority_min)
        if workflow_id is not None:
            clauses.append("workflow_id = ?")
            params.append(workflow_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM tasks {where} ORDER BY seq DESC LIMIT ? OFFSET ?"
        return [_record(row) for row in self.db.execute(sql, [*params, limit, offset])]

    def workflow_tasks(self, workflow_id: str) -> dict[str, TaskRecord]:
        """The tasks of a workflow's steps, by step id."""
        rows = self.db.execute("SELECT * FROM tasks WHERE workflow_id = ?", (workflow_id,))
        return {record.step_id: record for record in map(_record, rows) if record.step_id is not None}

    def workflow_task_states(self, workflow_id: str) -> dict[str, tuple[TaskStatus, int, dict[str, Any] | None]]:
        """The status, failures and error of a workflow's step tasks, by step id: what advancing it needs,
        without decoding payloads and results."""
        rows = self.db.execute(
            "SELECT step_id, status, failures, error FROM tasks WHERE workflow_id = ? AND step_id IS NOT NULL",
            (workflow_id,),
        )
        return {
            row[0]: (TaskStatus(row[1]), row[2], json.loads(row[3]) if row[3] is not None else None) for row in rows
        }

    def step_results(self, workflow_id: str, step_ids: Iterable[str]) -> dict[str, Any]:
        """The recorded results of some completed steps of a workflow."""
        wanted = list(step_ids)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            "SELECT step_id, result FROM tasks WHERE workflow_id = ? AND status = 'completed' "
            f"AND step_id IN ({marks})",
            [workflow_id, *wanted],
        )
        return {row[0]: json.loads(row[1]) for row in rows if row[1] is not None}

    def workflows_run_on(self, peer: str | None) -> set[str]:
        """Workflows with a step whose lease was taken by ``peer``'s workers (None: this node's)."""
        clause = "worker_peer IS NULL" if peer is None else "worker_peer = ?"
        sql = (
            f"SELECT DISTINCT workflow_id FROM tasks WHERE workflow_id IS NOT NULL AND worker IS NOT NULL AND {clause}"
        )
        return {row[0] for row in self.db.execute(sql, () if peer is None else (peer,))}

    def completed_by_peer(self) -> dict[str | None, int]:
        """Completed tasks of this node's queue by the peer whose worker ran them (None: this node's own).

        Read-only, for status views (the dashboard); a scan of the tasks table, so callers cache it.
        """
        sql = "SELECT worker_peer, COUNT(*) FROM tasks WHERE status = 'completed' GROUP BY worker_peer"
        return {row[0]: row[1] for row in self.db.execute(sql)}

    def next_ready_at(self) -> float | None:
        """The earliest end of a retry backoff still ahead of the counted ones (None if no task waits)."""
        if not any(count > 0 for count in self._delayed.values()):
            return None
        sql = "SELECT MIN(not_before) FROM tasks WHERE status = 'queued' AND not_before > ?"
        value = self.db.execute(sql, (self._watermark,)).fetchone()[0]
        return None if value is None else float(value)

    def history(self) -> dict[str, Any]:
        """queue_stats(include_historical): aggregates over finished tasks (a full scan, so only on request)."""
        sql = (
            "SELECT status, COUNT(*), AVG(finished_at - created_at), AVG(finished_at - started_at), "
            "SUM(attempt), MIN(created_at), MAX(finished_at) FROM tasks "
            "WHERE status IN ('completed', 'failed', 'cancelled') GROUP BY status"
        )
        out: dict[str, Any] = {}
        for row in self.db.execute(sql):
            out[row[0]] = {
                "count": row[1],
                "avg_total_s": None if row[2] is None else round(row[2], 6),
                "avg_run_s": None if row[3] is None else round(row[3], 6),
                "attempts": row[4],
                "first_submitted_at": row[5],
                "last_finished_at": row[6],
            }
        return out

    # -- writing: submitting ----------------------------------------------------------------------------------
    def _log(self, seq: int, now: float, line: str) -> None:
        self.db.execute("INSERT INTO task_log (task_seq, at, line) VALUES (?, ?, ?)", (seq, now, line))

    def _ended(self, record: Leased, status: TaskStatus) -> None:
        self._pending_ended.append(Ended(record.task_id, status, record.workflow_id, record.step_id))

    def insert(self, task: NewTask, now: float) -> tuple[TaskRecord, bool]:
        """Add a task; with an idempotency key already present, return that task instead (created False)."""
        with self.transaction():
            if task.idem_key is not None:
                existing = self.by_idem_key(task.idem_key)
                if existing is not None:
                    return existing, False
            if self.get(task.task_id) is not None:
                raise Conflict(f"a task with id {task.task_id!r} already exists (with another idempotency key)")
            placement = task.placement.to_column()
            payload = dumps(task.payload)
            cursor = self.db.execute(
                "INSERT INTO tasks (task_id, idem_key, task_type, payload, priority, status, placement, tags, "
                "metadata, retry_policy, timeout_s, workflow_id, step_id, created_at, trace) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.task_id,
                    task.idem_key,
                    task.task_type,
                    payload,
                    task.priority,
                    placement,
                    dumps(list(task.tags)),
                    dumps(task.metadata or {}),
                    dumps(task.policy.to_dict()),
                    task.timeout_s,
                    task.workflow_id,
                    task.step_id,
                    now,
                    task.traceparent,
                ),
            )
            self._moved(None, TaskStatus.QUEUED)
            self._queued(task.task_type, placement, 0.0, 1)
        # The record as stored, built from what was written (no read back): the insert is the hot path of submit.
        record = TaskRecord(
            seq=cursor.lastrowid or 0,
            task_id=task.task_id,
            task_type=task.task_type,
            status=TaskStatus.QUEUED,
            priority=task.priority,
            placement=task.placement,
            policy=task.policy,
            timeout_s=task.timeout_s,
            attempt=0,
            failures=0,
            not_before=0.0,
            created_at=now,
            payload_json=payload,
            idem_key=task.idem_key,
            tags=tuple(task.tags),
            metadata=dict(task.metadata or {}),
            workflow_id=task.workflow_id,
            step_id=task.step_id,
            traceparent=task.traceparent,
        )
        return record, True

    # -- writing: leases ----------------------------------------------------------------------------------------
    def claim(
        self,
        *,
        types: Sequence[str],
        limit: int,
        worker: str,
        peer: str | None,
        boot: str,
        lease_s: float,
        now: float,
        max_bytes: int | None = None,
    ) -> builtins.list[Lease]:
        """Lease up to ``limit`` claimable tasks of ``types``, highest priority first.

        ``peer`` None is one of this node's own workers: it may take tasks
        placed ``local`` but not those placed ``remote``; a remote peer may
        take ``remote`` tasks and those placed on it by name (``Placement.admits``).
        ``max_bytes`` bounds the payloads of one claim (a claim that travels as
        one network message); the first task is always taken.
        """
        if limit <= 0 or not types:
            return []
        self.advance_backoffs(now)
        if not self._has_claimable(types, peer):
            return []  # idle workers ask on every wake-up: answer from the counts, without a write transaction
        marks = ",".join("?" * len(types))
        if peer is None:
            placement = "(placement IS NULL OR placement = 'local')"
            placement_params: list[Any] = []
        else:
            placement = "(placement IS NULL OR placement = 'remote' OR placement = ?)"
            placement_params = [Placement.parse({"peer": peer}, local_peer=None).to_column()]
        candidates = (
            f"SELECT seq FROM tasks WHERE status = 'queued' AND not_before <= ? AND task_type IN ({marks}) "
            f"AND {placement} ORDER BY priority DESC, seq LIMIT ?"
        )
        candidate_params = [now, *types, *placement_params, limit]
        if max_bytes is not None:
            candidates = (
                "SELECT seq FROM (SELECT seq, SUM(length(CAST(payload AS BLOB))) OVER win AS total, "
                "ROW_NUMBER() OVER win AS n "
                f"FROM tasks WHERE seq IN ({candidates}) WINDOW win AS (ORDER BY priority DESC, seq)) "
                "WHERE total <= ? OR n = 1"
            )
            candidate_params.append(max_bytes)
        sql = (
            "UPDATE tasks SET status = 'running', attempt = attempt + 1, worker = ?, worker_peer = ?, "
            f"lease_boot = ?, lease_expires = ?, started_at = ?, progress = NULL WHERE seq IN ({candidates}) "
            "RETURNING task_id, attempt, task_type, payload, timeout_s, priority, seq, placement, not_before, trace, "
            "created_at"
        )
        params = [worker, peer, boot, now + lease_s, now, *candidate_params]
        with self.transaction():
            self.advance_backoffs(now)
            rows = self.db.execute(sql, params).fetchall()
            self._moved(TaskStatus.QUEUED, TaskStatus.RUNNING, len(rows))
            self._pending_leases[peer] += len(rows)
            for row in rows:
                self._queued(row["task_type"], row["placement"], row["not_before"], -1)
        rows.sort(key=lambda row: (-row["priority"], row["seq"]))
        return [
            Lease(
                task_id=row["task_id"],
                attempt=row["attempt"],
                task_type=row["task_type"],
                payload=json.loads(row["payload"]),
                timeout_s=row["timeout_s"],
                priority=row["priority"],
                traceparent=row["trace"],
                submitted_at=row["created_at"],
            )
            for row in rows
        ]

    def held(self, keys: Iterable[tuple[str, int]], *, peer: str | None) -> builtins.list[Lease]:
        """The leases among ``keys`` that ``peer`` still holds (a claim answered again)."""
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        found = []
        for task_id, attempt in keys:
            row = self.db.execute(
                "SELECT task_id, attempt, task_type, payload, timeout_s, priority, trace, created_at FROM tasks "
                "WHERE task_id = ? "
                f"AND attempt = ? AND status = 'running' AND {peer_clause}",
                (task_id, attempt, peer),
            ).fetchone()
            if row is not None:
                lease = Lease(row[0], row[1], row[2], json.loads(row[3]), timeout_s=row[4], priority=row[5])
                found.append(dataclasses.replace(lease, traceparent=row[6], submitted_at=row[7]))
        return found

    def heartbeat(
        self, leases: Iterable[tuple[str, int]], *, peer: str | None, lease_s: float, now: float
    ) -> dict[str, LeaseAnswer]:
        """Extend each lease still held (``ok``); or say why not: ``cancelled`` or ``lost``."""
        answers: dict[str, LeaseAnswer] = {}
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        with self.transaction():
            for task_id, attempt in leases:
                cursor = self.db.execute(
                    f"UPDATE tasks SET lease_expires = ? WHERE task_id = ? AND attempt = ? AND status = 'running' "
                    f"AND {peer_clause}",
                    (now + lease_s, task_id, attempt, peer),
                )
                if cursor.rowcount:
                    answers[task_id] = LeaseAnswer.OK
                    continue
                row = self.db.execute("SELECT status, attempt FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
                cancelled = row is not None and row[0] == TaskStatus.CANCELLED and row[1] == attempt
                answers[task_id] = LeaseAnswer.CANCELLED if cancelled else LeaseAnswer.LOST
        return answers

    def record_progress(self, updates: Iterable[tuple[str, int, Progress]], *, peer: str | None) -> int:
        """Store what executors said about their attempts; only for leases ``peer`` holds.  Returns how many."""
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        stored = 0
        with self.transaction():
            for task_id, attempt, progress in updates:
                cursor = self.db.execute(
                    f"UPDATE tasks SET progress = ? WHERE task_id = ? AND attempt = ? AND status = 'running' "
                    f"AND {peer_clause}",
                    (dumps(progress.to_dict()), task_id, attempt, peer),
                )
                stored += cursor.rowcount
        return stored

    def finish(self, reports: Iterable[Report], *, peer: str | None, now: float) -> builtins.list[Verdict]:
        """Record results and failures of leased attempts; one verdict per report (see ``model.Verdict``)."""
        verdicts = []
        with self.transaction():
            self.advance_backoffs(now)
            for report in reports:
                row = self.db.execute(f"SELECT {_LEASE_COLUMNS} FROM tasks WHERE task_id = ?", (report.task_id,))
                found = row.fetchone()
                record = None if found is None else _Held.of(found)
                if record is None:
                    verdicts.append(Verdict.REJECTED)
                    continue
                verdict = model.completion_verdict(record.status, record.attempt, report.attempt)
                if verdict is Verdict.RECORDED and record.worker_peer != peer:
                    verdict = Verdict.REJECTED  # someone else's lease: never theirs to finish
                if verdict is not Verdict.RECORDED:
                    verdicts.append(verdict)
                    continue
                if report.ok:
                    encoded = dumps(report.result)
                    size = len(encoded.encode())
                    if size <= self.max_result_bytes:
                        self._record_result(record, encoded, now)
                        verdicts.append(Verdict.RECORDED)
                        continue
                    report = Report(
                        report.task_id,
                        report.attempt,
                        ok=False,
                        message=f"result of {size} bytes exceeds the limit of {self.max_result_bytes} bytes "
                        "(SIDECAR_TASK_MAX_RESULT_BYTES)",
                        code="too_large",
                        retryable=False,
                    )
                self._apply_failure(
                    record, now, message=report.message, code=report.code, retryable=report.retryable, lost=False
                )
                verdicts.append(Verdict.RECORDED)
        return verdicts

    def _left_running(self, record: Leased, new: TaskStatus) -> None:
        self._moved(TaskStatus.RUNNING, new)
        self._pending_leases[record.worker_peer] -= 1

    def _record_result(self, record: Leased, encoded: str, now: float) -> None:
        model.complete(record.state)
        self.db.execute(
            "UPDATE tasks SET status = 'completed', result = ?, finished_at = ?, lease_expires = NULL WHERE seq = ?",
            (encoded, now, record.seq),
        )
        self._left_running(record, TaskStatus.COMPLETED)
        self._ended(record, TaskStatus.COMPLETED)

    def _apply_failure(
        self, record: Leased, now: float, *, message: str, code: str, retryable: bool, lost: bool
    ) -> model.Outcome:
        outcome = model.fail(record.state, message=message, code=code, retryable=retryable, lost=lost)
        who = record.worker_peer or "this node"
        if outcome.status is TaskStatus.QUEUED:
            not_before = now + outcome.delay_s
            self.db.execute(
                "UPDATE tasks SET status = 'queued', failures = ?, not_before = ?, worker = NULL, worker_peer = NULL, "
                "lease_boot = NULL, lease_expires = NULL, error = ? WHERE seq = ?",
                (
                    outcome.failures,
                    not_before,
                    dumps({"code": code, "message": message, "attempt": record.attempt}),
                    record.seq,
                ),
            )
            self._left_running(record, TaskStatus.QUEUED)
            self._queued(record.task_type, record.placement.to_column(), not_before, 1)
        else:
            self.db.execute(
                "UPDATE tasks SET status = 'failed', failures = ?, finished_at = ?, lease_expires = NULL, error = ? "
                "WHERE seq = ?",
                (outcome.failures, now, dumps(outcome.error), record.seq),
            )
            self._left_running(record, TaskStatus.FAILED)
            self._ended(record, TaskStatus.FAILED)
        self._log(record.seq, now, f"{outcome.note} [worker {record.worker} on {who}]")
        return outcome

    def release(self, leases: Iterable[tuple[str, int]], *, peer: str | None, now: float, why: str) -> int:
        """Hand leased attempts back unfinished (no failure counted); returns how many were still held."""
        released = 0
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        with self.transaction():
            for task_id, attempt in leases:
                row = self.db.execute(
                    f"SELECT {_LEASE_COLUMNS} FROM tasks WHERE task_id = ? AND attempt = ? AND status = 'running' "
                    f"AND {peer_clause}",
                    (task_id, attempt, peer),
                ).fetchone()
                if row is None:
                    continue
                record = _Held.of(row)
                outcome = model.release(record.state)
                self.db.execute(
                    "UPDATE tasks SET status = 'queued', not_before = 0, worker = NULL, worker_peer = NULL, "
                    "lease_boot = NULL, lease_expires = NULL WHERE seq = ?",
                    (record.seq,),
                )
                self._left_running(record, TaskStatus.QUEUED)
                self._queued(record.task_type, record.placement.to_column(), 0.0, 1)
                self._log(record.seq, now, f"{outcome.note} ({why})")
                released += 1
        return released

    def expire_leases(self, now: float) -> int:
        """Leases not renewed in time: their workers are presumed dead; each attempt counts as failed."""
        sql = f"SELECT {_LEASE_COLUMNS} FROM tasks WHERE status = 'running' AND lease_expires < ?"
        rows = self.db.execute(sql, (now,)).fetchall()
        return self._lose([_Held.of(row) for row in rows], now, "lease expired (worker stopped heartbeating)")

    def lose_leases_of(self, peer: str | None, *, boot_not: str, now: float, why: str) -> int:
        """Leases held by an earlier run of a worker process (``peer`` None: this node's own)."""
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        rows = self.db.execute(
            f"SELECT {_LEASE_COLUMNS} FROM tasks WHERE status = 'running' AND {peer_clause} AND lease_boot IS NOT ?",
            (peer, boot_not),
        ).fetchall()
        return self._lose([_Held.of(row) for row in rows], now, why)

    def _lose(self, records: builtins.list[_Held], now: float, why: str) -> int:
        if not records:
            return 0
        with self.transaction():
            self.advance_backoffs(now)
            for record in records:
                self._apply_failure(record, now, message=why, code="worker_lost", retryable=True, lost=True)
        return len(records)

    # -- writing: operator actions -------------------------------------------------------------------------------
    def cancel(self, task_id: str, reason: str, now: float) -> TaskRecord:
        """Cancel a queued or running task; returns its record as it was before."""
        with self.transaction():
            self.advance_backoffs(now)
            record = self.require(task_id)
            outcome = model.cancel(record.state, reason)
            self.db.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?, lease_expires = NULL, error = ? WHERE seq = ?",
                (now, dumps(outcome.error), record.seq),
            )
            if record.status is TaskStatus.RUNNING:
                self._left_running(record, TaskStatus.CANCELLED)
            else:
                self._moved(record.status, TaskStatus.CANCELLED)
                self._queued(record.task_type, record.placement.to_column(), record.not_before, -1)
            self._ended(record, TaskStatus.CANCELLED)
            self._log(record.seq, now, outcome.note)
        return record

    def retry(self, task_id: str, policy: RetryPolicy | None, now: float) -> TaskRecord:
        """Queue a failed or cancelled task again, its failure count reset (and its policy replaced, if given)."""
        with self.transaction():
            record = self.require(task_id)
            outcome = model.retry(record.state)
            policy_json = dumps((policy or record.policy).to_dict())
            row = self.db.execute(
                "UPDATE tasks SET status = 'queued', failures = 0, not_before = 0, retry_policy = ?, worker = NULL, "
                "worker_peer = NULL, lease_boot = NULL, finished_at = NULL, result = NULL, error = NULL, "
                "progress = NULL WHERE seq = ? RETURNING *",
                (policy_json, record.seq),
            ).fetchone()
            self._moved(record.status, TaskStatus.QUEUED)
            self._queued(record.task_type, record.placement.to_column(), 0.0, 1)
            self._log(record.seq, now, outcome.note)
        return _record(row)

    def set_priority(self, task_id: str, priority: float, now: float) -> TaskRecord:
        with self.transaction():
            record = self.require(task_id)
            outcome = model.reprioritize(record.state)
            row = self.db.execute(
                "UPDATE tasks SET priority = ? WHERE seq = ? RETURNING *", (priority, record.seq)
            ).fetchone()
            self._log(record.seq, now, f"{outcome.note}: {record.priority:g} -> {priority:g}")
        return _record(row)

    def cancel_queued(self, reason: str, now: float) -> int:
        """queue_clear on queued tasks: each is cancelled (so waiters and workflows learn of it)."""
        with self.transaction():
            self.advance_backoffs(now)
            rows = self.db.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?, error = ? WHERE status = 'queued' "
                "RETURNING task_id, workflow_id, step_id, task_type, placement, not_before",
                (now, dumps({"code": "cancelled", "message": reason})),
            ).fetchall()
            self._moved(TaskStatus.QUEUED, TaskStatus.CANCELLED, len(rows))
            for row in rows:
                self._queued(row["task_type"], row["placement"], row["not_before"], -1)
                self._pending_ended.append(
                    Ended(row["task_id"], TaskStatus.CANCELLED, row["workflow_id"], row["step_id"])
                )
        return len(rows)

    def delete_finished(self, statuses: Sequence[TaskStatus]) -> int:
        """queue_clear on finished tasks: their rows (and logs) are deleted."""
        if not statuses:
            return 0
        marks = ",".join("?" * len(statuses))
        wanted = [str(status) for status in statuses]
        with self.transaction():
            self.db.execute(
                f"DELETE FROM task_log WHERE task_seq IN (SELECT seq FROM tasks WHERE status IN ({marks}))", wanted
            )
            deleted = self.db.execute(
                f"DELETE FROM tasks WHERE status IN ({marks}) RETURNING status", wanted
            ).fetchall()
            for row in deleted:
                self._moved(row[0], None)
        return len(deleted)

    # -- registered workers (durable, re-created at start) ----------------------------------------
    def save_worker(self, worker_id: str, spec: dict[str, Any]) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO workers (worker_id, spec) VALUES (?, ?)", (worker_id, dumps(spec)))

    def delete_worker(self, worker_id: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def saved_workers(self) -> builtins.list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self.db.execute("SELECT spec FROM workers ORDER BY rowid")]
