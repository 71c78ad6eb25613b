"""Scenario 3: our P2P path against the seed's thread-per-call ``trio.run``, same work, same loads.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from bench.bridge_cost import PAYLOAD, median_result
from bench.loadgen import LoadResult, run_wrk
from tests.procs import ROOT, free_port, http_json, wait_for


def run(gateway_url: str, *, concurrencies: list[int], seconds: float, repeats: int) -> list[dict[str, Any]]:
    port = free_port()
    seed = subprocess.Popen([sys.executable, "-m", "bench.seed_style_app", str(port)], cwd=ROOT)
    seed_url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_for(lambda: _up(seed_url), 30, what="seed-style app")
        seed_answer = http_json("POST", seed_url + "/tools/execute/hash_content", PAYLOAD)[1]["result"]
        ours_answer = http_json("POST", gateway_url + "/tools/execute/p2p_hash_content", PAYLOAD)[1]["result"]
        assert seed_answer == ours_answer
        for clients in concurrencies:
            measured: dict[str, list[LoadResult]] = {"seed": [], "ours": []}
            targets = {
                "seed": seed_url + "/tools/execute/hash_content",
                "ours": gateway_url + "/tools/execute/p2p_hash_content",
            }
            order = ["seed", "ours"]
            for _ in range(repeats):
                for name in order:
                    measured[name].append(run_wrk(targets[name], PAYLOAD, connections=clients, seconds=seconds))
                order.reverse()
            floor = run_wrk(seed_url + "/noop", {}, connections=clients, seconds=seconds)
            seed_m, ours_m = median_result(measured["seed"]), median_result(measured["ours"])
            rows.append(
                {
                    "clients": clients,
                    "seed": seed_m,
                    "ours": ours_m,
                    "rps_ratio": ours_m["rps"] / seed_m["rps"],
                    "p50_ratio": seed_m["p50_ms"] / ours_m["p50_ms"],
                    "http_floor_rps": floor.rps,
                    "max_possible_ratio": floor.rps / seed_m["rps"],
                }
            )
    finally:
        seed.terminate()
        seed.wait(timeout=10)
    return rows


def _up(url: str) -> bool:
    try:
        return http_json("GET", url + "/health/ready", timeout=1)[0] == 200
    except OSError:
        return False
