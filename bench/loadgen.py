"""Drive HTTP load with wrk (from the system packages) and read its results.

wrk is written in C with one event loop per thread, so at the concurrencies we
use it needs a fraction of a core: each run also reports how much CPU wrk
itself used, so a table can show the client was not the bottleneck.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA = Path(__file__).with_name("wrk_post.lua")
UNIQUE_ID = "__WRK_ID__"
"""Stands for the JSON-RPC id in a body; wrk_post.lua puts a new number there for each request."""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True, check=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench needs wrk: install it (Debian/Ubuntu: apt-get install wrk) and run again")
    return found


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    non2xx: int
    client_cpu: float  # cores used by wrk on average

    def as_dict(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def run_wrk(
    url: str,
    body: dict[str, Any],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    sessions: list[str] | None = None,
) -> LoadResult:
    """``sessions``: MCP session ids that successive requests take in turn (one per simulated agent).

    With sessions, a JSON-RPC body's ``id`` is replaced per request (``wrk_post.lua``), so no two requests of
    one session in flight share an id.
    """
    env = dict(os.environ)
    env["WRK_SESSIONS"] = ",".join(sessions or [])
    if sessions and "id" in body:
        body = {**body, "id": UNIQUE_ID}
    env["WRK_BODY"] = json.dumps(body)
    env["WRK_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        [
            ensure_wrk(),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next(line for line in done.stdout.splitlines() if line.startswith("{"))
    raw = json.loads(line)
    return LoadResult(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        requests=raw["requests"],
        errors=raw["errors"],
        non2xx=raw["non2xx"],
        client_cpu=cpu / wall,
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
