"""Is the local tool's p99 at 64 clients the gateway's, or wrk's? Two clients, back to back, same requests.

In `make bench`, the local tool's p99 at 64 clients sometimes reads 250-350 ms
while the P2P tool's stays near 20-100 ms.  This runs the same load
(64 keep-alive connections, ``POST /tools/execute/hash_content``, 3 s) with
wrk and with a second, independent client (asyncio on uvloop, one process)
several times each, back to back, and prints each run's p50, p99, max and how
many requests took over 100 ms.  The second client records every request's
start time, so a stall would show which connections it hit and when.

    .venv/bin/python -m bench.tail_check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bridge_cost import PAYLOAD
from bench.loadgen import ensure_wrk, run_wrk

SLOW_S = 0.1


async def _connection(port: int, request: bytes, stop: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _asyncio_load(port: int, path: str, body: bytes, connections: int, seconds: float) -> list[float]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(port, head.encode() + body, stop, latencies) for _ in range(connections)))
    return latencies


def asyncio_client(port: int, seconds: float, connections: int = 64) -> dict[str, float]:
    """Run in a child process (its own interpreter and CPU), print one JSON line of results."""
    import uvloop

    body = json.dumps(PAYLOAD).encode()
    latencies = sorted(uvloop.run(_asyncio_load(port, "/tools/execute/hash_content", body, connections, seconds)))
    return {
        "requests": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "slow": sum(1 for value in latencies if value > SLOW_S),
    }


def run(gateway_url: str, *, runs: int = 4, seconds: float = 3.0) -> dict[str, list[dict[str, float]]]:
    port = int(gateway_url.rsplit(":", 1)[1])
    results: dict[str, list[dict[str, float]]] = {"wrk": [], "asyncio": []}
    for _ in range(runs):
        load = run_wrk(gateway_url + "/tools/execute/hash_content", PAYLOAD, connections=64, seconds=seconds)
        results["wrk"].append({"requests": load.requests, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms})
        child = [sys.executable, "-m", "bench.tail_check", "--client", str(port), "--seconds", str(seconds)]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        results["asyncio"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    from bench.stack import bench_stack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)  # internal: be the asyncio client
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio_client(args.client, args.seconds)))
        return
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-tail-") as tmp, bench_stack(Path(tmp)) as (gateway, _):
        results = run(gateway.extra["url"], runs=args.runs, seconds=args.seconds)
    print("| client | run | requests | p50 ms | p99 ms | max ms | over 100 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for index, row in enumerate(rows, 1):
            print(
                f"| {name} | {index} | {row['requests']:,} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{row.get('max_ms', float('nan')):.1f} | {row.get('slow', '-')} |"
            )
    for name, rows in results.items():
        print(f"{name}: median p99 {statistics.median(row['p99_ms'] for row in rows):.1f} ms")


if __name__ == "__main__":
    main()
