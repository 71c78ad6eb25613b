"""Where a burst of work runs: N tasks of 0.2 s submitted at one node of a network, wall time against the
ideal (total work / total worker slots) and each node's share; and what a submit costs the owner as its
peers grow.

    .venv/bin/python -m bench.taskqueue_spread             # every scenario below, 3 runs each
    .venv/bin/python -m bench.taskqueue_spread --quick     # one run each
    .venv/bin/python -m bench.taskqueue_spread --only 3    # the three-node scenarios only

Scenarios (real processes on loopback, default queue settings: 8 worker slots per node, 30 s leases):

* ``3 nodes``: a, b and c, each a sidecar with its gateway; 96 ``sleep`` tasks of 0.25 s submitted at a
  through its REST face by 8 client threads, as a new user would, right after the network formed.
* ``3 nodes, b and c without gateways``: the same, b and c run the sidecar only.
* ``20 nodes``: node 0 (with its gateway) and 19 sidecar-only nodes that bootstrap from it; 400 tasks of
  0.2 s submitted at node 0.
* ``submit cost``: one client, sequential ``task_submit`` calls (``echo`` tasks) at node 0 of the 20-node
  network and at a lone node started beside it, interleaved in blocks so both see the same machine noise;
  p50 / p90 and their ratio.

Wall time runs from the first submit to the last ``finished_at`` recorded by the owner; the shares come
from ``executed_by`` in the owner's records.  The machine has two cores and 20 sidecars share them, so the
20-node figures include that contention (the ideal assumes none).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import statistics
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.loadgen import process_cpu_seconds
from bench.taskqueue_network import Client, latency_summary
from tests.procs import Peer, gateway_proc, p2p_network, sidecar_proc, start_all, wait_for

QUIET = {
    "SIDECAR_LOG_LEVEL": "warning",
    # the node's default liveness and discovery timings (the test helpers' are faster), as a new user has them
    "SIDECAR_PEER_PING_INTERVAL": "2",
    "SIDECAR_PEER_GONE_TIMEOUT": "10",
    "SIDECAR_PEER_EXCHANGE_INTERVAL": "10",
    "SIDECAR_REDIAL_MAX_BACKOFF": "30",
}
SLOTS = 8
"""Worker slots per node: the default ``SIDECAR_WORKER_CONCURRENCY``."""


@contextlib.contextmanager
def owner_first(first: list[Peer], rest: list[Peer]) -> Iterator[None]:
    """Start the owner's processes and wait until they are ready, then the others: workers join a running node,
    and the burst comes as soon as the owner lists them connected (what a new user does)."""
    procs = [proc for peer in first + rest for proc in peer.procs()]
    try:
        for peer in first:
            start_all(*peer.procs(), timeout=60)
        start_all(*[proc for peer in rest for proc in peer.procs()], timeout=120)
        for peer in first + rest:
            if peer.gateway is not None:
                peer.gateway.health_url = peer.gateway.extra["url"] + "/health/ready"
                peer.gateway.wait_healthy(30)
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


def connected(peer: Peer, others: list[Peer]) -> bool:
    found = peer.peers(status_filter="connected", limit=1000)
    return {other.peer_id for other in others} <= set(found)


def burst(client: Client, count: int, seconds: float, clients: int = 8) -> dict[str, Any]:
    """Submit ``count`` sleep tasks as fast as ``clients`` threads can; wait for all; where did they run."""
    submit_ms: list[float] = []

    def one(index: int) -> str:
        started = time.perf_counter()
        view = client.call("task_submit", task_type="sleep", payload={"seconds": seconds, "result": index})
        submit_ms.append((time.perf_counter() - started) * 1000)
        return str(view["task_id"])

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        task_ids = list(pool.map(one, range(count)))
    submitted_s = time.time() - t0
    finished: list[float] = []
    ran_on: Counter[str] = Counter()
    for task_id in task_ids:
        done = client.call("task_wait", task_id=task_id, timeout_s=120)
        if not done["done"] or done["status"] != "completed":
            raise RuntimeError(f"task {task_id} did not complete: {done}")
        finished.append(float(done["finished_at"]))
        ran_on[str(done.get("executed_by"))] += 1
    return {
        "tasks": count,
        "task_s": seconds,
        "wall_s": round(max(finished) - t0, 3),
        "submitted_in_s": round(submitted_s, 3),
        "submit_ms": latency_summary(submit_ms),
        "ran_on": dict(ran_on),
    }


def summarize(runs: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """The median run (by wall time), with every run's wall time and the ideal beside it."""
    ordered = sorted(runs, key=lambda row: row["wall_s"])
    median = dict(ordered[len(ordered) // 2])
    ideal = median["tasks"] * median["task_s"] / (nodes * SLOTS)
    median["ideal_s"] = round(ideal, 3)
    median["x_ideal"] = round(median["wall_s"] / ideal, 2)
    median["all_wall_s"] = [row["wall_s"] for row in runs]
    shares = sorted(median["ran_on"].values(), reverse=True)
    median["max_share"] = round(shares[0] / median["tasks"], 3)
    median["nodes_used"] = len(shares)
    return median


def three_nodes(tmp: Path, *, gateways: tuple[str, ...], repeats: int) -> dict[str, Any]:
    peers = p2p_network(
        tmp,
        ["a", "b", "c"],
        bootstrap={"b": ["a"], "c": ["a"]},
        gateways=gateways,
        gateway_env={"GATEWAY_LOG_LEVEL": "warning"},
        env={name: QUIET for name in ("a", "b", "c")},
    )
    a, b, c = peers["a"], peers["b"], peers["c"]
    with owner_first([a], [b, c]):
        wait_for(lambda: connected(a, [b, c]), 60, 0.1, what="a connected to b and c")
        client = Client(a)
        runs = [burst(client, 96, 0.25) for _ in range(repeats)]
    names = {peer.peer_id: name for name, peer in peers.items()}
    result = summarize(runs, 3)
    result["ran_on"] = {names.get(key, key): value for key, value in result["ran_on"].items()}
    return result


def twenty_nodes(tmp: Path, *, repeats: int, nodes: int = 20, samples: int = 200) -> dict[str, Any]:
    names = [f"n{index:02d}" for index in range(nodes)]
    peers = p2p_network(
        tmp,
        names,
        bootstrap={name: [names[0]] for name in names[1:]},
        gateways=(names[0],),
        gateway_env={"GATEWAY_LOG_LEVEL": "warning"},
        env={name: QUIET for name in names},
    )
    lone = sidecar_proc(tmp, "lone", **QUIET)
    lone_gateway = gateway_proc(tmp, "lone-gateway", endpoint=lone.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
    lone_peer = Peer("lone", lone, "", lone_gateway)
    first = peers[names[0]]
    others = [peers[name] for name in names[1:]]
    with owner_first([first, lone_peer], others):
        wait_for(lambda: connected(first, others), 120, 0.2, what=f"{names[0]} connected to {nodes - 1} peers")
        client = Client(first)
        idle = idle_cores(peers, seconds=10.0)
        runs = [burst(client, 400, 0.2) for _ in range(repeats)]
        cost = submit_cost(client, Client(lone_peer), samples)
    labels = {peer.peer_id: name for name, peer in peers.items()}
    result = summarize(runs, nodes)
    result["ran_on"] = {labels.get(key, key): value for key, value in result["ran_on"].items()}
    result["submit_cost"] = cost
    result["idle_cores"] = idle
    return result


def idle_cores(peers: dict[str, Peer], seconds: float) -> float:
    """Cores the sidecars use between them while nothing is submitted (pings, timers, anything that polls)."""
    pids = [peer.sidecar.pid for peer in peers.values()]
    before = sum(process_cpu_seconds(pid) for pid in pids)
    time.sleep(seconds)
    return round((sum(process_cpu_seconds(pid) for pid in pids) - before) / seconds, 3)


def submit_cost(networked: Client, lone: Client, samples: int, block: int = 20) -> dict[str, Any]:
    """Sequential ``task_submit`` at the owner with its peers and at a lone node, interleaved in blocks."""
    found: dict[str, list[float]] = {"with_peers": [], "lone": []}
    for client in (networked, lone):  # warm-up
        for _ in range(block):
            client.call("task_submit", task_type="echo", payload={})
    while len(found["lone"]) < samples:
        for name, client in (("with_peers", networked), ("lone", lone)):
            for _ in range(block):
                started = time.perf_counter()
                client.call("task_submit", task_type="echo", payload={"t": started})
                found[name].append((time.perf_counter() - started) * 1000)
    result: dict[str, Any] = {name: latency_summary(values) for name, values in found.items()}
    result["ratio_p50"] = round(statistics.median(found["with_peers"]) / statistics.median(found["lone"]), 2)
    return result


def run(tmp: Path, *, repeats: int = 3, only: str | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"repeats": repeats}
    if only in (None, "3"):
        (tmp / "3").mkdir()
        results["three"] = three_nodes(tmp / "3", gateways=("a", "b", "c"), repeats=repeats)
        (tmp / "3s").mkdir()
        results["three_sidecar_only"] = three_nodes(tmp / "3s", gateways=("a",), repeats=repeats)
    if only in (None, "20"):
        (tmp / "20").mkdir()
        results["twenty"] = twenty_nodes(tmp / "20", repeats=repeats)
    return results


WIDTH = 118


def markdown(results: dict[str, Any]) -> str:
    rows = {
        "three": "3 nodes with gateways, 96 x 0.25 s at a",
        "three_sidecar_only": "3 nodes, b and c sidecar only, 96 x 0.25 s at a",
        "twenty": "20 nodes (19 sidecar only), 400 x 0.2 s at node 0",
    }
    lines = [
        "## Where a burst runs: spread across nodes",
        "",
        "```bash",
        ".venv/bin/python -m bench.taskqueue_spread",
        "```",
        "",
        textwrap.fill(
            "Real processes on loopback, default queue settings (8 worker slots per node). `sleep` tasks are "
            "submitted at one node through its gateway's REST face by 8 client threads right after the network "
            "formed; wall time runs from the first submit to the last result recorded by the owner. Ideal = total "
            f"work / total slots. Median of {results['repeats']} run(s); every run's wall time in the last column.",
            WIDTH,
        ),
        "",
        "| scenario | wall | ideal | x ideal | largest share | nodes used | submits took | all runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in rows.items():
        row = results.get(key)
        if row is None:
            continue
        every = ", ".join(f"{value:.2f}" for value in row["all_wall_s"])
        lines.append(
            f"| {label} | {row['wall_s']:.2f} s | {row['ideal_s']:.2f} s | **{row['x_ideal']:.2f}** | "
            f"{100 * row['max_share']:.0f}% | {row['nodes_used']} | {row['submitted_in_s']:.2f} s | {every} s |"
        )
    for key in ("three", "three_sidecar_only"):
        row = results.get(key)
        if row is not None:
            share = ", ".join(f"{name} {count}" for name, count in sorted(row["ran_on"].items()))
            lines += ["", f"{rows[key]}: tasks per node {share}."]
    cost = results.get("twenty", {}).get("submit_cost")
    if cost is not None:
        lines += [
            "",
            textwrap.fill(
                "`task_submit` cost at the owner, one client, sequential, interleaved in blocks of 20: with 19 "
                f"peers connected p50 {cost['with_peers']['p50']:.2f} ms / p90 {cost['with_peers']['p90']:.2f} ms, "
                f"on a lone node p50 {cost['lone']['p50']:.2f} ms / p90 {cost['lone']['p90']:.2f} ms: "
                f"**{cost['ratio_p50']}x** at p50 ({cost['lone']['n']} samples each).",
                WIDTH,
            ),
            "",
            f"The 20 sidecars use {results['twenty']['idle_cores']} of a core between them while idle (10 s).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per scenario")
    parser.add_argument("--repeats", type=int, help="runs per scenario (default 3)")
    parser.add_argument("--only", choices=("3", "20"), help="only the three-node or the twenty-node scenarios")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-spread-") as tmp:
        results = run(Path(tmp), repeats=repeats, only=args.only)
    if args.json:
        print(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
