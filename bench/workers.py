"""What GATEWAY_WORKERS buys: one gateway process against N on the same port, over one sidecar.

    .venv/bin/python -m bench.workers [--workers 2] [--runs 5] [--seconds 3] [--save]

One sidecar, and two gateways bridged to it: one process (``GATEWAY_WORKERS=1``)
and a pool of ``--workers`` processes.  wrk drives each with 64 kept-alive
connections, the two alternating run by run, through:

* REST ``echo`` (a local tool: the gateway's CPU is all it needs);
* REST ``p2p_echo`` (every call also crosses the bridge to the one sidecar);
* ``/mcp`` 2026-07-28 ``echo`` (stateless: served where it lands);
* ``/mcp`` 2025-11-25 ``echo`` over 64 sessions taken in turn by every
  connection, so with N workers (N-1)/N of the requests are for a session
  another worker holds and are relayed to it: the worst case of that design
  (a real client sends its session's requests on its own connections).

Reported per scenario: requests/s, p50 and p99 (medians of the runs), the
ratio pool/one, and the CPU each side used per request (all of a pool's
processes; the sidecar's), from which ``docs/benchmarks.md`` models larger
machines.  The load average is printed with the figures: on a shared machine
other work takes cores the pool would use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import baseline, saved_figures
from bench.loadgen import LoadResult, ensure_wrk, process_cpu_seconds, run_wrk
from bench.stack import legacy_call, legacy_session, modern_call
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

FIGURES = Path(__file__).resolve().parent / "workers.md"
CONNECTIONS = 64
MESSAGE = {"message": "hello from wrk"}


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (``/proc/stat``: all but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def pool_pids(url: str, workers: int, gateway: Proc) -> list[int]:
    """The processes serving ``url``: the gateway's own pid, or its parent's and every worker's."""
    if workers == 1:
        return [gateway.pid]
    found: dict[int, int] = {}
    for _ in range(500):
        _, health = http_json("GET", url + "/health")
        found[health["worker"]["index"]] = health["worker"]["pid"]
        if len(found) == workers:
            return [gateway.pid, *found.values()]
    raise RuntimeError(f"saw only workers {sorted(found)} of {workers}")


@contextlib.contextmanager
def gateways(tmp: Path, workers: int) -> Iterator[tuple[Proc, dict[int, tuple[str, Proc]]]]:
    sidecar = sidecar_proc(tmp, SIDECAR_LOG_LEVEL="warning")
    one = gateway_proc(tmp, "gateway-1", endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
    pool = gateway_proc(
        tmp,
        f"gateway-{workers}",
        endpoint=sidecar.extra["endpoint"],
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_WORKERS=str(workers),
    )
    with running(sidecar, one, pool):
        for gateway in (one, pool):
            url = gateway.extra["url"]
            wait_for(lambda url=url: http_json("GET", url + "/health/ready")[0] == 200, 60, what=f"{url} ready")
        yield sidecar, {1: (one.extra["url"], one), workers: (pool.extra["url"], pool)}


def scenarios(url: str) -> dict[str, tuple[str, dict[str, Any], dict[str, str], list[str]]]:
    sessions = [legacy_session(url) for _ in range(CONNECTIONS)]
    body, headers = legacy_call(sessions[0], "echo", MESSAGE)
    del headers["mcp-session-id"]  # each request takes the next session (bench/wrk_post.lua)
    modern_body, modern_headers = modern_call("echo", MESSAGE)
    return {
        "REST echo": (f"{url}/tools/execute/echo", MESSAGE, {}, []),
        "REST p2p_echo": (f"{url}/tools/execute/p2p_echo", MESSAGE, {}, []),
        "/mcp 2026-07-28 echo": (f"{url}/mcp", modern_body, modern_headers, []),
        "/mcp 2025-11-25 echo, 64 sessions": (f"{url}/mcp", body, headers, sessions),
    }


def run(*, workers: int, runs: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"workers": workers, "runs": runs, "seconds": seconds}
    results["load_before"] = baseline.load_average()
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="mcp-p2p-workers-") as tmp_name,
        gateways(Path(tmp_name), workers) as (
            sidecar,
            configs,
        ),
    ):
        pids = {count: pool_pids(url, count, proc) for count, (url, proc) in configs.items()}
        plans = {count: scenarios(url) for count, (url, _) in configs.items()}
        for plan in plans.values():  # warm-up: every connection, every path
            for target, body, headers, sessions in plan.values():
                run_wrk(target, body, connections=CONNECTIONS, seconds=1, headers=headers, sessions=sessions)
        order = list(configs)
        for _ in range(runs):
            for count in order:
                for name, (target, body, headers, sessions) in plans[count].items():
                    before = sum(process_cpu_seconds(pid) for pid in pids[count])
                    side_before = process_cpu_seconds(sidecar.pid)
                    busy_before = machine_busy_seconds()
                    started = time.monotonic()
                    load: LoadResult = run_wrk(
                        target, body, connections=CONNECTIONS, seconds=seconds, headers=headers, sessions=sessions
                    )
                    wall = time.monotonic() - started
                    served = max(1, load.requests)
                    gateway_cpu = sum(process_cpu_seconds(pid) for pid in pids[count]) - before
                    sidecar_cpu = process_cpu_seconds(sidecar.pid) - side_before
                    busy = machine_busy_seconds() - busy_before
                    ours = gateway_cpu + sidecar_cpu + load.client_cpu * wall
                    samples.setdefault((count, name), []).append(
                        {
                            "rps": load.rps,
                            "p50_ms": load.p50_ms,
                            "p99_ms": load.p99_ms,
                            "errors": load.errors + load.non2xx,
                            "gateway_cores": gateway_cpu / wall,
                            "gateway_us": gateway_cpu / served * 1e6,
                            "sidecar_us": sidecar_cpu / served * 1e6,
                            "client_cores": load.client_cpu,
                            "others_cores": max(0.0, busy - ours) / wall,
                        }
                    )
            order.reverse()
    results["rows"] = [
        {"workers": count, "scenario": name, **{key: statistics.median(s[key] for s in runs_) for key in runs_[0]}}
        | {"all_rps": [s["rps"] for s in runs_], "all_others": [s["others_cores"] for s in runs_]}
        | quiet_medians(runs_)
        for (count, name), runs_ in samples.items()
    ]
    results["load_after"] = baseline.load_average()
    return results


QUIET = 0.25
"""A run counts as quiet when processes other than the bench's own used less than this many cores."""


def quiet_medians(runs: list[dict[str, float]]) -> dict[str, Any]:
    quiet = [run for run in runs if run["others_cores"] < QUIET]
    if not quiet:
        return {"quiet_runs": 0}
    return {"quiet_runs": len(quiet), "quiet_rps": statistics.median(run["rps"] for run in quiet)}


def markdown(results: dict[str, Any]) -> str:
    workers = results["workers"]
    rows = {(row["workers"], row["scenario"]): row for row in results["rows"]}
    names = list(dict.fromkeys(row["scenario"] for row in results["rows"]))
    lines = [
        f"| scenario | workers | req/s, median (every run: req/s @ cores others used) | {workers} / 1 | quiet runs: "
        f"req/s, {workers} / 1 | p50 ms | p99 ms | gateway cores used | gateway CPU per request | "
        "sidecar CPU per request | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        one = rows[1, name]
        for count in (1, workers):
            row = rows[count, name]
            every = ", ".join(
                f"{rps:,.0f} @ {others:.2f}" for rps, others in zip(row["all_rps"], row["all_others"], strict=True)
            )
            ratio = f"**{row['rps'] / one['rps']:.2f}x**" if count != 1 else ""
            quiet = "none" if not row["quiet_runs"] else f"{row['quiet_rps']:,.0f} ({row['quiet_runs']} runs)"
            if count != 1 and row["quiet_runs"] and one["quiet_runs"]:
                quiet += f", **{row['quiet_rps'] / one['quiet_rps']:.2f}x**"
            lines.append(
                f"| {name} | {count} | {row['rps']:,.0f} ({every}) | {ratio} | {quiet} | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | {row['gateway_cores']:.2f} | {row['gateway_us']:.0f} µs | "
                f"{row['sidecar_us']:.0f} µs | {row['errors']:.0f} |"
            )
    lines += [
        "",
        f"wrk, {CONNECTIONS} connections, {results['seconds']:.0f} s per run, {results['runs']} runs, one gateway "
        f"and the pool alternating; medians. `@ cores` is what processes other than the bench's own used during "
        f"that run (`/proc/stat` minus the gateway's, the sidecar's and wrk's CPU); a run is quiet below {QUIET}. "
        f"Load average {results['load_before']} before, {results['load_after']} after (2 cores, shared with other "
        "engineers' test runs).",
    ]
    return "\n".join(lines)


def model(results: dict[str, Any]) -> list[str]:
    """Throughput on machines with more cores, from the CPU per request measured here (the pool's, conservative)."""
    workers = results["workers"]
    rows = {(row["workers"], row["scenario"]): row for row in results["rows"]}
    local = rows[workers, "REST echo"]["gateway_us"]
    p2p_gateway = rows[workers, "REST p2p_echo"]["gateway_us"]
    p2p_sidecar = rows[workers, "REST p2p_echo"]["sidecar_us"]
    legacy_one = rows[1, "/mcp 2025-11-25 echo, 64 sessions"]["gateway_us"]
    legacy_pool = rows[workers, "/mcp 2025-11-25 echo, 64 sessions"]["gateway_us"]
    sidecar_ceiling = 1e6 / p2p_sidecar
    lines = [
        "",
        "How it scales on larger machines, modelled from the CPU each request cost here: a worker is one Python "
        "process, so it serves at most one core's worth, 10^6 / (its CPU per request) requests per second; the "
        "sidecar is one Trio process, so every P2P call shares its one core. With one core left for the sidecar "
        f"and the kernel, a machine of C cores runs C - 1 workers. Inputs (the pool's figures): a local `echo` "
        f"costs the gateway {local:.0f} µs; a `p2p_echo` costs it {p2p_gateway:.0f} µs and the sidecar "
        f"{p2p_sidecar:.0f} µs, so P2P calls top out near {sidecar_ceiling:,.0f}/s however many workers there are.",
        "",
        "| cores | workers | REST local tool, req/s | REST P2P tool, req/s | what limits P2P |",
        "|---|---|---|---|---|",
    ]
    for cores in (2, 4, 8, 16, 32):
        count = cores - 1
        local_rps = count * 1e6 / local
        gateway_rps = count * 1e6 / p2p_gateway
        limit = "the gateway workers" if gateway_rps < sidecar_ceiling else "the sidecar's one core"
        lines.append(f"| {cores} | {count} | {local_rps:,.0f} | {min(gateway_rps, sidecar_ceiling):,.0f} | {limit} |")
    lines += [
        "",
        "Not modelled: the load balancer or clients (here wrk took 0.1-0.3 core of the two), memory bandwidth, and "
        "the kernel spreading connections evenly (SO_REUSEPORT hashes each connection to a worker). A handshake-era "
        "request that lands on a worker other than its session's is relayed: in the last scenario, where every "
        f"connection takes every session in turn, the gateway's CPU per request went from {legacy_one:.0f} µs "
        f"(one process) to {legacy_pool:.0f} µs, so relaying costs about "
        f"{(legacy_pool - legacy_one) / ((workers - 1) / workers):.0f} µs per relayed request. A client that keeps "
        "its session's requests on its own connections (the official SDKs do, until a connection idles out) "
        "is relayed only when one of its connections lands elsewhere.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--save", action="store_true", help=f"write the table to bench/{FIGURES.name} (docs/benchmarks.md includes it)"
    )
    args = parser.parse_args()
    ensure_wrk()
    results = run(workers=args.workers, runs=args.runs, seconds=args.seconds)
    text = "\n".join([markdown(results), *model(results)])
    print(text)
    if args.save:
        command = f".venv/bin/python -m bench.workers --workers {args.workers} --runs {args.runs}"
        saved_figures.save(FIGURES, text, command)


if __name__ == "__main__":
    main()


def saved_section() -> list[str]:
    """docs/benchmarks.md's section on gateway workers, from the last ``--save`` (a separate run)."""
    return saved_figures.section(
        FIGURES,
        "## Gateway workers: one port, several processes",
        [
            "`GATEWAY_WORKERS=2` against one gateway process, both bridged to the same sidecar, alternating run by "
            "run (`bench/workers.py`). The target is REST `echo` at 64 clients with 2 workers at least 1.4x one "
            "process. A gateway process tops out at one core; two can use both cores of this machine only when "
            "nothing else needs them, so every run says how many cores other processes took meanwhile, and the "
            "`quiet runs` column keeps the runs where they took less than a quarter of a core. P2P calls cannot gain "
            "on two cores: each needs the gateway's and the sidecar's CPU (the last two columns, about half a "
            "millisecond in all), and with one gateway process the sidecar already runs on the second core; on "
            "larger machines they scale until the sidecar's one core is full (the model after the table). The "
            "handshake-era row relays half its requests on purpose (every connection takes every session in turn).",
        ],
    )
