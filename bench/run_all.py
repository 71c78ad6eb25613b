"""`make bench`: start the real processes on free ports, run every scenario, print a table,
rewrite docs/benchmarks.md (figures, machine, date, command) and its plot.

    .venv/bin/python -m bench.run_all            # the full run (about five minutes)
    .venv/bin/python -m bench.run_all --quick    # a short smoke run; does not touch docs/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import (
    bridge_cost,
    collection_startup,
    floor,
    footprint,
    profile_gateway,
    remote_call,
    seed_style,
    slow_links,
    taskqueue_local,
    taskqueue_network,
    taskqueue_spread,
)
from bench.linklab import LinkLab
from bench.loadgen import ensure_wrk, process_cpu_seconds, rss_mb
from bench.machine import describe
from bench.report import plot, render
from bench.stack import bench_stack

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks-bridge.png"


class Sampler:
    """Peak RSS and CPU use of the server processes while load runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_rss = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._cpu_start = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        self._t0 = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self.pids.items():
                self.peak_rss[name] = max(self.peak_rss[name], rss_mb(pid))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self._t0
        self.cpu_cores = {
            name: (process_cpu_seconds(pid) - self._cpu_start[name]) / wall for name, pid in self.pids.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run; prints but does not rewrite docs/")
    args = parser.parse_args()
    ensure_wrk()
    seconds, repeats = (1.0, 1) if args.quick else (2.0, 3)
    concurrencies = [1, 16, 64]
    results: dict[str, Any] = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with bench_stack(tmp) as (gateway, sidecar):
            url = gateway.extra["url"]
            pids = {"gateway": gateway.pid, "sidecar": sidecar.pid}
            results["idle_rss_mb"] = {name: rss_mb(pid) for name, pid in pids.items()}
            with Sampler(pids) as sampler:
                results["bridge_cost"] = bridge_cost.run(
                    url, concurrencies=concurrencies, seconds=seconds, repeats=repeats
                )
            results["load_peak_rss_mb"] = sampler.peak_rss
            results["load_cpu_cores"] = sampler.cpu_cores
            results["floor"] = floor.run(sidecar.extra["endpoint"], n=500 if args.quick else 5000)
            results["seed_style"] = seed_style.run(url, concurrencies=concurrencies, seconds=seconds, repeats=repeats)
            results["profile"] = profile_gateway.run(url, gateway.pid, seconds=4.0 if args.quick else 8.0)
        results["startup"] = footprint.startup(tmp, runs=1 if args.quick else 3)
        with bench_stack(tmp) as (gateway, sidecar):
            results["queue_local"] = taskqueue_local.run(
                gateway.extra["url"],
                sidecar.pid,
                tasks=2000 if args.quick else 10_000,
                samples=50 if args.quick else 200,
            )
        (tmp / "network").mkdir()
        results["queue_network"] = taskqueue_network.run(
            tmp / "network",
            tasks=1000 if args.quick else 3000,
            repeats=1 if args.quick else 3,
            samples=40 if args.quick else 150,
            warmup=10 if args.quick else 30,
        )
        (tmp / "spread").mkdir()
        results["queue_spread"] = taskqueue_spread.run(tmp / "spread", repeats=1 if args.quick else 3)
    results["remote_call"] = remote_call.run(calls=200 if args.quick else 1000, warmup=50 if args.quick else 100)
    results["collection"] = collection_startup.run(runs=1 if args.quick else 3, warm=3 if args.quick else 10)
    why_not = LinkLab.available()
    if why_not is None:
        with tempfile.TemporaryDirectory(prefix="mcp-p2p-slow-links-") as tmp_name:
            results["slow_links"] = slow_links.run(
                Path(tmp_name),
                calls=30 if args.quick else 200,
                tasks=50 if args.quick else 400,
                pinned=10 if args.quick else 100,
                workflow_count=2 if args.quick else 20,
            )
    else:
        results["slow_links"] = {"skipped": why_not}
    results["elapsed_s"] = time.monotonic() - t0
    results["machine"] = describe()
    results["cpu_count"] = os.cpu_count()
    command = ".venv/bin/python -m bench.run_all" + (" --quick" if args.quick else "") + "   (make bench)"
    markdown = render(results, command)
    print(markdown)
    if not args.quick:
        DOCS.write_text(markdown)
        plot(results, PLOT)
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "latest.json").write_text(json.dumps(results, indent=1))
        print(f"wrote {DOCS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
