"""The queue database on disk: its schema, how an older one is brought forward, and how opening it fails.

One SQLite file per node holds the tasks, their log, registered workers and
the workflow tables, under one schema version.  ``open_database`` is the
only place that creates, checks or migrates it; every failure is a
``StartupError`` with one line naming the file and what to do.  Nothing here
ever repairs, replaces or rewrites an existing file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Literal

from p2p_sidecar.errors import StartupError

SCHEMA_VERSION = "2"
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
    error TEXT,
    progress TEXT,
    trace TEXT
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks(priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks(lease_expires) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS tasks_workflow ON tasks(workflow_id) WHERE workflow_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_log (task_seq INTEGER NOT NULL, at REAL NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS task_log_by_task ON task_log(task_seq);
CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    seq INTEGER PRIMARY KEY,
    workflow_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    priority REAL,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS workflows_running ON workflows(status) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS workflow_steps (
    workflow_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    task_id TEXT,
    status TEXT NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);
"""

_MIGRATIONS: dict[str, tuple[str, ...]] = {
    # version 1 -> 2: executors' progress on the task, and the trace it was submitted in; the workflow tables
    # (created by the engine until then) are part of the schema and come from _SCHEMA above.
    "1": ("ALTER TABLE tasks ADD COLUMN progress TEXT", "ALTER TABLE tasks ADD COLUMN trace TEXT"),
}
"""Each entry upgrades a database from the version it names to the next one, inside one transaction."""


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


def lock_data_dir(path: Path) -> int:
    """One process per database: a second sidecar on the same data dir would corrupt the leases."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartupError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StartupError(f"another sidecar is using this data directory ({path} is locked)") from None
    return fd


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema, or bring an older one forward, in one transaction; a newer one stops the start."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    version = None
    if has_meta:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = None if row is None else str(row[0])
    if version is not None and version != SCHEMA_VERSION and version not in _MIGRATIONS:
        raise StartupError(f"{path} has schema version {version}; this sidecar reads {SCHEMA_VERSION}")
    db.execute("BEGIN IMMEDIATE")
    try:
        while version is not None and version != SCHEMA_VERSION:
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            version = str(int(version) + 1)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def open_database(path: Path, *, sync: SyncMode) -> tuple[sqlite3.Connection, int]:
    """The connection to a checked, current database, and the lock that keeps other sidecars off it."""
    lock_fd = lock_data_dir(path.with_suffix(".lock"))
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=5000")
        # A damaged file is found now, with a clear message, not by whichever query reaches the bad page
        # first (about 50 ms for 100,000 tasks here).  Nothing is repaired or replaced: the operator decides.
        check = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if check != ["ok"]:
            raise StartupError(
                f"the queue database {path} is damaged (quick_check: {'; '.join(check)[:300]}); it was left "
                "untouched: restore it from a backup, or move it away to start with an empty queue"
            )
        migrate(db, path)
        return db, lock_fd
    except sqlite3.Error as exc:
        close_quietly(db, lock_fd)
        raise StartupError(_open_failure(path, exc)) from None
    except StartupError:
        close_quietly(db, lock_fd)
        raise


def close_quietly(db: sqlite3.Connection | None, lock_fd: int) -> None:
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    os.close(lock_fd)
