"""The task queue across three nodes: durable tasks completed per second, and the
submit-to-result latency of a one-hop remote task, idle and under that load.

    .venv/bin/python -m bench.taskqueue_network            # 4,000 tasks x 3 runs per scenario, 300 latency samples
    .venv/bin/python -m bench.taskqueue_network --quick    # 1,500 tasks x 1 run, 100 samples

Starts three sidecars (a, b, c) on a libp2p network on loopback, each with its own gateway, as separate
processes, default settings (8 worker slots each, 30 s leases) but logging at warning.

Throughput: tasks are submitted through the gateways' REST faces to paused queues (the Python client, not
the queue, bounds the submit rate, so it is kept out of the figure); then the queues are resumed and the clock
runs until every owner's ``queue_stats`` counts its tasks completed.  Three placements of the same work:
all tasks owned by a (``any``: a's own workers and both peers pull), all owned by a but ``remote`` (only b and
c run them: every task crosses the network twice, lease out and result back), and a third owned by each node.
Per-node shares come from each node's worker counters.

Latency: one ``echo`` task at a time, submitted at a with ``placement: {"peer": b}`` and waited for at a
(``task_submit`` + ``task_wait``, two REST calls on a kept-alive connection), after a warm-up, interleaved
with the same task placed ``local`` on a.  Then both again while a drains a pre-filled queue across all three
nodes (the timed tasks have priority 10, so they measure the path, not the queue's depth).

The machine is shared and its load varies by the minute: each throughput scenario runs several times,
interleaved with the others, and the median run is reported with all the rates beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import logging
import statistics
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loadgen import process_cpu_seconds
from tests.procs import Peer, p2p_network, running_network, wait_for

log = logging.getLogger(__name__)

QUIET_P2P = {
    "SIDECAR_PEER_PING_INTERVAL": "2",
    "SIDECAR_PEER_GONE_TIMEOUT": "10",
    "SIDECAR_PEER_EXCHANGE_INTERVAL": "10",
}
"""The node's default liveness timings (the test helper's are faster), so the figures are the defaults'."""


class Client:
    """REST calls to one gateway over a kept-alive connection per thread."""

    def __init__(self, peer: Peer) -> None:
        assert peer.gateway is not None
        self.port = peer.gateway.extra["port"]
        self._local = threading.local()

    def call(self, tool: str, **arguments: Any) -> Any:
        body = json.dumps(arguments).encode()
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                connection.request("POST", f"/tools/execute/{tool}", body, {"content-type": "application/json"})
                response = connection.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # the server closed a connection that sat idle past its keep-alive: open a new one, once
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{tool}: HTTP {response.status}: {answer}")
        return answer["result"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples_ms), 3),
        "p90": round(percentile(samples_ms, 0.90), 3),
        "p99": round(percentile(samples_ms, 0.99), 3),
        "n": len(samples_ms),
    }


def worker_completed(client: Client) -> int:
    stats = client.call("queue_stats", include_worker_stats=True)
    return sum(worker["metrics"]["completed"] for worker in stats["worker_stats"])


def completed(client: Client) -> int:
    return int(client.call("queue_stats")["counts"]["completed"])


def submit_many(client: Client, count: int, metadata: dict[str, Any] | None, clients: int = 8) -> None:
    def one(index: int) -> None:
        client.call("task_submit", task_type="echo", payload={"i": index}, metadata=metadata or {})

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))


def throughput(
    peers: dict[str, Peer], clients: dict[str, Client], owners: dict[str, int], metadata: dict[str, Any] | None
) -> dict[str, Any]:
    """Fill the owners' paused queues, resume them all, time until every task they own is completed."""
    for name in owners:
        clients[name].call("queue_pause", reason="bench: filling")
    for name, count in owners.items():
        submit_many(clients[name], count, metadata)
    target = {name: completed(clients[name]) + count for name, count in owners.items()}
    ran_before = {name: worker_completed(client) for name, client in clients.items()}
    cpu_before = {name: process_cpu_seconds(peer.sidecar.pid) for name, peer in peers.items()}
    started = time.perf_counter()
    for name in owners:
        clients[name].call("queue_resume")
    pending = dict(target)
    while pending:
        time.sleep(0.01)
        for name in list(pending):
            if completed(clients[name]) >= pending[name]:
                del pending[name]
    elapsed = time.perf_counter() - started
    total = sum(owners.values())
    ran = {name: worker_completed(client) - ran_before[name] for name, client in clients.items()}
    cpu = {name: process_cpu_seconds(peer.sidecar.pid) - cpu_before[name] for name, peer in peers.items()}
    return {
        "tasks": total,
        "seconds": round(elapsed, 3),
        "completed_per_s": round(total / elapsed, 1),
        "share": {name: round(count / total, 3) for name, count in ran.items()},
        "sidecar_cpu_ms_per_task": {name: round(1000 * seconds / total, 3) for name, seconds in cpu.items()},
    }


def thirds(tasks: int) -> dict[str, int]:
    return {"a": tasks - 2 * (tasks // 3), "b": tasks // 3, "c": tasks // 3}


def one_task_ms(client: Client, metadata: dict[str, Any], priority: float = 1.0) -> float:
    started = time.perf_counter()
    view = client.call("task_submit", task_type="echo", payload={"t": started}, metadata=metadata, priority=priority)
    done = client.call("task_wait", task_id=view["task_id"], timeout_s=30)
    elapsed = (time.perf_counter() - started) * 1000
    if not done["done"] or done["status"] != "completed":
        raise RuntimeError(f"latency task did not complete: {done}")
    return elapsed


def latency_pairs(
    client: Client, placements: dict[str, dict[str, Any]], count: int, until: threading.Event | None = None
) -> dict[str, list[float]]:
    """``count`` samples of each placement, interleaved so that all see the same machine noise."""
    found: dict[str, list[float]] = {name: [] for name in placements}
    for _ in range(count):
        for name, metadata in placements.items():
            sample = one_task_ms(client, metadata, priority=10.0)
            if until is not None and until.is_set():
                return found  # the load ended during this sample: it does not count
            found[name].append(sample)
    return found


def latency_under_load(
    clients: dict[str, Client], load: int, samples: int, placements: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One-hop latency while a's pre-filled queue drains across the three nodes."""
    a = clients["a"]
    a.call("queue_pause", reason="bench: filling")
    submit_many(a, load, None)
    target = completed(a) + load
    done = threading.Event()

    def watch() -> None:
        while completed(a) < target:
            time.sleep(0.02)
        done.set()

    started = time.perf_counter()
    a.call("queue_resume")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    found = latency_pairs(a, placements, samples, until=done)
    watcher.join()
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"load_tasks": load, "drain_s": round(elapsed, 3)}
    result.update({name: latency_summary(values) for name, values in found.items() if values})
    return result


def run(
    tmp: Path, *, tasks: int = 4000, repeats: int = 3, samples: int = 300, warmup: int = 50, load: int | None = None
) -> dict[str, Any]:
    """Start the three nodes in ``tmp``, measure, stop them; returns the figures (see ``markdown``).

    Each throughput scenario runs ``repeats`` times, interleaved, and the run with the median rate is kept.
    """
    peers = p2p_network(
        tmp,
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=("a", "b", "c"),
        gateway_env={"GATEWAY_LOG_LEVEL": "warning"},
        env={name: QUIET_P2P for name in ("a", "b", "c")},
        SIDECAR_LOG_LEVEL="warning",
    )
    results: dict[str, Any] = {"tasks": tasks, "repeats": repeats, "samples": samples, "warmup": warmup}
    with running_network(peers):
        a, b, c = peers["a"], peers["b"], peers["c"]
        for peer in (a, b, c):
            others = [other.peer_id for other in (a, b, c) if other is not peer]
            wait_for(
                lambda peer=peer, others=others: (
                    set(others) <= set(peer.peers(status_filter="connected", capability_filter="task:echo"))
                ),
                60,
                0.2,
                what=f"{peer.name} sees both others running echo",
            )
        clients = {name: Client(peer) for name, peer in peers.items()}
        placements: dict[str, dict[str, Any]] = {
            "remote_b": {"placement": {"peer": b.peer_id}},
            "local_a": {"placement": "local"},
        }
        # warm-up: every path once, so connections and streams exist
        latency_pairs(clients["a"], placements, warmup)
        throughput(peers, clients, {"a": min(tasks, 500)}, None)
        scenarios: dict[str, Callable[[], dict[str, Any]]] = {
            "a_any": lambda: throughput(peers, clients, {"a": tasks}, None),
            "a_remote": lambda: throughput(peers, clients, {"a": tasks}, {"placement": "remote"}),
            "spread": lambda: throughput(peers, clients, thirds(tasks), None),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
        for _ in range(repeats):
            for name, measure in scenarios.items():
                runs[name].append(measure())
        results["throughput"] = {}
        for name, measured in runs.items():
            ordered = sorted(measured, key=lambda row: row["completed_per_s"])
            median = dict(ordered[len(ordered) // 2])
            median["all_per_s"] = [row["completed_per_s"] for row in measured]
            results["throughput"][name] = median
        idle = latency_pairs(clients["a"], placements, samples)
        results["latency_ms"] = {name: latency_summary(values) for name, values in idle.items()}
        ratio = statistics.median(idle["remote_b"]) / statistics.median(idle["local_a"])
        results["latency_ms"]["ratio_p50"] = round(ratio, 2)
        results["latency_under_load_ms"] = latency_under_load(clients, load or tasks * 3, samples, placements)
    return results


WIDTH = 118
"""Prose paragraphs are wrapped like the rest of docs/."""


SCENARIOS = {
    "a_any": "owned by a, placement `any`",
    "a_remote": "owned by a, placement `remote` (every task over the network)",
    "spread": "a third owned by each node, placement `any`",
}
"""The throughput scenarios' names in the results, and how docs/benchmarks.md labels them."""


def markdown(results: dict[str, Any]) -> str:
    """The section for docs/benchmarks.md."""
    names = SCENARIOS
    lines = [
        "## Task queue across three nodes",
        "",
        "```bash",
        ".venv/bin/python -m bench.taskqueue_network",
        "```",
        "",
        textwrap.fill(
            "Three sidecars on a libp2p network on loopback, each with a gateway, separate processes, "
            "default settings (8 worker slots per node, 30 s leases, SQLite `synchronous=NORMAL`). `echo` tasks "
            "are submitted to paused queues through the gateways, then the queues are resumed: the clock runs from "
            "the resume until every owner counts its tasks completed, each one leased, run and its result recorded "
            f"in its owner's database. Each scenario ran {results['repeats']} time(s), interleaved with the others; "
            "the median run is shown "
            "(every run's rate in the last column).",
            WIDTH,
        ),
        "",
        "| work | tasks | completed per s | executed on a / b / c | sidecar CPU per task a / b / c "
        "| all runs (per s) |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in results["throughput"].items():
        share = " / ".join(f"{100 * row['share'][name]:.0f}%" for name in ("a", "b", "c"))
        cpu = " / ".join(f"{row['sidecar_cpu_ms_per_task'][name]:.3f}" for name in ("a", "b", "c"))
        every = ", ".join(f"{rate:,.0f}" for rate in row.get("all_per_s", [row["completed_per_s"]]))
        lines.append(
            f"| {names.get(key, key)} | {row['tasks']:,} | **{row['completed_per_s']:,.0f}** | {share} | "
            f"{cpu} ms | {every} |"
        )
    latency = results["latency_ms"]
    load = results["latency_under_load_ms"]
    lines += [
        "",
        textwrap.fill(
            "Submit-to-result latency: one task at a time, `task_submit` + `task_wait` at a (two REST calls on a "
            f"kept-alive connection), the two placements interleaved, {latency['remote_b']['n']} samples each after "
            f"{results['warmup']} warm-up; then the same while a drains {load['load_tasks']:,} queued tasks over all "
            f"three nodes ({load['drain_s']:.1f} s; the timed tasks have priority 10, so they measure the path rather "
            "than the queue's depth):",
            WIDTH,
        ),
        "",
        "| task | p50 | p90 | p99 | n |",
        "|---|---|---|---|---|",
        _latency_row("**one hop**: placed on b, read at a, idle", latency["remote_b"]),
        _latency_row("placed `local` on a, idle (for comparison)", latency["local_a"]),
    ]
    if "remote_b" in load:
        lines.append(_latency_row("**one hop** under the throughput load", load["remote_b"]))
    if "local_a" in load:
        lines.append(_latency_row("placed `local` on a under the throughput load", load["local_a"]))
    lines += ["", f"Idle, the remote hop costs {latency['ratio_p50']}x the local task at p50."]
    return "\n".join(lines) + "\n"


def _latency_row(name: str, row: dict[str, float]) -> str:
    return f"| {name} | {row['p50']:.2f} ms | {row['p90']:.2f} ms | {row['p99']:.2f} ms | {row['n']} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,500 tasks, one run each, 100 samples")
    parser.add_argument("--tasks", type=int, help="tasks per throughput run (default 4000)")
    parser.add_argument("--repeats", type=int, help="runs per throughput scenario (default 3)")
    parser.add_argument("--samples", type=int, help="latency samples per series (default 300)")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    args = parser.parse_args()
    tasks = args.tasks or (1500 if args.quick else 4000)
    repeats = args.repeats or (1 if args.quick else 3)
    samples = args.samples or (100 if args.quick else 300)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-queue-net-") as tmp:
        results = run(Path(tmp), tasks=tasks, repeats=repeats, samples=samples, warmup=20 if args.quick else 50)
    if args.json:
        print(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
