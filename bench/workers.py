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
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import baseline
from bench.loadgen import LoadResult, ensure_wrk, process_cpu_seconds, run_wrk
from bench.stack import legacy_call, legacy_session, modern_call
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

FIGURES = Path(__file__).resolve().parent / "figures" / "workers.md"
CONNECTIONS = 64
MESSAGE = {"message": "hello from wrk"}


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
                    started = time.monotonic()
                    load: LoadResult = run_wrk(
                        target, body, connections=CONNECTIONS, seconds=seconds, headers=headers, sessions=sessions
                    )
                    wall = time.monotonic() - started
                    served = max(1, load.requests)
                    gateway_cpu = sum(process_cpu_seconds(pid) for pid in pids[count]) - before
                    sidecar_cpu = process_cpu_seconds(sidecar.pid) - side_before
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
                        }
                    )
            order.reverse()
    results["rows"] = [
        {"workers": count, "scenario": name, **{key: statistics.median(s[key] for s in runs_) for key in runs_[0]}}
        | {"all_rps": [s["rps"] for s in runs_]}
        for (count, name), runs_ in samples.items()
    ]
    results["load_after"] = baseline.load_average()
    return results


def markdown(results: dict[str, Any]) -> str:
    workers = results["workers"]
    rows = {(row["workers"], row["scenario"]): row for row in results["rows"]}
    names = list(dict.fromkeys(row["scenario"] for row in results["rows"]))
    lines = [
        f"| scenario | workers | req/s (every run) | p50 ms | p99 ms | {workers} / 1 req/s | gateway cores used | "
        "gateway CPU per request | sidecar CPU per request | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        one = rows[1, name]
        for count in (1, workers):
            row = rows[count, name]
            every = ", ".join(f"{rps:,.0f}" for rps in row["all_rps"])
            ratio = f"**{row['rps'] / one['rps']:.2f}x**" if count != 1 else ""
            lines.append(
                f"| {name} | {count} | {row['rps']:,.0f} ({every}) | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{ratio} | {row['gateway_cores']:.2f} | {row['gateway_us']:.0f} µs | {row['sidecar_us']:.0f} µs | "
                f"{row['errors']:.0f} |"
            )
    lines += [
        "",
        f"wrk, {CONNECTIONS} connections, {results['seconds']:.0f} s per run, {results['runs']} runs, one gateway "
        f"and the pool alternating; medians. Load average {results['load_before']} before, {results['load_after']} "
        "after (2 cores, shared with other engineers' test runs).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--save", action="store_true", help=f"write {FIGURES.name} under bench/figures/")
    args = parser.parse_args()
    ensure_wrk()
    results = run(workers=args.workers, runs=args.runs, seconds=args.seconds)
    text = markdown(results)
    print(text)
    if args.save:
        FIGURES.parent.mkdir(exist_ok=True)
        command = f".venv/bin/python -m bench.workers --workers {args.workers} --runs {args.runs}"
        FIGURES.write_text(f"Command: `{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
