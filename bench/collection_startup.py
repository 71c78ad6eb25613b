"""Start-up, tools/list latency and memory with a large tool collection, side by side with none.

    .venv/bin/python bench/collection_startup.py [--runs 6] [--warm 20]
    .venv/bin/python bench/collection_startup.py --collection TOOLS_DIR [--pythonpath DIR] [--runs 5] [--memory]

Without ``--collection`` it generates the test collection (``tests/toolgen.py``:
400 modules, 50 categories, ~500 tools) in a temporary folder, then for each
configuration starts a real sidecar and gateway on free ports, several times:

* ``none``: no collection (the gateway's own tools and the sidecar's);
* ``collection, cold``: ``GATEWAY_TOOL_DIRS`` + ``SIDECAR_TOOL_DIRS``, schema caches off,
  so the sidecar imports its candidate modules and the first listing imports every module;
* ``collection, cached``: the same with both processes' schema caches written by an earlier run.

Measured: gateway start (process spawn) to ``/health/ready`` 200, sidecar start
to ``/health`` 200, the first ``tools/list`` after start-up and warm ones,
through ``/mcp`` with the official client (mode "auto"; "legacy" warm too) and
through REST ``GET /tools/list``, and each process's RSS (gateway at ready and
after the listings).  Half the runs list through /mcp first, half through REST
first, so each path's "first" is a real first.  Medians are printed; the
machine is shared, so only medians and ratios mean anything.

With ``--collection`` it measures an existing collection instead (the
``tools/`` folder of ipfs_datasets_py, say, with ``--pythonpath`` naming the
folder that makes its package importable): cold (fresh caches) and cached
restarts, the same figures through REST.  ``--memory`` adds where a cold
listing's memory goes: every module imported in one interpreter, the RSS
growth charged to the top-level packages each import brought in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp import Client

from bench import saved_figures
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


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Samples:
    gateway_rss_ready: list[float] = field(default_factory=list)
    gateway_rss_listed: list[float] = field(default_factory=list)
    sidecar_rss: list[float] = field(default_factory=list)
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


def run_config(
    tmp: Path,
    name: str,
    runs: int,
    warm: int,
    env: dict[str, str],
    sidecar_env: dict[str, str],
    *,
    mcp: bool = True,
) -> Samples:
    samples = Samples()
    for i in range(runs):
        sidecar = sidecar_proc(tmp, f"{name}-sidecar-{i}", **sidecar_env)
        gateway = gateway_proc(tmp, f"{name}-gateway-{i}", endpoint=sidecar.extra["endpoint"], **env)
        try:
            samples.sidecar_ready.append(start_timed(sidecar, sidecar.health_url))
            samples.gateway_ready.append(start_timed(gateway, gateway.extra["url"] + "/health/ready"))
            samples.gateway_rss_ready.append(rss_mb(gateway.pid))
            samples.sidecar_rss.append(rss_mb(sidecar.pid))
            url = gateway.extra["url"]
            if i % 2 == 0 and mcp:
                asyncio.run(mcp_listing(url, warm, samples, first=True))
                rest_listing(url, warm, samples, first=False)
            else:
                rest_listing(url, warm, samples, first=True)
                if mcp:
                    asyncio.run(mcp_listing(url, warm, samples, first=False))
            samples.gateway_rss_listed.append(rss_mb(gateway.pid))
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
                {"GATEWAY_TOOL_DIRS": dirs, "GATEWAY_TOOL_CACHE_DIR": "off", "GATEWAY_TOOL_SELECTION": "wide"},
                {"SIDECAR_TOOL_DIRS": dirs, "SIDECAR_TOOL_CACHE_DIR": "off", "SIDECAR_TOOL_SELECTION": "wide"},
            ),
            "collection, cached": (
                {"GATEWAY_TOOL_DIRS": dirs, "GATEWAY_TOOL_CACHE_DIR": str(cache), "GATEWAY_TOOL_SELECTION": "wide"},
                {
                    "SIDECAR_TOOL_DIRS": dirs,
                    "SIDECAR_TOOL_CACHE_DIR": str(tmp / "sidecar-cache"),
                    "SIDECAR_TOOL_SELECTION": "wide",
                },
            ),
        }
        run_config(tmp, "prewarm", 1, 0, *configs["collection, cached"])  # writes the schema cache
        samples = {
            name: run_config(tmp, f"c{i}", runs, warm, *config) for i, (name, config) in enumerate(configs.items())
        }
    medians = {name: _medians(s) for name, s in samples.items()}
    return {"modules": manifest.modules, "tools": len(manifest.tools), "runs": runs, "warm": warm, "medians": medians}


TIME_KEYS = ("gateway_ready", "sidecar_ready", "mcp_first", "mcp_warm", "legacy_warm", "rest_first", "rest_warm")
RSS_KEYS = ("gateway_rss_ready", "gateway_rss_listed", "sidecar_rss")


def _medians(s: Samples) -> dict[str, float]:
    """Times in ms, RSS in MiB."""
    row: dict[str, float] = {"tools": s.tools}
    row.update({key: 1000 * statistics.median(getattr(s, key)) for key in TIME_KEYS if getattr(s, key)})
    row.update({key: statistics.median(getattr(s, key)) for key in RSS_KEYS if getattr(s, key)})
    return row


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
        lines.append(f"| {name} | {row['tools']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", *_rss_table(medians)]
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


def _rss_table(medians: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| configuration | gateway RSS at ready (MiB) | gateway RSS after listing (MiB) | sidecar RSS at ready (MiB) |",
        "|---|---|---|---|",
    ]
    for name, row in medians.items():
        cells = [f"{row[key]:.0f}" if key in row else "-" for key in RSS_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# -- an existing collection (--collection) ------------------------------------------------------------


def run_external(tools_dir: str, pythonpath: str | None, runs: int) -> dict[str, Any]:
    """Cold and cached restarts of gateway + sidecar serving ``tools_dir`` (REST listings only)."""
    with tempfile.TemporaryDirectory(prefix="collection-bench-") as raw:
        tmp = Path(raw)
        extra = {"PYTHONPATH": pythonpath} if pythonpath else {}
        gateway_env = {"GATEWAY_TOOL_DIRS": tools_dir, "GATEWAY_TOOL_ENTRY_POINTS": "false", **extra}
        sidecar_env = {"SIDECAR_TOOL_DIRS": tools_dir, "SIDECAR_TOOL_ENTRY_POINTS": "false", **extra}
        cold = Samples()
        for i in range(runs):  # fresh caches every time
            part = run_config(
                tmp,
                f"cold{i}",
                1,
                3,
                {**gateway_env, "GATEWAY_TOOL_CACHE_DIR": str(tmp / f"gw-cache-{i}")},
                {**sidecar_env, "SIDECAR_TOOL_CACHE_DIR": str(tmp / f"sc-cache-{i}")},
                mcp=False,
            )
            for key in (*TIME_KEYS, *RSS_KEYS):
                getattr(cold, key).extend(getattr(part, key))
        # the caches the last cold start wrote serve every cached restart
        cached = run_config(
            tmp,
            "cached",
            runs,
            3,
            {**gateway_env, "GATEWAY_TOOL_CACHE_DIR": str(tmp / f"gw-cache-{runs - 1}")},
            {**sidecar_env, "SIDECAR_TOOL_CACHE_DIR": str(tmp / f"sc-cache-{runs - 1}")},
            mcp=False,
        )
        _status, listing = _one_listing(tmp, gateway_env, sidecar_env, runs)
    medians = {"cold": _medians(cold), "cached": _medians(cached)}
    return {"tools_dir": tools_dir, "runs": runs, "medians": medians, "listing": listing}


def _one_listing(tmp: Path, gateway_env: dict[str, str], sidecar_env: dict[str, str], runs: int) -> tuple[int, Any]:
    """A cached start's listing counts and /health collection figures."""
    sidecar_cache = str(tmp / f"sc-cache-{runs - 1}")
    sidecar = sidecar_proc(tmp, "count-sidecar", **sidecar_env, SIDECAR_TOOL_CACHE_DIR=sidecar_cache)
    gateway = gateway_proc(
        tmp,
        "count-gateway",
        endpoint=sidecar.extra["endpoint"],
        **gateway_env,
        GATEWAY_TOOL_CACHE_DIR=str(tmp / f"gw-cache-{runs - 1}"),
    )
    try:
        sidecar.start()
        gateway.start(wait=False)
        wait_status(gateway.extra["url"] + "/health/ready")
        status, body = http_json("GET", gateway.extra["url"] + "/tools/list", timeout=120)
        _, health = http_json("GET", gateway.extra["url"] + "/health")
    finally:
        gateway.stop()
        sidecar.stop()
    tools = [tool for tool in body["tools"] if "." in tool["name"]]
    unavailable = sum(1 for tool in tools if tool["description"].startswith("[UNAVAILABLE"))
    summary = {
        "listed": len(tools),
        "available": len(tools) - unavailable,
        "unavailable": unavailable,
        "p2p": sum(1 for tool in tools if tool["runtime"] == "p2p"),
        "health": health["collection"],
    }
    return status, summary


MEMORY_SCRIPT = """
import json, os, sys
from shared_schema.compat import ToolCollection, scan_tool_dirs
from shared_schema.compat.guard import disable_auto_installers

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

disable_auto_installers(allow=False, setting="bench")
collection = ToolCollection(scan_tool_dirs([sys.argv[1]]), host="asyncio")
start = rss()
charged = {}
for module in collection.modules:
    before_modules, before = set(sys.modules), rss()
    module.resolve()
    grown = rss() - before
    own = module.source.package.split(".")[0] if module.source.package else None
    # charged to the package that brought in most new modules (the collection's own package by subpackage)
    keys = [".".join(name.split(".")[:2]) if name.split(".")[0] == own else name.split(".")[0]
            for name in set(sys.modules) - before_modules]
    owner = max(set(keys), key=keys.count) if keys else "(nothing new)"
    charged[owner] = charged.get(owner, 0.0) + grown
print(json.dumps({"start": start, "end": rss(), "modules": len(collection.modules), "charged": charged}))
"""


def memory_breakdown(tools_dir: str, pythonpath: str | None) -> dict[str, Any]:
    """Where a cold listing's memory goes: RSS growth per import, charged to the package it loaded most of."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(root)) if p)
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, tools_dir], env=env, cwd=root, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


EXTERNAL_FIGURES = Path(__file__).resolve().parent / "ipfs_datasets_collection.md"
"""The last ``--collection ... --save`` figures, kept in the repository (the collection is not), for the report."""


def external_section() -> list[str]:
    """docs/benchmarks.md's section on the real ipfs_datasets_py collection, from the saved figures."""
    return saved_figures.section(
        EXTERNAL_FIGURES,
        "### The ipfs_datasets_py collection, mounted unchanged",
        [
            "Its `ipfs_datasets_py/mcp_server/tools` tree (340 modules in 51 categories) with the package importable "
            "(its checkout on `PYTHONPATH`, plus beautifulsoup4, numpy and cachetools installed; the collection's "
            "other dependencies are not, so 49 modules do not import). Not part of `make bench`: it needs a checkout "
            "of that project. Command, in a venv with this project (`pip install -e .`) and those three packages:",
            "",
            "    python bench/collection_startup.py --collection CHECKOUT/ipfs_datasets_py/mcp_server/tools \\",
            "        --pythonpath CHECKOUT --runs 5 --memory --save",
        ],
        [
            "Targets: a cached restart lists in under 1 s and the sidecar is ready in under 3 s: both met (first",
            "listing and sidecar start->ready in the `cached` row). A cold listing of a collection this size costs",
            "what importing it costs: every module once, with the packages they pull in. The `where the memory",
            "goes` line charges the growth to the packages each import brought in: the collection's own package",
            "and its dependencies (the MCP SDK, already loaded in the gateway, is charged there in that separate",
            "interpreter). The gateway's own share (argument models and schemas) is what the generated collection",
            "above shows, whose modules import nothing heavy: about 26 MiB for 497 tools. A cached restart imports",
            "nothing to list, so the gateway stays at its start-up size until a call imports a module; the sidecar",
            "imports a P2P module when one of its tools is first called.",
        ],
    )


def markdown_external(results: dict[str, Any], memory: dict[str, Any] | None) -> str:
    medians = results["medians"]
    listing = results["listing"]
    cold, cached = medians["cold"], medians["cached"]
    lines = [
        f"`{results['tools_dir']}`; medians of {results['runs']} starts each (ms, MiB). `cold`: fresh schema caches "
        "(the sidecar imports its candidate modules before it is ready, the first listing imports every module); "
        "`cached`: caches written by a cold start.",
        "",
        "| start | sidecar start->ready | gateway start->ready | first REST tools/list | warm REST tools/list "
        "| gateway RSS at ready | gateway RSS after listing | sidecar RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("cold", cold), ("cached", cached)):
        lines.append(
            f"| {name} | {row['sidecar_ready']:.0f} | {row['gateway_ready']:.0f} | {row['rest_first']:.0f} | "
            f"{row['rest_warm']:.1f} | {row['gateway_rss_ready']:.0f} | {row['gateway_rss_listed']:.0f} | "
            f"{row['sidecar_rss']:.0f} |"
        )
    lines += [
        "",
        f"* cached / cold: sidecar ready {cached['sidecar_ready'] / cold['sidecar_ready']:.2f}x, first listing "
        f"{cached['rest_first'] / cold['rest_first']:.3f}x, gateway RSS after listing "
        f"{cached['gateway_rss_listed'] / cold['gateway_rss_listed']:.2f}x",
        f"* listed: {listing['available']} collection tools ({listing['p2p']} of them P2P) and "
        f"{listing['unavailable']} stand-ins of modules that do not import here; clashes: "
        f"{len(listing['health']['clashes'])}",
    ]
    if memory is not None:
        grown = memory["end"] - memory["start"]
        top = sorted(memory["charged"].items(), key=lambda item: -item[1])[:8]
        shares = ", ".join(f"`{name}` {mib:.0f} MiB" for name, mib in top)
        lines += [
            f"* where a cold listing's memory goes (all {memory['modules']} modules imported in one interpreter, "
            f"{memory['start']:.0f} -> {memory['end']:.0f} MiB, +{grown:.0f} MiB): {shares}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="starts per configuration (default 6, 5 external)")
    parser.add_argument("--warm", type=int, default=20, help="warm listings per client per start (default 20)")
    parser.add_argument("--collection", help="an existing collection's tools folder to measure instead")
    parser.add_argument("--pythonpath", help="with --collection: what makes its package importable")
    parser.add_argument("--memory", action="store_true", help="with --collection: where a cold listing's memory goes")
    parser.add_argument("--save", action="store_true", help=f"with --collection: also write {EXTERNAL_FIGURES.name}")
    args = parser.parse_args()
    if args.collection:
        results = run_external(args.collection, args.pythonpath, args.runs or 5)
        memory = memory_breakdown(args.collection, args.pythonpath) if args.memory else None
        text = markdown_external(results, memory)
        print(text)
        if args.save:
            saved_figures.save(EXTERNAL_FIGURES, text)
    else:
        print(markdown(run(args.runs or 6, args.warm)))


if __name__ == "__main__":
    main()
