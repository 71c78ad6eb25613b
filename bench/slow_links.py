"""Three nodes on links that are not loopback: delay and loss between network namespaces.

    sudo .venv/bin/python -m bench.slow_links                 # the figures in docs/benchmarks.md
    sudo .venv/bin/python -m bench.slow_links --calls 50 --tasks 100 --workflows 4   # shorter

Nodes a, b and c (each a sidecar and a gateway, in its own namespace; ``bench/linklab.py``) are joined point
to point: a-b and a-c by links of 50 ms one-way delay and 1% loss in each direction (100 ms round trips), and
b-c by a link of 200 ms and 5% loss (400 ms round trips).  b and c bootstrap from a and find each other
through peer exchange; every setting is the default (pings every 2 s, a peer gone after 10 s without an
answer, 10 s request deadlines, 30 s leases, 8 worker slots) but the one tool served to peers, in a closed
network (a shared secret).  The harness talks to
the gateways over separate management links without delay.  Measured, in order:

* bootstrap: from every process healthy to every node connected to both others;
* remote tool calls (``p2p_remote_call_tool`` of ``hash_content``, one at a time) a->b, a->c and b->c: the
  call's time inside the calling node (``elapsed_ms``), p50 / p99 / max, and failures;
* task flow: ``hash`` tasks submitted at a with ``placement: remote`` (b and c pull them over their 50 ms
  links), and tasks submitted at b pinned to c (over the 200 ms / 5% link): tasks/s from the first submit to
  the last completion, and where they ran;
* workflows: diamond workflows at a (A anywhere, B on b, C on c, D anywhere): time to completion;
* liveness: pings that failed on each link during all that (a slow ping must not make a peer gone), then
  b cut off (its two links drop everything): how long until a sees it gone, and back after the links heal;
  then c killed with SIGKILL: how long until a and b see it gone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.linklab import Link, LinkLab
from tests.procs import Peer, gateway_proc, http_json, make_identity, sidecar_proc, start_all, wait_for

LINKS = {("a", "b"): Link(50, 0.01), ("a", "c"): Link(50, 0.01), ("b", "c"): Link(200, 0.05)}
NAMES = ["a", "b", "c"]
LAB_ADMIN_TOKEN = "slow-links-lab-admin-token"


@dataclass
class LabPeer(Peer):
    mgmt: str = ""

    @property
    def admin(self) -> str:
        return f"http://{self.mgmt}:8002"

    @property
    def url(self) -> str:
        return f"http://{self.mgmt}:8000"


def build(lab: LinkLab, tmp: Path, **settings: str) -> dict[str, LabPeer]:
    peers: dict[str, LabPeer] = {}
    for name in NAMES:
        peer_id = make_identity(tmp / f"{name}-data")
        mgmt = lab.mgmt(name)
        sidecar = sidecar_proc(
            tmp,
            name,
            SIDECAR_LISTEN_ADDRS=f"/ip4/{lab.address(name)}/tcp/4001",
            SIDECAR_ADMIN_HOST=mgmt,
            SIDECAR_ADMIN_TOKEN=LAB_ADMIN_TOKEN,  # the namespace's address is not loopback (only /health is read)
            SIDECAR_ADMIN_PORT="8002",
            SIDECAR_BRIDGE_ENDPOINT="tcp://127.0.0.1:8001",
            SIDECAR_REMOTE_TOOLS_ALLOW="hash_content",
            SIDECAR_LOG_LEVEL="info",
            **settings,
        )
        sidecar.prefix = lab.exec_prefix(name)
        sidecar.extra.update(p2p_port=4001, admin_port=8002, endpoint="tcp://127.0.0.1:8001")
        sidecar.health_url = f"http://{mgmt}:8002/health"
        gateway = gateway_proc(
            tmp, f"{name}-gateway", endpoint="tcp://127.0.0.1:8001", GATEWAY_HOST=mgmt, GATEWAY_PORT="8000",
            GATEWAY_LOG_LEVEL="warning",
        )  # fmt: skip
        gateway.prefix = lab.exec_prefix(name)
        gateway.extra.update(port=8000, url=f"http://{mgmt}:8000")
        gateway.health_url = f"http://{mgmt}:8000/health/ready"
        peers[name] = LabPeer(name, sidecar, peer_id, gateway, host=lab.address(name), mgmt=mgmt)
    for name in ("b", "c"):
        peers[name].sidecar.env["SIDECAR_BOOTSTRAP_PEERS"] = peers["a"].multiaddr
    return peers


@contextlib.contextmanager
def running_lab(tmp: Path, **settings: str) -> Iterator[tuple[LinkLab, dict[str, LabPeer]]]:
    why_not = LinkLab.available()
    if why_not is not None:
        raise RuntimeError(f"cannot make network namespaces here: {why_not}")
    lab = LinkLab.create(NAMES, LINKS)
    peers: dict[str, LabPeer] = {}
    try:
        peers = build(lab, tmp, **settings)
        yield lab, peers
    finally:
        for peer in reversed(list(peers.values())):
            for proc in reversed(peer.procs()):
                proc.stop()
        lab.close()


def call(peer: LabPeer, tool: str, arguments: dict[str, Any], timeout: float = 60.0) -> tuple[int, Any]:
    return http_json("POST", f"{peer.url}/tools/execute/{tool}", arguments, timeout=timeout)


def ok(peer: LabPeer, tool: str, **arguments: Any) -> Any:
    status, body = call(peer, tool, arguments)
    assert status == 200, (peer.name, tool, arguments, status, body)
    return body["result"]


def connected(peer: LabPeer) -> set[str]:
    return {entry["peer_id"] for entry in ok(peer, "peer_list", status_filter="connected")["peers"]}


def runs_hash(peer: LabPeer) -> set[str]:
    listing = ok(peer, "peer_list", status_filter="connected", capability_filter="task:hash")
    return {entry["peer_id"] for entry in listing["peers"]}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p99": round(percentile(values, 0.99), 1),
        "max": round(max(values), 1),
    }


def remote_calls(caller: LabPeer, target: LabPeer, count: int) -> dict[str, Any]:
    elapsed: list[float] = []
    failures: list[str] = []
    for n in range(count):
        arguments = {"tool_name": "hash_content", "args": {"data": f"call {n}"}, "remote_peer_id": target.peer_id}
        status, body = call(caller, "p2p_remote_call_tool", arguments)
        if status == 200:
            elapsed.append(body["result"]["elapsed_ms"])
        else:
            failures.append(f"{status} {body.get('error', {}).get('code')}")
    return {**summary(elapsed), "failures": len(failures), "errors": sorted(set(failures))}


def finished(owner: LabPeer) -> int:
    counts = ok(owner, "queue_stats")["counts"]
    return counts.get("completed", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)


def submit(owner: LabPeer, n: int, placement: Any) -> str:
    task = ok(owner, "task_submit", task_type="hash", payload={"data": f"task {n}"}, metadata={"placement": placement})
    return str(task["task_id"])


def task_flow(owner: LabPeer, count: int, placement: Any) -> dict[str, Any]:
    before = finished(owner)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: submit(owner, n, placement), range(count)))

    wait_for(lambda: finished(owner) >= before + count, 600, 0.2, what=f"{count} tasks done at {owner.name}")
    seconds = time.monotonic() - started
    ran: dict[str, int] = {}
    failed = 0
    for task_id in ids:
        view = ok(owner, "task_status", task_id=task_id)
        if view["status"] != "completed":
            failed += 1
        ran[view["executed_by"]] = ran.get(view["executed_by"], 0) + 1
    return {"tasks": count, "seconds": round(seconds, 2), "tasks_per_s": round(count / seconds, 1),
            "failed": failed, "ran_on": ran}  # fmt: skip


def workflows(owner: LabPeer, b: LabPeer, c: LabPeer, count: int) -> dict[str, Any]:
    def one(n: int) -> float:
        steps = [
            {"step_id": "A", "task_type": "hash", "payload": {"data": f"seed {n}"}},
            {"step_id": "B", "task_type": "hash", "payload": {"data": "left:{{steps.A.output.digest}}"},
             "metadata": {"placement": {"peer": b.peer_id}}},
            {"step_id": "C", "task_type": "hash", "payload": {"data": "right:{{steps.A.output.digest}}"},
             "metadata": {"placement": {"peer": c.peer_id}}},
            {"step_id": "D", "task_type": "hash",
             "payload": {"data": "{{steps.B.output.digest}}+{{steps.C.output.digest}}"}},
        ]  # fmt: skip
        started = time.monotonic()
        workflow_id = ok(owner, "workflow_submit", name=f"diamond {n}", steps=steps)["workflow_id"]
        wait_for(lambda: ok(owner, "workflow_status", workflow_id=workflow_id)["status"] != "running", 300, 0.1,
                 what="workflow")  # fmt: skip
        result = ok(owner, "workflow_result", workflow_id=workflow_id)
        assert result["status"] == "completed", result
        return (time.monotonic() - started) * 1000

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        times = list(pool.map(one, range(count)))
    return {**summary(times), "completed": len(times)}


def pings_failed(peer: LabPeer, other: LabPeer) -> dict[str, Any]:
    metrics = ok(peer, "peer_metrics", peer_id=other.peer_id)
    return {key: metrics[key] for key in ("pings_ok", "pings_failed", "latency_ms", "max_rtt_ms")}


def time_until(predicate: Any, timeout: float = 120.0) -> float:
    started = time.monotonic()
    wait_for(predicate, timeout, 0.1, what="condition")
    return round(time.monotonic() - started, 2)


def status_of(peer: LabPeer, other: LabPeer) -> str | None:
    entry = {e["peer_id"]: e for e in ok(peer, "peer_list")["peers"]}.get(other.peer_id)
    return entry["status"] if entry else None


def gone_lines(peer: LabPeer) -> list[str]:
    return [line for line in peer.sidecar.log_tail(100_000).splitlines() if " gone: " in line]


def run(tmp: Path, *, calls: int, tasks: int, pinned: int, workflow_count: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "links": {f"{a}-{b}": link.__dict__ for (a, b), link in LINKS.items()},
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "load_average": round(os.getloadavg()[0], 1),
    }
    with running_lab(tmp) as (lab, peers):
        a, b, c = peers["a"], peers["b"], peers["c"]
        result["peer_ids"] = {name: peer.peer_id for name, peer in peers.items()}
        start_all(*[proc for peer in peers.values() for proc in peer.procs()], timeout=90)
        everyone = {peer.peer_id for peer in peers.values()}
        result["bootstrap_s"] = time_until(
            lambda: all(connected(peer) == everyone - {peer.peer_id} for peer in peers.values()), 120
        )
        wait_for(lambda: all(runs_hash(peer) == everyone - {peer.peer_id} for peer in peers.values()), 60, 0.2,
                 what="capabilities")  # fmt: skip
        result["remote_calls_ms"] = {
            "a->b (50 ms, 1%)": remote_calls(a, b, calls),
            "a->c (50 ms, 1%)": remote_calls(a, c, calls),
            "b->c (200 ms, 5%)": remote_calls(b, c, calls),
        }
        result["tasks"] = {
            "at a, placement remote": task_flow(a, tasks, "remote"),
            "at b, pinned to c (200 ms, 5%)": task_flow(b, pinned, {"peer": c.peer_id}),
        }
        result["workflows_ms"] = workflows(a, b, c, workflow_count)
        result["pings"] = {
            "a<->b": [pings_failed(a, b), pings_failed(b, a)],
            "a<->c": [pings_failed(a, c), pings_failed(c, a)],
            "b<->c": [pings_failed(b, c), pings_failed(c, b)],
        }
        result["gone_before_faults"] = sum(len(gone_lines(peer)) for peer in peers.values())
        # b cut off: both of its links drop every packet
        lab.set_link("a", "b", loss=1.0)
        lab.set_link("b", "c", loss=1.0)
        result["cut_b_seen_gone_by_a_s"] = time_until(lambda: status_of(a, b) == "gone", 60)
        lab.set_link("a", "b", loss=0.01)
        lab.set_link("b", "c", loss=0.05)
        result["b_back_after_heal_s"] = time_until(lambda: b.peer_id in connected(a), 120)
        result["mesh_back_after_heal_s"] = round(
            result["b_back_after_heal_s"]
            + time_until(lambda: all(connected(peer) == everyone - {peer.peer_id} for peer in peers.values()), 120),
            2,
        )
        # c killed
        c.sidecar.kill9()
        killed = time.monotonic()
        seen: dict[str, float] = {}

        def both_saw_it() -> bool:
            for peer in (a, b):
                if peer.name not in seen and status_of(peer, c) == "gone":
                    seen[peer.name] = round(time.monotonic() - killed, 2)
            return len(seen) == 2

        wait_for(both_saw_it, 60, 0.1, what="c seen gone")
        result["kill9_c_seen_gone_s"] = seen
        for peer in peers.values():
            for proc in reversed(peer.procs()):
                proc.stop()
        result["relay_counts"] = lab.close()
    return result


COMMAND = "sudo .venv/bin/python -m bench.slow_links --write-docs"
HEADING = "## 7. Links that are not loopback: three nodes, delay and loss"


def markdown(result: dict[str, Any], command: str = COMMAND) -> str:
    """The section of docs/benchmarks.md for one run (``run``'s result)."""
    if "skipped" in result:
        return f"{HEADING}\n\nNot run: {result['skipped']}. Run `{command}` as root for these figures.\n"
    ids = {peer_id: name for name, peer_id in result["peer_ids"].items()}
    out = [
        HEADING,
        "",
        "```bash",
        command,
        "```",
        "",
        "Nodes a, b and c, each a sidecar and a gateway in its own network namespace, joined point to point: a-b and "
        "a-c by links of **50 ms** one-way delay and **1%** loss each way (100 ms round trips), b-c by **200 ms / 5%** "
        "(400 ms round trips). The links are TUN devices and a relay that delays and drops packets "
        "(`bench/linklab.py`: this kernel has no `netem`). Every setting is the default (pings every 2 s, gone after "
        "10 s, 10 s request deadlines, 30 s leases, 8 worker slots per node) but `SIDECAR_REMOTE_TOOLS_ALLOW="
        "hash_content`, in a closed network (a shared secret). b and c bootstrap from a and find each other through "
        "peer exchange. The harness reaches the gateways over separate links without delay.",
        "",
        f"Run {result.get('started', '(date not recorded)')}, load average {result.get('load_average', '?')} from "
        "other work at the start.",
        "",
        f"Bootstrap, from every process healthy to every node connected to both others: **{result['bootstrap_s']} s**.",
        "",
        "Remote tool calls (`p2p_remote_call_tool` of `hash_content`, one at a time), timed inside the calling "
        "node (ms):",
        "",
        "| link | calls | p50 | p99 | max | failed |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["remote_calls_ms"].items():
        out.append(f"| {name} | {row['n']} | {row['p50']} | {row['p99']} | {row['max']} | {row['failures']} |")
    out += [
        "",
        "Task flow: `hash` tasks, submitted by 8 client threads, from the first submit to the last completion:",
        "",
        "| tasks | count | seconds | **tasks/s** | failed | ran on |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["tasks"].items():
        ran = ", ".join(f"{ids.get(peer, peer)} {count}" for peer, count in sorted(row["ran_on"].items()))
        out.append(
            f"| {name} | {row['tasks']} | {row['seconds']} | **{row['tasks_per_s']}** | {row['failed']} | {ran} |"
        )
    flows = result["workflows_ms"]
    out += [
        "",
        "A `hash` task here is one SHA-256 of a few bytes: the time is the links'. Over the 200 ms / 5% link a task "
        "costs its worker round trips to the owner (the claim, then the report), each 400 ms or more when a packet "
        "is lost, which bounds the pinned rate far below the 50 ms links'.",
        "",
        f"Workflows: {flows['completed']} diamond workflows at a (A anywhere, B pinned to b, C pinned to c, D "
        f"anywhere; 4 at a time), submit to completion: p50 **{flows['p50']} ms**, p99 {flows['p99']} ms.",
        "",
        "Liveness over the lossy links during all of the above (smoothed round trip, slowest ping, pings that failed: "
        "a failed ping only marks a peer unreachable):",
        "",
        "| pair | pings ok | pings failed | latency ms | slowest ms |",
        "|---|---|---|---|---|",
    ]
    for pair, (forward, backward) in result["pings"].items():
        for who, row in ((pair.replace("<->", " -> "), forward), (pair[::-1].replace(">-<", " -> "), backward)):
            out.append(
                f"| {who} | {row['pings_ok']} | {row['pings_failed']} | {row['latency_ms']} | {row['max_rtt_ms']} |"
            )
    seen = result["kill9_c_seen_gone_s"]
    out += [
        "",
        f"Peers declared gone before the faults: **{result['gone_before_faults']}**.",
        "",
        "Time to notice a dead peer:",
        "",
        "| fault | seen gone after |",
        "|---|---|",
        f"| b cut off (both its links drop everything), seen by a | **{result['cut_b_seen_gone_by_a_s']} s** |",
        f"| c killed with SIGKILL, seen by a | **{seen.get('a')} s** |",
        f"| c killed with SIGKILL, seen by b | **{seen.get('b')} s** |",
        "",
        f"After the cut links came back, a had b connected again in {result['b_back_after_heal_s']} s, and every "
        f"node had both others in {result['mesh_back_after_heal_s']} s. A peer is gone once nothing has been heard "
        "from it for `SIDECAR_PEER_GONE_TIMEOUT` (10 s): a killed process's peers see its connection close at once "
        "but wait out that silence, so both faults take about the timeout, less the time since the last answer.",
        "",
        "Relay counts (packets both ways, dropped): "
        + ", ".join(f"{name} {row['packets']:,} / {row['dropped']:,}" for name, row in result["relay_counts"].items())
        + ".",
        "",
    ]
    return "\n".join(out)


def write_docs(section: str, path: Path) -> None:
    """Put this section into docs/benchmarks.md in place of the last one (before the tool-collection section)."""
    text = path.read_text()
    lines = text.split("\n")
    if HEADING in lines:
        start = lines.index(HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [*section.rstrip("\n").split("\n"), ""]
    else:
        anchor = next(i for i, line in enumerate(lines) if line.startswith("## Tool collection"))
        lines[anchor:anchor] = [*section.rstrip("\n").split("\n"), ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--pinned", type=int, default=100)
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--from-json", type=Path, help="do not run: render a result written by --json")
    parser.add_argument("--write-docs", action="store_true", help="put the figures into docs/benchmarks.md")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="mcp-p2p-slow-links-") as tmp:
            result = run(Path(tmp), calls=args.calls, tasks=args.tasks, pinned=args.pinned,
                         workflow_count=args.workflows)  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    section = markdown(result)
    print(section)
    if args.write_docs:
        docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        write_docs(section, docs)
        print(f"wrote the section into {docs}")


if __name__ == "__main__":
    main()
