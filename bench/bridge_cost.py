"""Scenario 1: the bridge's cost. The same work (hashing 1 KiB) as a local and as a P2P tool.

Through the REST face and /mcp in both protocol eras, at several concurrencies,
local and P2P measured alternately in the same run, each point repeated; the
median of the repeats is reported, with the P2P/local ratios.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.loadgen import LoadResult, run_wrk
from bench.stack import legacy_call, legacy_session, modern_call
from tests.procs import http_json

PAYLOAD = {"data": "x" * 1024}
PAIR = {"local": "hash_content", "p2p": "p2p_hash_content"}

Request = tuple[str, dict[str, Any], dict[str, str], list[str]]
SESSIONS = 64
"""Handshake-era sessions the load rotates through: one per simulated agent, as at the highest concurrency."""


def faces(url: str) -> dict[str, Callable[[str], Request]]:
    sessions = [legacy_session(url) for _ in range(SESSIONS)]

    def legacy(tool: str) -> Request:
        body, headers = legacy_call(sessions[0], tool, PAYLOAD)
        del headers["mcp-session-id"]  # each request takes the next session instead (bench/wrk_post.lua)
        return f"{url}/mcp", body, headers, sessions

    return {
        "rest": lambda tool: (f"{url}/tools/execute/{tool}", PAYLOAD, {}, []),
        "mcp-2026-07-28": lambda tool: (f"{url}/mcp", *modern_call(tool, PAYLOAD), []),
        "mcp-2025-11-25": legacy,
    }


def check_answers(url: str) -> None:
    """Both tools answer, with the same result, before any load."""
    local = http_json("POST", f"{url}/tools/execute/hash_content", PAYLOAD)
    remote = http_json("POST", f"{url}/tools/execute/p2p_hash_content", PAYLOAD)
    assert local[0] == remote[0] == 200 and local[1]["result"] == remote[1]["result"], (local, remote)


def median_result(results: list[LoadResult]) -> dict[str, float]:
    return {key: statistics.median(getattr(r, key) for r in results) for key in LoadResult.__dataclass_fields__}


def run(url: str, *, concurrencies: list[int], seconds: float, repeats: int) -> list[dict[str, Any]]:
    check_answers(url)
    rows = []
    for face, request in faces(url).items():
        for clients in concurrencies:
            measured: dict[str, list[LoadResult]] = {"local": [], "p2p": []}
            order = ["local", "p2p"]
            target, body, headers, sessions = request(PAIR["local"])
            run_wrk(target, body, connections=clients, seconds=1, headers=headers, sessions=sessions)  # warm-up
            for _ in range(repeats):
                for runtime in order:
                    target, body, headers, sessions = request(PAIR[runtime])
                    measured[runtime].append(
                        run_wrk(target, body, connections=clients, seconds=seconds, headers=headers, sessions=sessions)
                    )
                order.reverse()  # alternate which goes first, so drift hits both
            local, p2p = median_result(measured["local"]), median_result(measured["p2p"])
            rows.append(
                {
                    "face": face,
                    "clients": clients,
                    "local": local,
                    "p2p": p2p,
                    "p50_delta_ms": p2p["p50_ms"] - local["p50_ms"],
                    "rps_ratio": p2p["rps"] / local["rps"],
                    "errors": sum(r.errors + r.non2xx for rs in measured.values() for r in rs),
                }
            )
    return rows
