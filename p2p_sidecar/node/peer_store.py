"""Peer state that survives restarts: an embedded SQLite database in ``SIDECAR_DATA_DIR``.

The in-memory ``PeerTable`` is what the node works with; this store is its
durable copy, written in small batches (``save``) a few times a minute and
at shutdown, and read once at start (``load``).  After a restart every peer
comes back as KNOWN: whether it is still alive is for liveness to find out,
not for the database to claim.  Latency samples are kept (at most one per
peer per ``SAMPLE_EVERY`` seconds, for ``KEEP_SAMPLES_FOR``) so
``peer_metrics`` can show history.

All calls are synchronous and touch a handful of rows (WAL journal,
``synchronous=NORMAL``): well under a millisecond, so they run on the Trio
thread instead of paying a thread hand-off.  A database that cannot be read
is moved aside and recreated: unlike the node key, peer state is a cache the
network can refill.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from p2p_sidecar.node.peers import PeerRecord, PeerState

log = logging.getLogger(__name__)

DB_FILE = "peers.sqlite3"
SCHEMA_VERSION = 1
SAMPLE_EVERY = 30.0
KEEP_SAMPLES_FOR = 7 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    addrs TEXT NOT NULL,
    last_state TEXT NOT NULL,
    sources TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL,
    latency_ms REAL,
    capabilities TEXT NOT NULL,
    version TEXT,
    persist INTEGER NOT NULL DEFAULT 0,
    serves_rpc INTEGER
);
CREATE TABLE IF NOT EXISTS latency_samples (peer_id TEXT NOT NULL, at REAL NOT NULL, rtt_ms REAL NOT NULL);
CREATE INDEX IF NOT EXISTS latency_samples_by_peer ON latency_samples (peer_id, at);
"""


class PeerStoreError(RuntimeError):
    """The peer database cannot be opened; the message says which file and why."""


class PeerStore:
    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._last_sample: dict[str, float] = {}

    @classmethod
    def open(cls, data_dir: Path) -> PeerStore:
        """Open (or create) the database; raises ``PeerStoreError`` if it cannot be used at all.

        A file that is not a readable database is moved aside (never deleted); one that is merely
        locked or on a failing disk (``OperationalError``) is left alone and stops the start.
        """
        path = data_dir / DB_FILE
        try:
            return cls(_connect(path), path)
        except sqlite3.OperationalError as exc:
            raise PeerStoreError(f"cannot open the peer database {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("peer database %s unreadable (%s): moved to %s, starting empty", path, exc, aside)
            try:
                path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    path.with_name(path.name + suffix).unlink(missing_ok=True)
                return cls(_connect(path), path)
            except (OSError, sqlite3.Error) as again:
                raise PeerStoreError(f"the peer database {path} is unreadable and cannot be moved: {again}") from None

    def close(self) -> None:
        self._db.close()

    def load(self) -> list[PeerRecord]:
        rows = self._db.execute(
            "SELECT peer_id, addrs, sources, first_seen, last_seen, latency_ms, capabilities, version, persist, "
            "serves_rpc FROM peers"
        ).fetchall()
        records = []
        for peer_id, addrs, sources, first_seen, last_seen, latency_ms, capabilities, version, persist, rpc in rows:
            records.append(
                PeerRecord(
                    peer_id,
                    addrs=_json_list(addrs),
                    state=PeerState.KNOWN,
                    # bootstrap peers are whatever the configuration says now, not what it said last time
                    sources=(set(_json_list(sources)) - {"bootstrap"}) | {"store"},
                    first_seen=first_seen,
                    last_seen=last_seen,
                    latency_ms=latency_ms,
                    capabilities=_json_dict(capabilities),
                    version=version,
                    persist=bool(persist),
                    serves_rpc=None if rpc is None else bool(rpc),
                )
            )
        return records

    def save(self, records: Iterable[PeerRecord], *, now: float | None = None) -> None:
        """Upsert the records (and a latency sample for each, at most every ``SAMPLE_EVERY`` seconds)."""
        now = time.time() if now is None else now
        rows = []
        samples = []
        for record in records:
            rows.append(
                (
                    record.peer_id,
                    json.dumps(record.addrs),
                    record.state.value,
                    json.dumps(sorted(record.sources - {"store"})),
                    record.first_seen,
                    record.last_seen,
                    record.latency_ms,
                    json.dumps(record.capabilities),
                    record.version,
                    int(record.persist),
                    None if record.serves_rpc is None else int(record.serves_rpc),
                )
            )
            if record.last_rtt_ms is not None and now - self._last_sample.get(record.peer_id, 0.0) >= SAMPLE_EVERY:
                self._last_sample[record.peer_id] = now
                samples.append((record.peer_id, now, record.last_rtt_ms))
        with self._db:
            self._db.executemany(
                "INSERT INTO peers (peer_id, addrs, last_state, sources, first_seen, last_seen, latency_ms, "
                "capabilities, version, persist, serves_rpc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (peer_id) DO UPDATE SET addrs = excluded.addrs, last_state = excluded.last_state, "
                "sources = excluded.sources, last_seen = excluded.last_seen, latency_ms = excluded.latency_ms, "
                "capabilities = excluded.capabilities, version = excluded.version, persist = excluded.persist, "
                "serves_rpc = excluded.serves_rpc",
                rows,
            )
            if samples:
                self._db.executemany("INSERT INTO latency_samples (peer_id, at, rtt_ms) VALUES (?, ?, ?)", samples)

    def forget(self, peer_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
            self._db.execute("DELETE FROM latency_samples WHERE peer_id = ?", (peer_id,))

    def history(self, peer_id: str, since: float, limit: int = 2000) -> list[tuple[float, float]]:
        rows = self._db.execute(
            "SELECT at, rtt_ms FROM latency_samples WHERE peer_id = ? AND at >= ? ORDER BY at DESC LIMIT ?",
            (peer_id, since, limit),
        ).fetchall()
        return [(at, rtt) for at, rtt in reversed(rows)]

    def prune(self, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - KEEP_SAMPLES_FOR
        with self._db:
            return self._db.execute("DELETE FROM latency_samples WHERE at < ?", (cutoff,)).rowcount


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level="DEFERRED")
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        columns = {row[1] for row in connection.execute("PRAGMA table_info(peers)")}
        if "serves_rpc" not in columns:  # a database from before the column existed: add it, keep the rows
            connection.execute("ALTER TABLE peers ADD COLUMN serves_rpc INTEGER")
        with connection:
            connection.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        (version,) = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        connection.execute("SELECT count(*) FROM peers").fetchone()
    except BaseException:
        connection.close()
        raise
    path.chmod(0o600)
    return connection


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
