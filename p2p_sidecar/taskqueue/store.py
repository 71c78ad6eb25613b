"""The durable task table: SQLite in WAL mode, one connection, used from the Trio thread.

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
* Queued tasks live only here, never in Python lists; per-status counts are
  kept in memory (adjusted as transactions commit) so the queue bound and
  ``queue_stats`` cost nothing per call.

Status decisions come from ``model`` (pure); this module only persists them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from p2p_sidecar.taskqueue import model
from p2p_sidecar.taskqueue.errors import Conflict, NotFound, StorageError
from p2p_sidecar.taskqueue.model import RetryPolicy, TaskState, TaskStatus
from p2p_sidecar.taskqueue.records import Ended, EndedHook, Lease, NewTask, Report, dumps

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
SyncMode = Literal["normal", "full"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL UNIQUE,
    idem_key TEXT UNIQUE,
    task_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority REAL NOT NULL,
    status TEXT NOT NULL,
    placement TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    retry_policy TEXT NOT NULL,
    timeout_s REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    worker TEXT,
    worker_peer TEXT,
    lease_boot TEXT,
    lease_expires REAL,
    workflow_id TEXT,
    step_id TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks(priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks(lease_expires) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS tasks_workflow ON tasks(workflow_id) WHERE workflow_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_log (task_seq INTEGER NOT NULL, at REAL NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS task_log_by_task ON task_log(task_seq);
CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, spec TEXT NOT NULL);
"""

LOCAL = "local"
"""``placement`` of a task only this node's own workers may run."""
REMOTE = "remote"
"""``placement`` of a task only other peers may run."""


class StoreStartupError(RuntimeError):
    """The queue database cannot be opened; the message says which file and why."""


def _open_failure(path: Path, exc: sqlite3.Error) -> str:
    """The start-up error for a database that cannot be opened; the file is never replaced or repaired here."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"the queue database {path} is locked by another process ({text}); stop it and start again"
    corrupt = isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
    if corrupt or "not a database" in text or "malformed" in text:
        return (
            f"the queue database {path} is not a usable SQLite database ({text}); it was left untouched: "
            "restore it from a backup or move it away to start with an empty queue"
        )
    return f"cannot open the queue database {path}: {text}"


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


class TaskStore:
    def __init__(
        self,
        path: Path,
        *,
        sync: SyncMode = "normal",
        max_result_bytes: int = 1 << 20,
        on_ended: EndedHook | None = None,
    ) -> None:
        self.path = path
        self.max_result_bytes = max_result_bytes
        self.on_ended = on_ended
        self._lock_fd = self._lock(path.with_suffix(".lock"))
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            os.close(self._lock_fd)
            raise StoreStartupError(_open_failure(path, exc)) from None
        self.db = db
        self._depth = 0
        self._pending_counts: Counter[str] = Counter()
        self._pending_ended: list[Ended] = []
        self._counts: Counter[str] = Counter()
        try:
            # A damaged file is found now, with a clear message, not by whichever query reaches the bad page
            # first (about 50 ms for 100,000 tasks here).  Nothing is repaired or replaced: the operator decides.
            check = [row[0] for row in self.db.execute("PRAGMA quick_check(5)")]
            if check != ["ok"]:
                self.close()
                raise StoreStartupError(
                    f"the queue database {path} is damaged (quick_check: {'; '.join(check)[:300]}); it was left "
                    "untouched: restore it from a backup, or move it away to start with an empty queue"
                )
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
            for row in self.db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status"):
                self._counts[row[0]] = row[1]
        except sqlite3.Error as exc:
            self.close()
            raise StoreStartupError(_open_failure(path, exc)) from None
        if version is not None and version != SCHEMA_VERSION:
            self.close()
            raise StoreStartupError(f"{path} has schema version {version}; this sidecar reads {SCHEMA_VERSION}")

    @staticmethod
    def _lock(path: Path) -> int:
        """One process per database: a second sidecar on the same data dir would corrupt the leases."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreStartupError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreStartupError(f"another sidecar is using this data directory ({path} is locked)") from None
        return fd

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- transactions -----------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit; nests (inner blocks join the outer transaction).

        Count changes and "task ended" notices are applied only after COMMIT,
        so a rolled-back transaction leaves no trace in memory either.
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
            self._pending_counts.clear()
            self._pending_ended.clear()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(self.path, exc) from None
            raise
        self._depth = 0
        self._counts.update(self._pending_counts)
        self._pending_counts.clear()
        ended, self._pending_ended = self._pending_ended, []
        if ended and self.on_ended is not None:
            self.on_ended(ended)

    def _moved(self, old: str | None, new: str | None, n: int = 1) -> None:
        if old is not None:
            self._pending_counts[old] -= n
        if new is not None:
            self._pending_counts[new] += n

    def _ended(self, row: sqlite3.Row, status: TaskStatus) -> None:
        self._pending_ended.append(Ended(row["task_id"], status, row["workflow_id"]))

    def _log(self, seq: int, now: float, line: str) -> None:
        self.db.execute("INSERT INTO task_log (task_seq, at, line) VALUES (?, ?, ?)", (seq, now, line))

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- reading ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {status.value: self._counts.get(status.value, 0) for status in TaskStatus}

    def count(self, status: TaskStatus) -> int:
        return self._counts.get(status.value, 0)

    def get(self, task_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()

    def require(self, task_id: str) -> sqlite3.Row:
        row = self.get(task_id)
        if row is None:
            raise NotFound(f"no task with id {task_id!r} on this node")
        return row

    def by_idem_key(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM tasks WHERE idem_key = ?", (key,)).fetchone()

    def log_lines(self, seq: int) -> list[tuple[float, str]]:
        rows = self.db.execute("SELECT at, line FROM task_log WHERE task_seq = ? ORDER BY rowid", (seq,))
        return [(row[0], row[1]) for row in rows]

    def list(
        self,
        *,
        statuses: Iterable[str] = (),
        worker: str | None = None,
        tag: str | None = None,
        priority_min: float | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[sqlite3.Row]:
        clauses, params = [], []
        statuses = list(statuses)
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        if worker is not None:
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
        return self.db.execute(sql, [*params, limit, offset]).fetchall()

    def leases_held_by(self, peer: str) -> int:
        """Running tasks leased to ``peer`` (another node): what ``SIDECAR_QUEUE_MAX_LEASES_PER_PEER`` bounds."""
        sql = "SELECT COUNT(*) FROM tasks WHERE status = 'running' AND worker_peer = ?"
        return int(self.db.execute(sql, (peer,)).fetchone()[0])

    def ready_demand(self, now: float) -> list[tuple[str, str | None, int]]:
        """Queued, claimable-now tasks grouped by (task_type, placement): what peers could help with."""
        sql = (
            "SELECT task_type, placement, COUNT(*) FROM tasks WHERE status = 'queued' AND not_before <= ? "
            "GROUP BY task_type, placement"
        )
        return [(row[0], row[1], row[2]) for row in self.db.execute(sql, (now,))]

    def next_ready_at(self, now: float) -> float | None:
        """The earliest time a backed-off task becomes claimable (None if none is waiting)."""
        sql = "SELECT MIN(not_before) FROM tasks WHERE status = 'queued' AND not_before > ?"
        value = self.db.execute(sql, (now,)).fetchone()[0]
        return None if value is None else float(value)

    # -- submitting ----------------------------------------------------------------------------
    def insert(self, task: NewTask, now: float) -> tuple[sqlite3.Row, bool]:
        """Add a task; with an idempotency key already present, return that task instead (created False)."""
        with self.transaction():
            if task.idem_key is not None:
                existing = self.by_idem_key(task.idem_key)
                if existing is not None:
                    return existing, False
            if self.get(task.task_id) is not None:
                raise Conflict(f"a task with id {task.task_id!r} already exists (with another idempotency key)")
            row = self.db.execute(
                "INSERT INTO tasks (task_id, idem_key, task_type, payload, priority, status, placement, tags, "
                "metadata, retry_policy, timeout_s, workflow_id, step_id, created_at, not_before) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, 0) RETURNING *",
                (
                    task.task_id,
                    task.idem_key,
                    task.task_type,
                    dumps(task.payload),
                    task.priority,
                    task.placement,
                    dumps(list(task.tags)),
                    dumps(task.metadata or {}),
                    dumps(task.policy.to_dict()),
                    task.timeout_s,
                    task.workflow_id,
                    task.step_id,
                    now,
                ),
            ).fetchone()
            self._moved(None, TaskStatus.QUEUED)
        return row, True

    # -- leases ------------------------------------------------------------------------------------
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
    ) -> list[Lease]:
        """Lease up to ``limit`` claimable tasks of ``types``, highest priority first.

        ``peer`` None is one of this node's own workers: it may take tasks
        placed ``local`` but not those placed ``remote``; a remote peer may
        take ``remote`` tasks and those placed on it by name.  ``max_bytes``
        bounds the payloads of one claim (a claim that travels as one network
        message); the first task is always taken.
        """
        if limit <= 0 or not types:
            return []
        marks = ",".join("?" * len(types))
        if peer is None:
            placement = "(placement IS NULL OR placement = 'local')"
            placement_params: list[Any] = []
        else:
            placement = "(placement IS NULL OR placement = 'remote' OR placement = ?)"
            placement_params = [f"peer:{peer}"]
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
            f"lease_boot = ?, lease_expires = ?, started_at = ? WHERE seq IN ({candidates}) "
            "RETURNING task_id, attempt, task_type, payload, timeout_s, priority, seq"
        )
        params = [worker, peer, boot, now + lease_s, now, *candidate_params]
        with self.transaction():
            rows = self.db.execute(sql, params).fetchall()
            self._moved(TaskStatus.QUEUED, TaskStatus.RUNNING, len(rows))
        rows.sort(key=lambda row: (-row["priority"], row["seq"]))
        return [
            Lease(
                task_id=row["task_id"],
                attempt=row["attempt"],
                task_type=row["task_type"],
                payload=json.loads(row["payload"]),
                timeout_s=row["timeout_s"],
                priority=row["priority"],
            )
            for row in rows
        ]

    def heartbeat(
        self, leases: Iterable[tuple[str, int]], *, peer: str | None, lease_s: float, now: float
    ) -> dict[str, str]:
        """Extend each lease still held: ``ok``; or say why not: ``cancelled`` or ``lost``."""
        answers: dict[str, str] = {}
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        with self.transaction():
            for task_id, attempt in leases:
                cursor = self.db.execute(
                    f"UPDATE tasks SET lease_expires = ? WHERE task_id = ? AND attempt = ? AND status = 'running' "
                    f"AND {peer_clause}",
                    (now + lease_s, task_id, attempt, peer),
                )
                if cursor.rowcount:
                    answers[task_id] = "ok"
                    continue
                row = self.db.execute("SELECT status, attempt FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
                cancelled = row is not None and row[0] == TaskStatus.CANCELLED and row[1] == attempt
                answers[task_id] = "cancelled" if cancelled else "lost"
        return answers

    def finish(self, reports: Iterable[Report], *, peer: str | None, now: float) -> list[str]:
        """Record results and failures of leased attempts; one verdict per report (see ``model.completion_verdict``)."""
        verdicts = []
        with self.transaction():
            for report in reports:
                row = self.get(report.task_id)
                if row is None:
                    verdicts.append("rejected")
                    continue
                status = TaskStatus(row["status"])
                verdict = model.completion_verdict(status, row["attempt"], report.attempt)
                if verdict == "recorded" and row["worker_peer"] != peer:
                    verdict = "rejected"  # someone else's lease: never theirs to finish
                if verdict != "recorded":
                    verdicts.append(verdict)
                    continue
                if report.ok:
                    encoded = dumps(report.result)
                    size = len(encoded.encode())
                    if size <= self.max_result_bytes:
                        self._record_result(row, encoded, now)
                        verdicts.append("recorded")
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
                    row, now, message=report.message, code=report.code, retryable=report.retryable, lost=False
                )
                verdicts.append("recorded")
        return verdicts

    def _record_result(self, row: sqlite3.Row, encoded: str, now: float) -> None:
        model.complete(self._state(row))
        self.db.execute(
            "UPDATE tasks SET status = 'completed', result = ?, finished_at = ?, lease_expires = NULL WHERE seq = ?",
            (encoded, now, row["seq"]),
        )
        self._moved(TaskStatus.RUNNING, TaskStatus.COMPLETED)
        self._ended(row, TaskStatus.COMPLETED)

    @staticmethod
    def _state(row: sqlite3.Row) -> TaskState:
        policy = RetryPolicy(**json.loads(row["retry_policy"]))
        return TaskState(TaskStatus(row["status"]), row["attempt"], row["failures"], policy)

    def _apply_failure(
        self, row: sqlite3.Row, now: float, *, message: str, code: str, retryable: bool, lost: bool
    ) -> model.Outcome:
        outcome = model.fail(self._state(row), message=message, code=code, retryable=retryable, lost=lost)
        who = row["worker_peer"] or "local"
        if outcome.status is TaskStatus.QUEUED:
            self.db.execute(
                "UPDATE tasks SET status = 'queued', failures = ?, not_before = ?, worker = NULL, worker_peer = NULL, "
                "lease_boot = NULL, lease_expires = NULL, error = ? WHERE seq = ?",
                (
                    outcome.failures,
                    now + outcome.delay_s,
                    dumps({"code": code, "message": message, "attempt": row["attempt"]}),
                    row["seq"],
                ),
            )
            self._moved(TaskStatus.RUNNING, TaskStatus.QUEUED)
        else:
            self.db.execute(
                "UPDATE tasks SET status = 'failed', failures = ?, finished_at = ?, lease_expires = NULL, error = ? "
                "WHERE seq = ?",
                (outcome.failures, now, dumps(outcome.error), row["seq"]),
            )
            self._moved(TaskStatus.RUNNING, TaskStatus.FAILED)
            self._ended(row, TaskStatus.FAILED)
        self._log(row["seq"], now, f"{outcome.note} [worker {row['worker']} on {who}]")
        return outcome

    def release(self, leases: Iterable[tuple[str, int]], *, peer: str | None, now: float, why: str) -> int:
        """Hand leased attempts back unfinished (no failure counted); returns how many were still held."""
        released = 0
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        with self.transaction():
            for task_id, attempt in leases:
                row = self.db.execute(
                    f"SELECT * FROM tasks WHERE task_id = ? AND attempt = ? AND status = 'running' AND {peer_clause}",
                    (task_id, attempt, peer),
                ).fetchone()
                if row is None:
                    continue
                outcome = model.release(self._state(row))
                self.db.execute(
                    "UPDATE tasks SET status = 'queued', not_before = 0, worker = NULL, worker_peer = NULL, "
                    "lease_boot = NULL, lease_expires = NULL WHERE seq = ?",
                    (row["seq"],),
                )
                self._moved(TaskStatus.RUNNING, TaskStatus.QUEUED)
                self._log(row["seq"], now, f"{outcome.note} ({why})")
                released += 1
        return released

    def expire_leases(self, now: float) -> int:
        """Leases not renewed in time: their workers are presumed dead; each attempt counts as failed."""
        rows = self.db.execute("SELECT * FROM tasks WHERE status = 'running' AND lease_expires < ?", (now,)).fetchall()
        return self._lose(rows, now, "lease expired (worker stopped heartbeating)")

    def lose_leases_of(self, peer: str | None, *, boot_not: str, now: float, why: str) -> int:
        """Leases held by an earlier run of a worker process (``peer`` None: this node's own)."""
        peer_clause = "worker_peer IS ?" if peer is None else "worker_peer = ?"
        rows = self.db.execute(
            f"SELECT * FROM tasks WHERE status = 'running' AND {peer_clause} AND lease_boot IS NOT ?",
            (peer, boot_not),
        ).fetchall()
        return self._lose(rows, now, why)

    def _lose(self, rows: list[sqlite3.Row], now: float, why: str) -> int:
        if not rows:
            return 0
        with self.transaction():
            for row in rows:
                self._apply_failure(row, now, message=why, code="worker_lost", retryable=True, lost=True)
        return len(rows)

    # -- operator actions ---------------------------------------------------------------------------
    def cancel(self, task_id: str, reason: str, now: float) -> tuple[TaskStatus, sqlite3.Row]:
        """Cancel a queued or running task; returns its status before and its row before."""
        with self.transaction():
            row = self.require(task_id)
            status = TaskStatus(row["status"])
            outcome = model.cancel(self._state(row), reason)
            self.db.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?, lease_expires = NULL, error = ? WHERE seq = ?",
                (now, dumps(outcome.error), row["seq"]),
            )
            self._moved(status, TaskStatus.CANCELLED)
            self._ended(row, TaskStatus.CANCELLED)
            self._log(row["seq"], now, outcome.note)
        return status, row

    def retry(self, task_id: str, policy: RetryPolicy | None, now: float) -> sqlite3.Row:
        with self.transaction():
            row = self.require(task_id)
            status = TaskStatus(row["status"])
            outcome = model.retry(self._state(row))
            policy_json = row["retry_policy"] if policy is None else dumps(policy.to_dict())
            updated = self.db.execute(
                "UPDATE tasks SET status = 'queued', failures = 0, not_before = 0, retry_policy = ?, worker = NULL, "
                "worker_peer = NULL, lease_boot = NULL, finished_at = NULL, result = NULL, error = NULL "
                "WHERE seq = ? RETURNING *",
                (policy_json, row["seq"]),
            ).fetchone()
            self._moved(status, TaskStatus.QUEUED)
            self._log(row["seq"], now, outcome.note)
        return updated

    def set_priority(self, task_id: str, priority: float, now: float) -> sqlite3.Row:
        with self.transaction():
            row = self.require(task_id)
            outcome = model.reprioritize(self._state(row))
            updated = self.db.execute(
                "UPDATE tasks SET priority = ? WHERE seq = ? RETURNING *", (priority, row["seq"])
            ).fetchone()
            self._log(row["seq"], now, f"{outcome.note}: {row['priority']:g} -> {priority:g}")
        return updated

    def cancel_queued(self, reason: str, now: float) -> int:
        """queue_clear on queued tasks: each is cancelled (so waiters and workflows learn of it)."""
        with self.transaction():
            rows = self.db.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?, error = ? WHERE status = 'queued' "
                "RETURNING seq, task_id, workflow_id",
                (now, dumps({"code": "cancelled", "message": reason})),
            ).fetchall()
            self._moved(TaskStatus.QUEUED, TaskStatus.CANCELLED, len(rows))
            for row in rows:
                self._ended(row, TaskStatus.CANCELLED)
        return len(rows)

    def delete_finished(self, statuses: Sequence[TaskStatus]) -> int:
        """queue_clear on finished tasks: their rows (and logs) are deleted."""
        if not statuses:
            return 0
        marks = ",".join("?" * len(statuses))
        with self.transaction():
            self.db.execute(
                f"DELETE FROM task_log WHERE task_seq IN (SELECT seq FROM tasks WHERE status IN ({marks}))",
                list(statuses),
            )
            deleted = self.db.execute(
                f"DELETE FROM tasks WHERE status IN ({marks}) RETURNING status", list(statuses)
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

    def saved_workers(self) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self.db.execute("SELECT spec FROM workers ORDER BY rowid")]
