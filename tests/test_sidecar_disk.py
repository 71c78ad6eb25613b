"""Disk trouble under the sidecar's SQLite: every case is a clear error, the process never crashes, nothing is lost.

Real sidecars (and a gateway where tasks are submitted) on real file systems: a tmpfs mounted read-only
or filled to the last byte (mounting needs root; those tests skip otherwise, saying so, and fail under
CI=true), a database held
by another process's exclusive lock, a second sidecar on the same data directory, a file that is not a
database and one with a damaged page.  After each case the database passes ``PRAGMA integrity_check``
and still holds every task it had accepted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2p_sidecar.taskqueue.errors import StorageError
from p2p_sidecar.taskqueue.model import RetryPolicy
from p2p_sidecar.taskqueue.records import NewTask
from p2p_sidecar.taskqueue.store import TaskStore
from tests.ci import cannot_run
from tests.procs import Proc, gateway_proc, http_json, make_identity, running, sidecar_proc, wait_for
from tests.queue_client import call, wait_done

pytestmark = pytest.mark.e2e


def seed_tasks(data_dir: Path, count: int) -> None:
    """Tasks accepted by an earlier run of the sidecar (written the way it writes them)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = TaskStore.open(data_dir / "queue.db")
    with store.transaction():
        for n in range(count):
            task = NewTask(
                task_id=f"seed-{n}",
                task_type="echo",
                payload={"n": n},
                priority=1.0,
                timeout_s=60.0,
                policy=RetryPolicy(),
                idem_key=f"seed-{n}",
                tags=[],
                metadata={},
                workflow_id=None,
                step_id=None,
            )
            store.insert(task, time.time())
    store.close()


def check_database(data_dir: Path) -> int:
    """integrity_check must pass; returns the number of tasks stored."""
    db = sqlite3.connect(data_dir / "queue.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    finally:
        db.close()


def start_failure(proc: Proc, timeout: float = 30.0) -> tuple[int, str]:
    """Start a process expected to stop at once; returns its exit code and its one-line error."""
    proc.start(wait=False)
    code = proc.exit_code(timeout)
    lines = [line for line in proc.log_path.read_text().splitlines() if line.startswith("sidecar cannot start")]
    assert len(lines) == 1, proc.log_tail()
    return code, lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        cannot_run("mounting a tmpfs needs root; the read-only and disk-full cases run only as root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=False)
    if done.returncode != 0:
        cannot_run("mount -t tmpfs is not permitted here (a container without CAP_SYS_ADMIN?)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_data_dir_stops_the_start_with_one_line_and_loses_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "sidecar-data", "8m") as data_dir:
        seed_tasks(data_dir, 50)
        make_identity(data_dir)
        subprocess.run(["mount", "-o", "remount,ro", str(data_dir)], check=True)
        code, line = start_failure(sidecar_proc(tmp_path))
        assert code == 1, line
        assert f"SIDECAR_DATA_DIR {data_dir} is not writable: Read-only file system" in line
        subprocess.run(["mount", "-o", "remount,rw", str(data_dir)], check=True)
        assert check_database(data_dir) == 50
        sidecar = sidecar_proc(tmp_path, "again")
        sidecar.env["SIDECAR_DATA_DIR"] = str(data_dir)
        with running(sidecar):  # writable again: it starts with what it had
            pass
        assert check_database(data_dir) == 50


def test_a_database_locked_by_another_process_stops_the_start_with_one_line(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path)
    data_dir = Path(sidecar.extra["data_dir"])
    seed_tasks(data_dir, 20)
    holder = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA locking_mode=EXCLUSIVE')\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", holder, str(data_dir / "queue.db")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        code, line = start_failure(sidecar)
    finally:
        locker.kill()
        locker.wait(timeout=10)
        if locker.stdout is not None:
            locker.stdout.close()
    assert code == 1, line
    assert f"the queue database {data_dir / 'queue.db'} is locked by another process" in line, line
    assert check_database(data_dir) == 20


def test_a_second_sidecar_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = sidecar_proc(tmp_path, "first")
    second = sidecar_proc(tmp_path, "second")
    second.env["SIDECAR_DATA_DIR"] = first.env["SIDECAR_DATA_DIR"]
    with running(first):
        code, line = start_failure(second)
        assert first.alive()
    assert code == 1 and "another sidecar is using this data directory" in line, line


@pytest.mark.parametrize("damage", ["not_sqlite", "damaged_page"])
def test_a_database_that_is_not_sqlite_or_is_damaged_is_left_untouched(tmp_path: Path, damage: str) -> None:
    sidecar = sidecar_proc(tmp_path)
    data_dir = Path(sidecar.extra["data_dir"])
    path = data_dir / "queue.db"
    if damage == "not_sqlite":
        data_dir.mkdir(parents=True)
        path.write_bytes(b"these are somebody's notes, not a database\n" * 200)
    else:
        seed_tasks(data_dir, 2000)
        with path.open("r+b") as handle:  # a page in the middle of the tasks table, overwritten
            handle.seek(20 * 4096)
            handle.write(os.urandom(4096))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, line = start_failure(sidecar)
    assert code == 1, line
    assert f"the queue database {path}" in line and "left untouched" in line, line
    assert "not a usable SQLite database" in line or "is damaged" in line, line
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # never repaired, replaced or rewritten
    assert not (data_dir / "queue.db-wal").exists()


def test_a_runtime_lock_is_a_clear_refusal_that_changes_nothing(tmp_path: Path) -> None:
    """The store's side of a lock held while running (what task_submit answers 503 for): unit level, fast."""
    store = TaskStore.open(tmp_path / "queue.db")
    store.db.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    task = NewTask(
        task_id="t1",
        task_type="echo",
        payload={},
        priority=1.0,
        timeout_s=60.0,
        policy=RetryPolicy(),
        idem_key=None,
        tags=[],
        metadata={},
        workflow_id=None,
        step_id=None,
    )
    with pytest.raises(StorageError, match="is locked by another process"):
        store.insert(task, time.time())
    assert store.counts()["queued"] == 0
    other.execute("ROLLBACK")
    store.insert(task, time.time())
    assert store.counts()["queued"] == 1
    other.close()
    store.close()


def test_a_full_disk_while_running_refuses_submits_then_recovers_with_nothing_lost(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "sidecar-data", "6m") as data_dir:
        sidecar = sidecar_proc(tmp_path, SIDECAR_LOG_LEVEL="warning")
        sidecar.env["SIDECAR_DATA_DIR"] = str(data_dir)
        gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
        with running(sidecar, gateway):
            url = gateway.extra["url"]
            wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 15, what="ready")
            call(url, "queue_pause")  # tasks stay queued, so what is stored is exactly what was accepted
            accepted = [call(url, "task_submit", task_type="echo", payload={"n": n})["task_id"] for n in range(20)]
            filler = data_dir / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            for size in (65536, 512):  # every free byte of the file system
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
            os.close(fd)
            refusals = []
            for n in range(300):
                payload = {"n": 1000 + n, "pad": "x" * 20_000}
                status, body = http_json(
                    "POST", f"{url}/tools/execute/task_submit", {"task_type": "echo", "payload": payload}
                )
                if status == 200:
                    accepted.append(body["result"]["task_id"])
                    continue
                refusals.append((status, body))
                if len(refusals) == 3:
                    break
            assert refusals, "the disk never filled up"
            for status, body in refusals:
                assert status == 503 and body["error"]["code"] == "unavailable", body
                assert "is full" in body["error"]["message"] and "nothing was changed" in body["error"]["message"]
            assert sidecar.alive() and http_json("GET", url + "/health")[0] == 200
            filler.unlink()  # the operator frees space: the same sidecar carries on
            accepted.append(call(url, "task_submit", task_type="echo", payload={"n": "after"})["task_id"])
            call(url, "queue_resume")
            for task_id in accepted:
                assert wait_done(url, task_id)["status"] == "completed"
        assert check_database(data_dir) == len(accepted)
