"""Faults under load for the task queue: kill, restart and cut off the nodes of a three-node network.

    .venv/bin/python -m bench.fault_queue_nodes [--tasks 3000] [--lease 4] [--no-netns] [--json out.json]

Three sidecars in a closed network (a shared secret, proven again after every restart): ``a`` (with a
gateway: tasks are submitted there, so a owns them) and the workers ``b`` and ``c``; all three run tasks
(a 4 slots, b and c 8 each).  A submitter keeps adding ``sleep``
tasks (each with an idempotency key, re-sent until accepted, as a careful client does) while the
schedule below runs: ``kill -9`` and restart of workers and of the submitting node, a graceful SIGTERM
of a worker under load (it must exit 0), and network partitions.  Partitions use network namespaces
(``bench/netns.py``: each node in its own namespace, joined by a bridge; a partition sets a node's
switch port down) when the bench runs as root; otherwise the node is frozen with SIGSTOP/SIGCONT, which
the record says.

What is checked, at the owner's database once every process has stopped: every accepted task is there
exactly once and completed with its own result (lost = 0, duplicates = 0); and every execution that ran
to its end (the workers' debug line ``executed task ... attempt ...``) is counted against the one result
recorded per task.  Per fault: tasks it caught running, time from the fault's end until the faulted node
completes work again, and until every task it caught is done ("drain").
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import re
import secrets
import signal
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.netns import NetnsLab
from tests.procs import FAST_P2P, Peer, gateway_proc, http_json, make_identity, sidecar_proc, start_all, wait_for

EXECUTED = re.compile(r"executed task (\S+) attempt (\d+) for (\S+): ok")


@dataclass(frozen=True)
class Fault:
    kind: str
    """``kill9`` (restarted after ``down_s``), ``sigterm`` (must exit 0; restarted), ``partition`` (netns, or
    ``stop``: SIGSTOP/SIGCONT without it)."""
    node: str
    down_s: float


DEFAULT_FAULTS = (
    Fault("kill9", "b", 2.0),
    Fault("sigterm", "c", 1.0),
    Fault("kill9", "a", 2.0),
    Fault("partition", "c", 8.0),
    Fault("kill9", "c", 2.0),
    Fault("kill9", "a", 3.0),
    Fault("partition", "b", 8.0),
    Fault("partition", "a", 6.0),
)


@dataclass
class FaultRecord:
    kind: str
    node: str
    down_s: float
    started_at: float = 0.0
    ended_at: float = 0.0
    caught_running: list[str] = field(default_factory=list)
    exit_code: int | None = None
    resumed_s: float | None = None
    drain_s: float | None = None
    cut: dict[str, Any] = field(default_factory=dict)
    """For a partition, what it was, seen while it lasted: the node's process state (``R``/``S``, not ``T``,
    stopped), whether that process lives in the node's own namespace, and its switch port's state."""


# -- the network --------------------------------------------------------------------------------------------------


def build_network(tmp: Path, lab: NetnsLab | None, *, lease_s: float, grace_s: float) -> dict[str, Peer]:
    """Sidecars a, b, c (b and c bootstrap from a) and a's gateway; in namespaces when ``lab`` is given."""
    slots = {"a": "4", "b": "8", "c": "8"}
    secret = tmp / "network.secret"  # a closed network: membership is proven again after every restart
    secret.write_text(secrets.token_hex(32))
    peers: dict[str, Peer] = {}
    for name in ("a", "b", "c"):
        peer_id = make_identity(tmp / f"{name}-data")
        sidecar = sidecar_proc(
            tmp,
            name,
            SIDECAR_WORKER_CONCURRENCY=slots[name],
            SIDECAR_QUEUE_LEASE_SECONDS=str(lease_s),
            SIDECAR_SHUTDOWN_GRACE_SECONDS=str(grace_s),
            SIDECAR_LOG_LEVEL="debug",  # the workers' "executed task" lines are counted
            SIDECAR_NETWORK_SECRET_FILE=str(secret),
            **FAST_P2P,
        )
        peer = Peer(name, sidecar, peer_id)
        if lab is not None:
            host = lab.address(name)
            peer.host = host
            sidecar.prefix = lab.exec_prefix(name)
            sidecar.extra.update(p2p_port=4001, admin_port=8002, endpoint="tcp://127.0.0.1:8001")
            sidecar.env.update(
                SIDECAR_LISTEN_ADDRS=f"/ip4/{host}/tcp/4001",
                SIDECAR_ADMIN_HOST=host,
                SIDECAR_ADMIN_TOKEN="fault-lab-admin-token",  # not loopback: required (only /health is read)
                SIDECAR_ADMIN_PORT="8002",
                SIDECAR_BRIDGE_ENDPOINT="tcp://127.0.0.1:8001",
            )
            sidecar.health_url = f"http://{host}:8002/health"
        peers[name] = peer
    for name in ("b", "c"):
        peers[name].sidecar.env["SIDECAR_BOOTSTRAP_PEERS"] = peers["a"].multiaddr
    a = peers["a"]
    gateway = gateway_proc(tmp, "a-gateway", endpoint=a.sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
    if lab is not None:
        gateway.prefix = lab.exec_prefix("a")
        gateway.env.update(GATEWAY_HOST=a.host, GATEWAY_PORT="8000")
        gateway.extra.update(port=8000, url=f"http://{a.host}:8000")
        gateway.health_url = f"http://{a.host}:8000/health"
    a.gateway = gateway
    return peers


@contextlib.contextmanager
def running_queue_network(tmp: Path, *, netns: bool, lease_s: float, grace_s: float) -> Iterator[dict[str, Any]]:
    """Start the network (in namespaces if asked and possible); yields peers, the lab and why not netns."""
    why_not = NetnsLab.available() if netns else "disabled (--no-netns)"
    lab = NetnsLab.create(["a", "b", "c"]) if why_not is None else None
    try:
        peers = build_network(tmp, lab, lease_s=lease_s, grace_s=grace_s)
        procs = [proc for peer in peers.values() for proc in peer.procs()]
        try:
            start_all(*procs, timeout=60)
            a = peers["a"]
            wait_for(lambda: _ready(a), 30, 0.2, what="a's gateway ready")
            wait_for(lambda: _workers_seen(a, [peers["b"], peers["c"]]), 30, 0.2, what="a sees b and c")
            yield {"peers": peers, "lab": lab, "partition_by": "netns" if lab else f"SIGSTOP/SIGCONT ({why_not})"}
        finally:
            for proc in reversed(procs):
                with contextlib.suppress(OSError):
                    proc.signal(signal.SIGCONT)
                proc.stop()
    finally:
        if lab is not None:
            lab.close()


def _url(peer: Peer) -> str:
    assert peer.gateway is not None
    return str(peer.gateway.extra["url"])


def _ready(a: Peer) -> bool:
    with contextlib.suppress(OSError):
        return http_json("GET", _url(a) + "/health/ready", timeout=2)[0] == 200
    return False


def _workers_seen(a: Peer, workers: list[Peer]) -> bool:
    with contextlib.suppress(OSError, AssertionError):
        found = a.peers(status_filter="connected", capability_filter="task:sleep")
        return {peer.peer_id for peer in workers} <= set(found)
    return False


def _tool(a: Peer, tool: str, arguments: dict[str, Any], timeout: float = 10.0) -> Any:
    """A tool call at a's gateway; None when a (or its sidecar) cannot answer right now."""
    try:
        status, body = http_json("POST", f"{_url(a)}/tools/execute/{tool}", arguments, timeout=timeout)
    except OSError:
        return None
    return body["result"] if status == 200 else None


# -- load ---------------------------------------------------------------------------------------------------------


class Submitter:
    """Submits tasks 0..n-1 at a steady rate, each re-sent under its idempotency key until accepted."""

    def __init__(self, a: Peer, tasks: int, rate: float, seed: int = 7) -> None:
        self.a = a
        self.tasks = tasks
        self.rate = rate
        self.accepted: dict[int, str] = {}
        self.retries = 0
        self._durations = [round(random.Random(seed + n).uniform(0.2, 0.8), 3) for n in range(tasks)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="submitter")

    def _submit(self, n: int) -> None:
        payload = {"seconds": self._durations[n], "result": n}
        arguments = {"task_type": "sleep", "payload": payload, "metadata": {"idempotency_key": f"fault-{n}"}}
        while not self._stop.is_set():
            result = _tool(self.a, "task_submit", arguments)
            if result is not None:
                self.accepted[n] = result["task_id"]
                return
            self.retries += 1
            time.sleep(0.2)

    def _run(self) -> None:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for n in range(self.tasks):
                delay = started + n / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                pool.submit(self._submit, n)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# -- faults ---------------------------------------------------------------------------------------------------------


def _running_on(a: Peer, peer: Peer, owner_fault: bool) -> list[str]:
    listing = _tool(a, "task_list", {"status_filter": "running", "limit": 1000})
    if listing is None:
        return []
    wanted = "local" if peer.name == "a" else peer.peer_id
    return [task["task_id"] for task in listing["tasks"] if owner_fault or task.get("executed_by") == wanted]


def _process_state(pid: int) -> str:
    """The state letter of ``/proc/<pid>/stat`` (after the parenthesised command name)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def apply_fault(fault: Fault, peers: dict[str, Peer], lab: NetnsLab | None) -> FaultRecord:
    peer, a = peers[fault.node], peers["a"]
    record = FaultRecord(fault.kind if fault.kind != "partition" or lab else "stop", fault.node, fault.down_s)
    # a fault under load: wait (a few seconds at most) until the node is running some of a's tasks
    deadline = time.monotonic() + 5.0
    while not record.caught_running and time.monotonic() < deadline:
        record.caught_running = _running_on(a, peer, owner_fault=fault.node == "a")
        time.sleep(0.05)
    record.started_at = time.time()
    if record.kind == "kill9":
        peer.sidecar.kill9()
        time.sleep(fault.down_s)
        peer.sidecar.start(wait=False)
    elif record.kind == "sigterm":
        peer.sidecar.signal(signal.SIGTERM)
        record.exit_code = peer.sidecar.exit_code(30)
        time.sleep(fault.down_s)
        peer.sidecar.start(wait=False)
    elif record.kind == "partition":
        assert lab is not None
        lab.partition(fault.node)
        record.cut = {
            "process_state": _process_state(peer.sidecar.pid),
            "in_own_namespace": os.stat(f"/proc/{peer.sidecar.pid}/ns/net").st_ino == lab.namespace_inode(fault.node),
            "port": lab.port_state(fault.node),
        }
        time.sleep(fault.down_s)
        lab.heal(fault.node)
    else:
        peer.sidecar.signal(signal.SIGSTOP)
        time.sleep(fault.down_s)
        peer.sidecar.signal(signal.SIGCONT)
    record.ended_at = time.time()
    if record.kind in ("kill9", "sigterm"):
        peer.sidecar.wait_healthy(60)
    return record


# -- checking, at the owner's database ---------------------------------------------------------------------------


def executions(peers: dict[str, Peer]) -> Counter[tuple[str, int]]:
    """(task id, attempt) -> executions that ran to their end, from every node's log (restarts append to it)."""
    counted: Counter[tuple[str, int]] = Counter()
    for peer in peers.values():
        for match in EXECUTED.finditer(peer.sidecar.log_path.read_text(errors="replace")):
            counted[(match[1], int(match[2]))] += 1
    return counted


def check(peers: dict[str, Peer], accepted: dict[int, str], records: list[FaultRecord]) -> dict[str, Any]:
    db = sqlite3.connect(Path(peers["a"].sidecar.extra["data_dir"]) / "queue.db")
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM tasks").fetchall()
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        handed_back = db.execute("SELECT COUNT(*) FROM task_log WHERE line LIKE '%handed back%'").fetchone()[0]
    finally:
        db.close()
    by_id = {row["task_id"]: row for row in rows}
    keys = Counter(row["idem_key"] for row in rows)
    lost = [n for n, task_id in accepted.items() if task_id not in by_id or by_id[task_id]["status"] != "completed"]
    wrong = [
        n
        for n, task_id in accepted.items()
        if task_id in by_id
        and (by_id[task_id]["result"] is None or json.loads(by_id[task_id]["result"])["result"] != n)
    ]
    ran = executions(peers)
    per_task: Counter[str] = Counter()
    for (task_id, _attempt), count in ran.items():
        per_task[task_id] += count
    never_ran = [
        task_id
        for task_id in accepted.values()
        if task_id in by_id
        and by_id[task_id]["status"] == "completed"
        and (task_id, by_id[task_id]["attempt"]) not in ran
    ]
    completed = [row for row in rows if row["status"] == "completed"]
    for record in records:
        _timings(record, by_id, peers)
    return {
        "accepted": len(accepted),
        "stored": len(rows),
        "lost": len(lost),
        "duplicate_rows": sum(count - 1 for count in keys.values() if count > 1),
        "wrong_results": len(wrong),
        "results_recorded": len(completed),
        "executions_to_the_end": sum(ran.values()),
        "tasks_executed_more_than_once": sum(1 for count in per_task.values() if count > 1),
        "recorded_result_without_its_execution": len(never_ran),
        "lost_attempts_counted": sum(row["failures"] for row in rows),
        "handed_back_unfinished": handed_back,
        "executed_by": dict(Counter(row["worker_peer"] or "a (local)" for row in completed)),
        "integrity_check": integrity,
    }


def _timings(record: FaultRecord, by_id: dict[str, sqlite3.Row], peers: dict[str, Peer]) -> None:
    caught = [by_id[task_id]["finished_at"] for task_id in record.caught_running if task_id in by_id]
    if caught and all(at is not None for at in caught):
        record.drain_s = round(max(0.0, max(caught) - record.ended_at), 2)
    node = None if record.node == "a" else peers[record.node].peer_id
    after = [
        row["finished_at"]
        for row in by_id.values()
        if row["finished_at"] is not None
        and row["finished_at"] > record.ended_at
        and (record.node == "a" or row["worker_peer"] == node)
    ]
    if after:
        record.resumed_s = round(min(after) - record.ended_at, 2)


# -- the run ------------------------------------------------------------------------------------------------------


def run(
    tmp: Path,
    *,
    tasks: int,
    faults: tuple[Fault, ...] = DEFAULT_FAULTS,
    lease_s: float = 4.0,
    grace_s: float = 0.5,
    settle_s: float = 4.0,
    netns: bool = True,
    drain_timeout: float = 300.0,
) -> dict[str, Any]:
    with running_queue_network(tmp, netns=netns, lease_s=lease_s, grace_s=grace_s) as net:
        peers, lab = net["peers"], net["lab"]
        a = peers["a"]
        planned = sum(fault.down_s + settle_s for fault in faults) + settle_s
        submitter = Submitter(a, tasks, rate=tasks / max(1.0, planned))
        started = time.time()
        submitter.start()
        records: list[FaultRecord] = []
        try:
            time.sleep(settle_s)
            for fault in faults:
                records.append(apply_fault(fault, peers, lab))
                time.sleep(settle_s)
            faults_done = time.time()
            submitter._thread.join(timeout=drain_timeout)

            def all_done() -> bool:
                stats = _tool(a, "queue_stats", {})
                return bool(stats) and len(submitter.accepted) == tasks and stats["counts"]["completed"] >= tasks

            wait_for(all_done, drain_timeout, 0.25, what="every task completed")
            drained = time.time()
        finally:
            submitter.stop()
        for proc in (proc for peer in peers.values() for proc in peer.procs()):
            proc.stop()
        result = check(peers, submitter.accepted, records)
    return {
        "tasks": tasks,
        "lease_s": lease_s,
        "partition_by": net["partition_by"],
        "submit_retries": submitter.retries,
        "wall_s": round(drained - started, 1),
        "drain_after_last_fault_s": round(drained - faults_done, 2),
        "kills": sum(record.kind == "kill9" for record in records),
        "sigterms": sum(record.kind == "sigterm" for record in records),
        "partitions": sum(record.kind in ("partition", "stop") for record in records),
        "faults": [asdict(record) | {"caught_running": len(record.caught_running)} for record in records],
        **result,
    }


def print_report(result: dict[str, Any]) -> None:
    print(
        f"{result['tasks']} tasks, lease {result['lease_s']} s, partitions by {result['partition_by']}, "
        f"{result['wall_s']} s wall; {result['kills']} kill -9, {result['sigterms']} SIGTERM, "
        f"{result['partitions']} partitions"
    )
    print(f"  {'fault':10} {'node':4} {'down s':>6} {'caught':>6} {'resumed s':>9} {'drain s':>8} exit")
    for fault in result["faults"]:
        print(
            f"  {fault['kind']:10} {fault['node']:4} {fault['down_s']:6.1f} {fault['caught_running']:6d} "
            f"{fault['resumed_s'] if fault['resumed_s'] is not None else '-':>9} "
            f"{fault['drain_s'] if fault['drain_s'] is not None else '-':>8} "
            f"{fault['exit_code'] if fault['exit_code'] is not None else ''}"
        )
    keys = [
        "accepted",
        "stored",
        "lost",
        "duplicate_rows",
        "wrong_results",
        "results_recorded",
        "executions_to_the_end",
        "tasks_executed_more_than_once",
        "recorded_result_without_its_execution",
        "lost_attempts_counted",
        "handed_back_unfinished",
        "submit_retries",
        "drain_after_last_fault_s",
        "integrity_check",
        "executed_by",
    ]
    for key in keys:
        print(f"  {key:40} {result[key]}")
    drains = [fault["drain_s"] for fault in result["faults"] if fault["drain_s"] is not None]
    if drains:
        print(f"  median drain after a fault: {statistics.median(drains):.2f} s, max {max(drains):.2f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--lease", type=float, default=4.0, help="SIDECAR_QUEUE_LEASE_SECONDS of every node")
    parser.add_argument("--no-netns", action="store_true", help="partition with SIGSTOP/SIGCONT instead")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-queue-faults-") as tmp:
        result = run(Path(tmp), tasks=args.tasks, lease_s=args.lease, netns=not args.no_netns)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
