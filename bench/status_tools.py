"""What the status tools cost in the sidecar: ``p2p_service_status`` and ``node_info`` against ``p2p_echo``.

    .venv/bin/python -m bench.status_tools [--baseline main] [--calls 400] [--rounds 3] [--save]

Probes and dashboards call the two status tools.  For each tool, one client
calls it ``--calls`` times in a row through the REST face (one kept-alive
connection) and three figures are taken:

* end to end: the p50 of the HTTP round trip;
* sidecar time: the mean time the sidecar spent on a call, from its own
  ``sidecar_tool_call_seconds`` histogram (sum over count, read before and after);
* sidecar CPU: the sidecar process's CPU time over the calls (``/proc``).

Each configuration runs twice, with an empty peer table and with 10,000 known
peers (the default ``SIDECAR_MAX_KNOWN_PEERS``, loaded from the peer store at
start).  With ``--baseline REF`` the same stacks also run from that git ref's
tree (exported with ``git archive``), and the two versions alternate round by
round, so both see the same machine; medians of the rounds are reported.
``--save`` writes the table to ``bench/status_tools.md`` for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import baseline, saved_figures
from bench.loadgen import process_cpu_seconds
from p2p_sidecar.node.peer_store import PeerStore
from p2p_sidecar.node.peers import PeerRecord
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

FIGURES = Path(__file__).resolve().parent / "status_tools.md"
TOOLS = {"p2p_echo": {"message": "status bench"}, "p2p_service_status": {}, "node_info": {}}
FULL_TABLE = 10_000


def fill_peer_store(data_dir: Path, peers: int) -> None:
    """``peers`` known peers, without addresses (nothing to dial), as a long-running node would remember them."""
    if not peers:
        return
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = PeerStore.open(data_dir)
    try:
        now = time.time()
        store.save([PeerRecord(f"12D3KooWbench{n:08d}", sources={"exchange"}, first_seen=now) for n in range(peers)])
    finally:
        store.close()


@contextlib.contextmanager
def stack(tmp: Path, name: str, peers: int, tree: Path | None) -> Iterator[tuple[Proc, Proc]]:
    sidecar = sidecar_proc(tmp, f"{name}-sidecar", SIDECAR_LOG_LEVEL="warning", SIDECAR_MAX_KNOWN_PEERS=str(FULL_TABLE))
    fill_peer_store(sidecar.extra["data_dir"], peers)
    if tree is not None:
        baseline.in_tree(sidecar, tree)
    gateway = gateway_proc(tmp, f"{name}-gateway", endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 30, what=f"{name} ready")
        yield gateway, sidecar


def _histogram(admin_port: int) -> tuple[float, float]:
    """(sum, count) of the sidecar's tool-call histogram."""
    _, text = http_json("GET", f"http://127.0.0.1:{admin_port}/metrics")
    values = {}
    for line in str(text).splitlines():
        if line.startswith(("sidecar_tool_call_seconds_sum", "sidecar_tool_call_seconds_count")):
            key, value = line.split()
            values[key] = float(value)
    return values["sidecar_tool_call_seconds_sum"], values["sidecar_tool_call_seconds_count"]


def measure(gateway: Proc, sidecar: Proc, tool: str, calls: int) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.extra["port"], timeout=10)
    body = json.dumps(TOOLS[tool])

    def call() -> None:
        connection.request("POST", f"/tools/execute/{tool}", body, {"content-type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{tool}: {response.status} {payload[:200]!r}")

    for _ in range(30):
        call()
    total_before, count_before = _histogram(sidecar.extra["admin_port"])
    cpu_before = process_cpu_seconds(sidecar.pid)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    cpu = process_cpu_seconds(sidecar.pid) - cpu_before
    total_after, count_after = _histogram(sidecar.extra["admin_port"])
    connection.close()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "sidecar_ms": (total_after - total_before) / max(1.0, count_after - count_before) * 1000,
        "sidecar_cpu_ms": cpu / calls * 1000,
    }


def run(*, calls: int, rounds: int, baseline_ref: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {"load_before": baseline.load_average(), "calls": calls, "rounds": rounds, "rows": []}
    versions = ["this"] + (["baseline"] if baseline_ref else [])
    if baseline_ref:
        results["baseline"] = baseline.describe(baseline_ref)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-status-") as tmp_name:
        tmp = Path(tmp_name)
        tree = baseline.export(baseline_ref, tmp / "baseline-tree") if baseline_ref else None
        for peers in (0, FULL_TABLE):
            with contextlib.ExitStack() as stacks:
                running_stacks = {
                    version: stacks.enter_context(
                        stack(tmp, f"{version}-{peers}", peers, tree if version == "baseline" else None)
                    )
                    for version in versions
                }
                samples: dict[tuple[str, str], list[dict[str, float]]] = {}
                order = list(versions)
                for _ in range(rounds):
                    for version in order:
                        gateway, sidecar = running_stacks[version]
                        for tool in TOOLS:
                            samples.setdefault((version, tool), []).append(measure(gateway, sidecar, tool, calls))
                    order.reverse()
                for (version, tool), runs in samples.items():
                    row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                    results["rows"].append({"version": version, "peers": peers, "tool": tool, **row})
    results["load_after"] = baseline.load_average()
    return results


def markdown(results: dict[str, Any]) -> str:
    base = results.get("baseline")
    lines = [
        "| peers known | tool | version | end to end p50 | sidecar time per call | sidecar CPU per call |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(results["rows"], key=lambda r: (r["peers"], list(TOOLS).index(r["tool"]), r["version"])):
        version = "this branch" if row["version"] == "this" else f"before ({base})"
        lines.append(
            f"| {row['peers']:,} | `{row['tool']}` | {version} | {row['p50_ms']:.2f} ms | "
            f"{row['sidecar_ms'] * 1000:.0f} µs | {row['sidecar_cpu_ms'] * 1000:.0f} µs |"
        )
    lines += [
        "",
        f"{results['calls']} sequential calls per tool and round, {results['rounds']} rounds"
        + (", the two versions alternating" if base else "")
        + f"; medians of the rounds. Load average {results['load_before']} before, {results['load_after']} after "
        "(2 cores, shared with other engineers' test runs).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="also run this git ref's code (e.g. main), alternating with this tree")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--save", action="store_true", help=f"write {FIGURES.relative_to(FIGURES.parents[2])}")
    args = parser.parse_args()
    results = run(calls=args.calls, rounds=args.rounds, baseline_ref=args.baseline)
    text = markdown(results)
    print(text)
    if args.save:
        command = ".venv/bin/python -m bench.status_tools" + (f" --baseline {args.baseline}" if args.baseline else "")
        saved_figures.save(FIGURES, text, command)


if __name__ == "__main__":
    main()


def saved_section() -> list[str]:
    """docs/benchmarks.md's section on the status tools, from the last ``--save`` (a separate run)."""
    return saved_figures.section(
        FIGURES,
        "## Status tools: p2p_service_status and node_info",
        [
            "Earlier figures put them at 3.5-3.7 ms per call at one client against 1.4 ms for `p2p_echo`. A py-spy "
            "profile of the "
            "sidecar under a stream of `p2p_service_status` calls put 39% of its busy time in "
            "`Node.advertised_addrs()`, which built the advertised multiaddrs from the libp2p host (py-multiaddr "
            "objects parsed and printed, about 100 µs, plus a hostname lookup per call with a wildcard bind) and ran "
            "three times per status call (once itself, twice inside `Node.info()`), and 27% in `Node.info()`, which "
            "the status tool called for one field. With a full peer table (10,000 known peers, the default "
            "`SIDECAR_MAX_KNOWN_PEERS`) counting peers by state, five scans of the table per call, cost 2 ms more. "
            "Now the node keeps its advertised addresses until its listeners change (or 30 s pass, for a wildcard "
            "bind's interfaces), the peer table keeps its per-state counts as records change state, and the status "
            "tool reads what it reports directly. What is left of `node_info` with 10,000 peers is one scan of the "
            "table for the connected members. Target: under 1 ms of sidecar time per call.",
        ],
    )
