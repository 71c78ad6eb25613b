"""Where the gateway's CPU goes on the P2P hot path, by layer (py-spy, sampled under wrk load).

Two of the bridge's targets (docs/benchmarks.md) are bounded by the gateway's per-request cost rather
than by the bridge (the 10x over the seed's approach, and, with the ZeroMQ
round trip, the +0.3 ms at one client).  This samples the gateway's stack
while wrk drives ``POST /tools/execute/p2p_hash_content`` and charges every
sample to the innermost frame that belongs to a layer we can name, so the
table says how many microseconds of each request are ours and how many are
the web framework's.

    .venv/bin/python -m bench.profile_gateway            # also part of `make bench`

py-spy attaches with ptrace: it needs root or ``kernel.yama.ptrace_scope=0``.
Sampling slows the process it samples, so the request rate under sampling is
reported separately from the rate measured just before without it.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bridge_cost import PAYLOAD
from bench.loadgen import ensure_wrk, process_cpu_seconds, run_wrk


def _thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread alone (the event loop; ZeroMQ's I/O thread is separate)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "bridge: envelope encode, ZeroMQ send/receive, decode",
        (
            "gateway/bridge_client.py",
            "gateway/zmq_asyncio.py",
            "shared_schema/codec.py",
            "shared_schema/envelope.py",
            "zmq/",
            "msgpack/",
        ),
    ),
    (
        "router: registry lookup, limits, metrics",
        (
            "gateway/router.py",
            "gateway/registry.py",
            "gateway/limits.py",
            "gateway/metrics.py",
            "shared_schema/limits.py",
            "prometheus_client/",
        ),
    ),
    ("REST handler: body parse, JSON reply", ("gateway/rest.py", "gateway/rest_models.py", "gateway/errors.py")),
    ("our ASGI middleware: auth, Host/Origin, body limit", ("gateway/security.py", "gateway/http_limits.py")),
    ("FastAPI/Starlette: middleware stack, routing, dependencies", ("fastapi/", "starlette/")),
    ("uvicorn: HTTP parsing and response writing", ("uvicorn/", "httptools/")),
    ("event loop: uvloop's native code (socket I/O, callbacks)", ("asyncio/runners.py", "uvloop/")),
]
OTHER = "other"


def _layer_of(stack: str) -> str:
    """The layer of the innermost frame that has one (stdlib helpers such as json count for their caller)."""
    for frame in reversed(stack.split(";")):
        start = frame.rfind(" (")
        where = frame[start + 2 :] if start >= 0 else frame
        for layer, needles in LAYERS:
            if any(needle in where for needle in needles):
                return layer
    return OTHER


def summarize(raw: str) -> dict[str, float]:
    """Share of samples per layer, from py-spy's ``--format raw`` output (``stack count`` per line)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            counts[_layer_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {layer: counts[layer] / total for layer in [name for name, _ in LAYERS] + [OTHER] if counts[layer]}


def run(gateway_url: str, gateway_pid: int, *, seconds: float = 8.0, clients: int = 16) -> dict[str, Any] | None:
    """Sample the gateway under load; ``None`` (and a note on stderr) when py-spy is missing or may not attach."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("profile skipped: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return None
    url = gateway_url + "/tools/execute/p2p_hash_content"
    run_wrk(url, PAYLOAD, connections=clients, seconds=1.0)  # warm
    cpu_before, loop_before = process_cpu_seconds(gateway_pid), _thread_cpu_seconds(gateway_pid)
    plain = run_wrk(url, PAYLOAD, connections=clients, seconds=seconds / 2)
    served = max(plain.requests, 1)
    cpu_us = (process_cpu_seconds(gateway_pid) - cpu_before) / served * 1e6
    loop_us = (_thread_cpu_seconds(gateway_pid) - loop_before) / served * 1e6
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        command = [spy, "record", "--pid", str(gateway_pid), "--duration", str(int(seconds)), "--rate", "200"]
        command += ["--format", "raw", "--output", out.name, "--nonblocking"]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sampled = run_wrk(url, PAYLOAD, connections=clients, seconds=seconds + 1)
        _, err = sampler.communicate(timeout=60)
        raw = Path(out.name).read_text()
    if sampler.returncode != 0 or not raw.strip():
        print(
            f"profile skipped: py-spy could not sample the gateway: {err.decode(errors='replace')[-300:]}",
            file=sys.stderr,
        )
        return None
    return {
        "clients": clients,
        "rps": plain.rps,
        "rps_sampled": sampled.rps,
        "gateway_cpu_us_per_request": cpu_us,
        "loop_thread_us_per_request": loop_us,
        "shares": summarize(raw),
    }


def markdown(profile: dict[str, Any]) -> str:
    total, loop = profile["gateway_cpu_us_per_request"], profile["loop_thread_us_per_request"]
    lines = [
        f"`POST /tools/execute/p2p_hash_content` at {profile['clients']} clients: {profile['rps']:,.0f} req/s, "
        f"the gateway spending {total:.0f} µs of CPU per request, {loop:.0f} µs of it in the event-loop thread "
        "(CPU time over requests served, not sampled). py-spy sampled the event-loop thread in a second run "
        f"({profile['rps_sampled']:,.0f} req/s while sampled); each sample is charged to the innermost frame of a "
        "named layer, and the layer's share of the loop thread's time per request is shown:",
        "",
        "| layer | share of samples | µs per request |",
        "|---|---|---|",
    ]
    for layer, share in sorted(profile["shares"].items(), key=lambda item: -item[1]):
        lines.append(f"| {layer} | {share:.0%} | {share * loop:.0f} |")
    lines.append(f"| ZeroMQ's I/O thread and other threads (not sampled) | - | {total - loop:.0f} |")
    return "\n".join(lines)


def main() -> None:
    from bench.stack import bench_stack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-profile-") as tmp, bench_stack(Path(tmp)) as (gateway, _):
        profile = run(gateway.extra["url"], gateway.pid, seconds=args.seconds, clients=args.clients)
    if profile is None:
        raise SystemExit(1)
    print(markdown(profile))


if __name__ == "__main__":
    main()
