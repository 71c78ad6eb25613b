"""Start-up and tools/list latency with a 400-module tool collection, side by side with none.

    .venv/bin/python bench/collection_startup.py [--runs 6] [--warm 20]

Generates the test collection (``tests/toolgen.py``: 400 modules, 50
categories, ~500 tools) in a temporary folder, then for each configuration
starts a real sidecar and gateway on free ports, several times:

* ``none``: no collection (the gateway's own tools and the sidecar's);
* ``collection, cold``: ``GATEWAY_TOOL_DIRS`` + ``SIDECAR_TOOL_DIRS``, schema cache off,
  so the first listing imports every module;
* ``collection, cached``: the same with a schema cache written by an earlier run.

Measured: gateway start (process spawn) to ``/health/ready`` 200, sidecar start
to ``/health`` 200, the first ``tools/list`` after start-up and warm ones,
through ``/mcp`` with the official client (mode "auto"; "legacy" warm too) and
through REST ``GET /tools/list``.  Half the runs list through /mcp first, half
through REST first, so each path's "first" is a real first.  Medians are
printed; the machine is shared, so only medians and ratios mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp import Client

from tests.procs import Proc, gateway_proc, http_json, sidecar_proc
from tests.toolgen import generate


def wait_status(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(url)


def start_timed(proc: Proc, ready_url: str) -> float:
    started = time.perf_counter()
    proc.start(wait=False)
    wait_status(ready_url)
    return time.perf_counter() - started


@dataclass
class Samples:
    gateway_ready: list[float] = field(default_factory=list)
    sidecar_ready: list[float] = field(default_factory=list)
    mcp_first: list[float] = field(default_factory=list)
    mcp_warm: list[float] = field(default_factory=list)
    legacy_warm: list[float] = field(default_factory=list)
    rest_first: list[float] = field(default_factory=list)
    rest_warm: list[float] = field(default_factory=list)
    tools: int = 0


async def mcp_listing(url: str, warm: int, samples: Samples, *, first: bool) -> None:
    async with Client(url + "/mcp", mode="auto") as client:
        started = time.perf_counter()
        result = await client.list_tools()
        if first:
            samples.mcp_first.append(time.perf_counter() - started)
        samples.tools = len(result.tools)
        for _ in range(warm):
            started = time.perf_counter()
            await client.list_tools()
            samples.mcp_warm.append(time.perf_counter() - started)
    async with Client(url + "/mcp", mode="legacy") as client:
        await client.list_tools()
        for _ in range(warm):
            started = time.perf_counter()
            await client.list_tools()
            samples.legacy_warm.append(time.perf_counter() - started)


def rest_listing(url: str, warm: int, samples: Samples, *, first: bool) -> None:
    for i in range(warm + 1):
        started = time.perf_counter()
        status, body = http_json("GET", url + "/tools/list", timeout=60)
        elapsed = time.perf_counter() - started
        assert status == 200 and body["count"] > 0, status
        if i or not first:
            samples.rest_warm.append(elapsed)
        else:
            samples.rest_first.append(elapsed)


def run_config(tmp: Path, name: str, runs: int, warm: int, env: dict[str, str], sidecar_env: dict[str, str]) -> Samples:
    samples = Samples()
    for i in range(runs):
        sidecar = sidecar_proc(tmp, f"{name}-sidecar-{i}", **sidecar_env)
        gateway = gateway_proc(tmp, f"{name}-gateway-{i}", endpoint=sidecar.extra["endpoint"], **env)
        try:
            samples.sidecar_ready.append(start_timed(sidecar, sidecar.health_url))
            samples.gateway_ready.append(start_timed(gateway, gateway.extra["url"] + "/health/ready"))
            url = gateway.extra["url"]
            if i % 2 == 0:
                asyncio.run(mcp_listing(url, warm, samples, first=True))
                rest_listing(url, warm, samples, first=False)
            else:
                rest_listing(url, warm, samples, first=True)
                asyncio.run(mcp_listing(url, warm, samples, first=False))
        finally:
            gateway.stop()
            sidecar.stop()
    return samples


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f}" if values else "-"


def run(runs: int = 6, warm: int = 20) -> dict[str, Any]:
    """Medians (ms) per configuration, and the collection's size."""
    with tempfile.TemporaryDirectory(prefix="collection-bench-") as raw:
        tmp = Path(raw)
        manifest = generate(tmp / "collection")
        dirs = str(manifest.root)
        cache = tmp / "cache"
        configs = {
            "none": ({"GATEWAY_TOOL_CACHE_DIR": "off"}, {}),
            "collection, cold": (
                {"GATEWAY_TOOL_DIRS": dirs, "GATEWAY_TOOL_CACHE_DIR": "off"},
                {"SIDECAR_TOOL_DIRS": dirs},
            ),
            "collection, cached": (
                {"GATEWAY_TOOL_DIRS": dirs, "GATEWAY_TOOL_CACHE_DIR": str(cache)},
                {"SIDECAR_TOOL_DIRS": dirs},
            ),
        }
        run_config(tmp, "prewarm", 1, 0, *configs["collection, cached"])  # writes the schema cache
        samples = {
            name: run_config(tmp, f"c{i}", runs, warm, *config) for i, (name, config) in enumerate(configs.items())
        }
    medians = {
        name: {
            "tools": s.tools,
            **{
                key: 1000 * statistics.median(getattr(s, key))
                for key in (
                    "gateway_ready",
                    "sidecar_ready",
                    "mcp_first",
                    "mcp_warm",
                    "legacy_warm",
                    "rest_first",
                    "rest_warm",
                )
                if getattr(s, key)
            },
        }
        for name, s in samples.items()
    }
    return {"modules": manifest.modules, "tools": len(manifest.tools), "runs": runs, "warm": warm, "medians": medians}


COLUMNS = (
    ("gateway_ready", "gateway start->ready"),
    ("sidecar_ready", "sidecar start->ready"),
    ("mcp_first", "/mcp first"),
    ("mcp_warm", "/mcp warm"),
    ("legacy_warm", "/mcp legacy warm"),
    ("rest_first", "REST first"),
    ("rest_warm", "REST warm"),
)


def markdown(results: dict[str, Any]) -> str:
    medians = results["medians"]
    lines = [
        f"{results['modules']} generated modules ({results['tools']} collection tools, tests/toolgen.py); medians of "
        f"{results['runs']} starts per configuration, {results['warm']} warm listings per client per start (ms). "
        "`cold`: schema cache off, so the first listing imports every module; `cached`: a cache written by an "
        "earlier start.",
        "",
        "| configuration | tools | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, row in medians.items():
        cells = [f"{row[key]:.1f}" if key in row else "-" for key, _ in COLUMNS]
        lines.append(f"| {name} | {row['tools']} | " + " | ".join(cells) + " |")
    base = medians["none"]
    lines.append("")
    for name in ("collection, cold", "collection, cached"):
        row = medians[name]
        ratios = ", ".join(
            f"{label} {row[key] / base[key]:.2f}x"
            for key, label in (("gateway_ready", "gateway start"), ("sidecar_ready", "sidecar start"),
                               ("mcp_first", "/mcp first list"), ("mcp_warm", "/mcp warm list"),
                               ("rest_warm", "REST warm list"))
        )  # fmt: skip
        lines.append(f"* {name} / none: {ratios}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="gateway starts per configuration (default 6)")
    parser.add_argument("--warm", type=int, default=20, help="warm listings per client per start (default 20)")
    args = parser.parse_args()
    print(markdown(run(args.runs, args.warm)))


if __name__ == "__main__":
    main()
