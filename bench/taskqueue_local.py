"""Task queue on one node: memory with 10,000 queued, drain rate, submit rate, latency.

    .venv/bin/python -m bench.taskqueue_local            # 10,000 tasks, 300 latency samples
    .venv/bin/python -m bench.taskqueue_local --quick    # 2,000 tasks, 100 samples

Starts a real gateway + sidecar on free ports.  Tasks are submitted through
the gateway's REST face by a small thread pool (the Python client, not the
sidecar, bounds the submit rate); the drain rate is measured inside the
sidecar alone: the queue is paused while it fills, then resumed, and the
clock runs until queue_stats counts every task completed.  Latency is
task_submit + task_wait for one task at a time, next to a plain P2P tool call
(p2p_echo) over the same path, so the ratio is the queue's own cost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import rss_mb
from bench.stack import bench_stack
from tests.procs import http_json


def call(url: str, tool: str, **arguments: Any) -> Any:
    status, body = http_json("POST", f"{url}/tools/execute/{tool}", arguments, timeout=60)
    if status != 200:
        raise RuntimeError(f"{tool}: {status} {body}")
    return body["result"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(url: str, sidecar_pid: int, *, tasks: int, samples: int, clients: int = 8) -> dict[str, Any]:
    results: dict[str, Any] = {"tasks": tasks, "clients": clients, "sidecar_idle_rss_mb": rss_mb(sidecar_pid)}
    call(url, "queue_pause", reason="bench: filling")
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: call(url, "task_submit", task_type="echo", payload={"i": i}), range(tasks)))
    submit_s = time.perf_counter() - started
    results["submit_per_s"] = round(tasks / submit_s, 1)
    stats = call(url, "queue_stats")
    assert stats["counts"]["queued"] == tasks, stats
    results["sidecar_rss_mb_with_queued"] = rss_mb(sidecar_pid)
    started = time.perf_counter()
    call(url, "queue_resume")
    while call(url, "queue_stats")["counts"]["completed"] < tasks:
        time.sleep(0.02)
    drain_s = time.perf_counter() - started
    results["drain_completed_per_s"] = round(tasks / drain_s, 1)
    results["sidecar_rss_mb_after_drain"] = rss_mb(sidecar_pid)

    queue_ms, echo_ms = [], []
    for index in range(samples):  # interleaved, so both see the same machine noise
        t0 = time.perf_counter()
        task = call(url, "task_submit", task_type="echo", payload={"n": index})
        done = call(url, "task_wait", task_id=task["task_id"], timeout_s=30)
        queue_ms.append((time.perf_counter() - t0) * 1000)
        assert done["done"], done
        t0 = time.perf_counter()
        call(url, "p2p_echo", message=str(index))
        echo_ms.append((time.perf_counter() - t0) * 1000)
    results["submit_to_result_ms"] = {
        "p50": round(statistics.median(queue_ms), 3),
        "p99": round(percentile(queue_ms, 0.99), 3),
    }
    results["p2p_echo_ms"] = {"p50": round(statistics.median(echo_ms), 3), "p99": round(percentile(echo_ms, 0.99), 3)}
    results["latency_ratio_p50"] = round(statistics.median(queue_ms) / statistics.median(echo_ms), 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tasks, samples = (2000, 100) if args.quick else (10_000, 300)
    with (
        tempfile.TemporaryDirectory(prefix="mcp-p2p-queue-bench-") as tmp,
        bench_stack(Path(tmp)) as (gateway, sidecar),
    ):
        results = run(gateway.extra["url"], sidecar.pid, tasks=tasks, samples=samples)
    width = max(len(key) for key in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
