"""The tail at 64 clients: how slow the slowest requests are, and which requests they are.

    .venv/bin/python -m bench.tail_check [--baseline main] [--runs 3] [--seconds 3] [--save]

For each face (REST, /mcp 2026-07-28, /mcp 2025-11-25 with 64 sessions) and
tool (local ``hash_content``, P2P ``p2p_hash_content``), 64 kept-alive
connections open at once and send requests back to back for ``--seconds``,
from two clients in turn: ``wrk`` (as ``make bench``) and a second,
independent one (asyncio on uvloop, in its own process) that records every
request's connection and start time.  The second client says whether a slow
request (over 100 ms) was the first one on its connection, which is what
separates "a connection waited to be accepted" from "the gateway stalled".

With ``--baseline REF`` the same runs go, interleaved, against the processes of
that git ref's tree (exported with ``git archive``): before and after a change,
on the same machine at the same time.  Medians of the runs are printed, with
the load average; ``--save`` writes the table to ``bench/tail_check.md`` (docs/benchmarks.md includes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import baseline, saved_figures
from bench.bridge_cost import PAIR, faces
from bench.loadgen import UNIQUE_ID, ensure_wrk, run_wrk
from tests.procs import Proc, gateway_proc, http_json, running, sidecar_proc, wait_for

SLOW_S = 0.1
UNIQUE_ID_BYTES = f'"{UNIQUE_ID}"'.encode()
CONNECTIONS = 64
FIGURES = Path(__file__).resolve().parent / "tail_check.md"


# -- the recording client (runs in a child process) ---------------------------------------------------------------


async def _connection(
    index: int, port: int, requests: list[bytes], turn: list[int], stop: float, records: list[tuple[int, float, float]]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            request = requests[turn[0] % len(requests)]
            turn[0] += 1
            if UNIQUE_ID_BYTES in request:  # its own JSON-RPC id, as wrk_post.lua gives it (see run_wrk)
                head, body = request.split(b"\r\n\r\n", 1)
                body = body.replace(UNIQUE_ID_BYTES, str(turn[0]).encode())
                head = head.rsplit(b"\r\n", 1)[0] + f"\r\nContent-Length: {len(body)}".encode()
                request = head + b"\r\n\r\n" + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            records.append((index, started, time.perf_counter()))
    finally:
        writer.close()


async def _record(spec: dict[str, Any]) -> list[tuple[int, float, float]]:
    payload = spec["body"]
    if spec["sessions"] and "id" in payload:
        payload = {**payload, "id": UNIQUE_ID}
    body = json.dumps(payload).encode()
    heads = []
    for session in spec["sessions"] or [None]:
        headers = {"Host": "127.0.0.1", "Content-Type": "application/json", **spec["headers"]}
        if session is not None:
            headers["mcp-session-id"] = session
        lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
        heads.append(f"POST {spec['path']} HTTP/1.1\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    records: list[tuple[int, float, float]] = []
    stop = time.perf_counter() + spec["seconds"]
    turn = [0]
    await asyncio.gather(
        *(_connection(i, spec["port"], heads, turn, stop, records) for i in range(spec["connections"]))
    )
    return records


def summarize(records: list[tuple[int, float, float]]) -> dict[str, float]:
    latencies = sorted(end - start for _, start, end in records)
    first: dict[int, float] = {}
    for index, start, _ in sorted(records, key=lambda record: record[1]):
        first.setdefault(index, start)
    slow = [(index, start) for index, start, end in records if end - start > SLOW_S]
    return {
        "requests": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "slow": len(slow),
        "slow_first": sum(1 for index, start in slow if first[index] == start),
    }


def recording_client(spec: dict[str, Any]) -> dict[str, float]:
    """Run the recording client in a child process (its own interpreter and CPU); its summary."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.tail_check", "--client", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the runs --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stack(tmp: Path, name: str, tree: Path | None) -> Iterator[str]:
    sidecar = sidecar_proc(tmp, f"{name}-sidecar", SIDECAR_LOG_LEVEL="warning")
    gateway = gateway_proc(tmp, f"{name}-gateway", endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
    procs: list[Proc] = [sidecar, gateway]
    if tree is not None:
        for proc in procs:
            baseline.in_tree(proc, tree)
    with running(*procs):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 30, what=f"{name} ready")
        yield url


def run(*, runs: int, seconds: float, baseline_ref: str | None) -> dict[str, Any]:
    versions = ["this"] + (["baseline"] if baseline_ref else [])
    results: dict[str, Any] = {"load_before": baseline.load_average(), "runs": runs, "seconds": seconds}
    if baseline_ref:
        results["baseline"] = baseline.describe(baseline_ref)
    samples: dict[tuple[str, str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-tail-") as tmp_name, contextlib.ExitStack() as stacks:
        tmp = Path(tmp_name)
        tree = baseline.export(baseline_ref, tmp / "baseline-tree") if baseline_ref else None
        urls = {
            version: stacks.enter_context(stack(tmp, version, tree if version == "baseline" else None))
            for version in versions
        }
        requests = {version: faces(url) for version, url in urls.items()}
        order = list(versions)
        for _ in range(runs):
            for version in order:
                port = int(urls[version].rsplit(":", 1)[1])
                for face, request in requests[version].items():
                    for runtime, tool in PAIR.items():
                        target, body, headers, sessions = request(tool)
                        load = run_wrk(
                            target, body, connections=CONNECTIONS, seconds=seconds, headers=headers, sessions=sessions
                        )
                        samples.setdefault((version, face, runtime, "wrk"), []).append(
                            {
                                "requests": load.requests,
                                "p50_ms": load.p50_ms,
                                "p99_ms": load.p99_ms,
                                "errors": load.errors + load.non2xx,
                            }
                        )
                        spec = {
                            "port": port,
                            "path": target.split(str(port), 1)[1],
                            "body": body,
                            "headers": headers,
                            "sessions": sessions,
                            "seconds": seconds,
                            "connections": CONNECTIONS,
                        }
                        samples.setdefault((version, face, runtime, "recording"), []).append(recording_client(spec))
            order.reverse()
    results["rows"] = [
        {
            "version": version,
            "face": face,
            "runtime": runtime,
            "client": client,
            **{key: statistics.median(run[key] for run in runs_) for key in runs_[0]},
            "p99_over_p50": [run["p99_ms"] / run["p50_ms"] for run in runs_],
        }
        for (version, face, runtime, client), runs_ in samples.items()
    ]
    results["load_after"] = baseline.load_average()
    return results


def markdown(results: dict[str, Any]) -> str:
    base = results.get("baseline")
    lines = [
        "| version | face | tool | client | p50 ms | p99 ms | p99 / p50 (each run) | max ms "
        "| over 100 ms (first on their connection) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(results["rows"], key=lambda r: (r["face"], r["runtime"], r["client"], r["version"])):
        version = "this branch" if row["version"] == "this" else f"before ({base})"
        ratios = ", ".join(f"{ratio:.1f}" for ratio in row["p99_over_p50"])
        slow = f"{row['slow']:.0f} ({row['slow_first']:.0f})" if "slow" in row else "-"
        maximum = f"{row['max_ms']:.0f}" if "max_ms" in row else "-"
        lines.append(
            f"| {version} | {row['face']} | {row['runtime']} | {row['client']} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {ratios} | {maximum} | {slow} |"
        )
    lines += [
        "",
        f"{CONNECTIONS} connections, {results['seconds']:.0f} s per run, {results['runs']} runs"
        + (", the two versions alternating" if base else "")
        + f"; medians of the runs (the ratio column lists every run). Load average {results['load_before']} before, "
        f"{results['load_after']} after (2 cores, shared with other engineers' test runs).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="also run this git ref's code (e.g. main), alternating with this tree")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--save", action="store_true", help=f"write the table to bench/{FIGURES.name} (docs/benchmarks.md includes it)"
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: be the recording client
    args = parser.parse_args()
    if args.client:
        import uvloop

        print(json.dumps(summarize(uvloop.run(_record(json.loads(args.client))))))
        return
    ensure_wrk()
    results = run(runs=args.runs, seconds=args.seconds, baseline_ref=args.baseline)
    text = markdown(results)
    print(text)
    if args.save:
        command = ".venv/bin/python -m bench.tail_check" + (f" --baseline {args.baseline}" if args.baseline else "")
        saved_figures.save(FIGURES, text, command)


if __name__ == "__main__":
    main()


def saved_section() -> list[str]:
    """docs/benchmarks.md's section on the tail, from the last ``--save`` (a separate run: about 5 minutes)."""
    return saved_figures.section(
        FIGURES,
        "## The tail at 64 clients: connections waiting to be accepted",
        [
            "At 64 clients, p99 used to be 100-480 ms against a p50 of 15-25 ms, from a few dozen requests per run, "
            "more often with the local tool than with the P2P one; garbage collection, a blocked event loop, TCP "
            "retransmissions and CPU steal had been ruled out. The cause, and the evidence:",
            "",
            "* **Which requests.** A client that records every request's connection and start time (the `recording` "
            "rows below) ran six times against the old gateway (REST, local tool, load average about 5): 128 requests "
            "took over 100 ms, 106 of them the *first* request on their connection, and each connection's first "
            "request had waited about 14 ms longer than the previous connection's: a staircase, one step per gateway "
            "event-loop iteration. No request after the first on its connection took over 110 ms.",
            "* **Why.** `strace -f -tt -e trace=accept4 -p <gateway pid>` during one 64-connection run: 64 `accept4` "
            "calls spread over 1.6 s, none of them returning `EAGAIN`. uvicorn runs on uvloop, and libuv (1.45 and "
            "later, libuv/libuv#3696, bundled in uvloop 0.23) accepts one connection per loop iteration and waits "
            "for the next readiness report. A busy gateway's iteration serves every connection with a request ready "
            "(10-15 ms at 64 clients), so the 64th connection of a burst waited 64 iterations before its first "
            "request was read. The local tool showed it more because its requests finish within the iteration that "
            "reads them, so iterations are longer; wrk opens all 64 connections at once, and each `make bench` point "
            "is a fresh wrk run, so every run paid it.",
            "* **The fix.** `gateway/listeners.py` accepts every connection waiting in the backlog each time the "
            "listening socket is readable (up to 256, as asyncio's own accept loop does) and hands each to the event "
            "loop; no setting is needed. (Before it, running uvicorn on asyncio's own loop instead of uvloop also "
            "avoided it, at a higher cost per request.)",
            "* **What is left.** With other processes using the machine's cores, a few requests still take over "
            "100 ms, none of them first on their connection: the scheduler giving the cores to someone else. The "
            "target, p99 at most 5x p50 at 64 clients on REST and /mcp, local and P2P, held in every run below "
            "(`make bench` checks it too, in the targets table).",
            "",
            "Before and after, interleaved, on the same machine at the same time; medians of the runs:",
        ],
    )
