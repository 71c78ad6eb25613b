"""What tracing costs a P2P tool call: off (the default) against the same code without tracing, and on.

Three gateway + sidecar stacks run side by side on free ports:

* ``baseline``: the sources of a git revision without the tracing code (default: where this branch left
  ``main``), extracted with ``git archive`` and run with this venv;
* ``off``: this tree, no ``*_OTLP_ENDPOINT`` (no SDK loaded, no spans; a caller's traceparent still passes);
* ``on``: this tree, both processes exporting every span over OTLP/HTTP to a receiver in this process.

The same P2P call (``p2p_hash_content`` on 1 KiB, gateway -> bridge -> sidecar) is driven with wrk through
the REST face and /mcp (2026-07-28), at 1 and 16 clients, the three stacks interleaved round by round (the
order rotating), so drift on a shared machine falls on all of them alike.  Reported: medians over the
rounds, and ratios against the baseline.

    .venv/bin/python -m bench.tracing_cost [--rounds 7] [--seconds 3] [--baseline REV] [--save]

``--save`` writes the table to bench/tracing_cost.md, which docs/benchmarks.md includes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult, ensure_wrk, process_cpu_seconds, run_wrk
from bench.stack import modern_call
from tests.otlp_receiver import OtlpReceiver
from tests.procs import ROOT, Proc, free_port, gateway_proc, http_json, running, sidecar_proc, wait_for

FIGURES = Path(__file__).resolve().parent / "tracing_cost.md"
PAYLOAD = {"data": "x" * 1024}
TOOL = "p2p_hash_content"
CONFIGS = ("baseline", "off", "on")


def extract(revision: str, into: Path) -> Path:
    """The sources of ``revision`` (a plain copy, no git state), to run the same venv against."""
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


@dataclass
class Stack:
    url: str
    pids: tuple[int, int]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids)


@contextlib.contextmanager
def stack(tmp: Path, name: str, source: Path, **env: str) -> Iterator[Stack]:
    sidecar = sidecar_proc(tmp, f"{name}-sidecar", SIDECAR_LOG_LEVEL="warning", **env)
    gateway_env = {key.replace("SIDECAR_", "GATEWAY_"): value for key, value in env.items()}
    gateway = gateway_proc(
        tmp, f"{name}-gateway", endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning", **gateway_env
    )
    for proc in (sidecar, gateway):
        proc.env["PYTHONPATH"] = str(source)  # this tree or the baseline's copy, ahead of the editable install
        proc.cwd = source
    with running(sidecar, gateway):
        url = gateway.extra["url"]
        wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 30, what=f"{name} ready")
        _check_source(gateway, source)
        yield Stack(url, (gateway.pid, sidecar.pid))


def _check_source(gateway: Proc, source: Path) -> None:
    """The gateway runs from ``source``, whose packages ``python -m`` imports first (sys.path[0] is the cwd)."""
    cwd = Path(f"/proc/{gateway.pid}/cwd").resolve()
    assert cwd == source.resolve(), f"{gateway.name} runs from {cwd}, not {source}"


def requests(url: str) -> dict[str, tuple[str, dict[str, Any], dict[str, str]]]:
    body, headers = modern_call(TOOL, PAYLOAD)
    return {"rest": (f"{url}/tools/execute/{TOOL}", PAYLOAD, {}), "mcp": (f"{url}/mcp", body, headers)}


def measure(stacks: dict[str, Stack], *, rounds: int, seconds: float, clients: list[int]) -> dict[str, Any]:
    results: dict[str, dict[str, list[tuple[LoadResult, float]]]] = {}
    for each in stacks.values():  # warm every stack on every face first
        for target, body, headers in requests(each.url).values():
            run_wrk(target, body, connections=4, seconds=1, headers=headers)
    for round_index in range(rounds):
        order = CONFIGS[round_index % 3 :] + CONFIGS[: round_index % 3]
        for face in ("rest", "mcp"):
            for count in clients:
                for config in order:
                    target, body, headers = requests(stacks[config].url)[face]
                    cpu_before = stacks[config].cpu_seconds()
                    result = run_wrk(target, body, connections=count, seconds=seconds, headers=headers)
                    cpu_us = (stacks[config].cpu_seconds() - cpu_before) / max(1, result.requests) * 1e6
                    assert result.errors == 0 and result.non2xx == 0, (config, face, count, result)
                    results.setdefault(f"{face} c={count}", {}).setdefault(config, []).append((result, cpu_us))
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr)
    table: dict[str, Any] = {}
    for point, by_config in results.items():
        table[point] = {
            config: {
                "rps": statistics.median(r.rps for r, _ in runs),
                "p50_ms": statistics.median(r.p50_ms for r, _ in runs),
                "p99_ms": statistics.median(r.p99_ms for r, _ in runs),
                "cpu_us": statistics.median(cpu for _, cpu in runs),
            }
            for config, runs in by_config.items()
        }
    return table


def markdown(table: dict[str, Any], *, rounds: int, seconds: float, baseline: str, spans: int) -> str:
    lines = [
        "| face, clients | CPU us/call base / off / on | off/base CPU | on/base CPU | rps base / off / on "
        "| off/base rps | on/base rps | p50 ms base / off / on | p99 ms base / off / on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for point, row in table.items():
        base, off, on = row["baseline"], row["off"], row["on"]
        lines.append(
            f"| {point} | {base['cpu_us']:.0f} / {off['cpu_us']:.0f} / {on['cpu_us']:.0f} | "
            f"{off['cpu_us'] / base['cpu_us']:.3f} | {on['cpu_us'] / base['cpu_us']:.3f} | "
            f"{base['rps']:.0f} / {off['rps']:.0f} / {on['rps']:.0f} | "
            f"{off['rps'] / base['rps']:.3f} | {on['rps'] / base['rps']:.3f} | "
            f"{base['p50_ms']:.3f} / {off['p50_ms']:.3f} / {on['p50_ms']:.3f} | "
            f"{base['p99_ms']:.2f} / {off['p99_ms']:.2f} / {on['p99_ms']:.2f} |"
        )
    lines += [
        "",
        f"Medians of {rounds} interleaved rounds of {seconds:g} s per point (wrk, keep-alive); baseline = "
        f"`{baseline}` without the tracing code; `on` exported {spans} spans to the bench's OTLP receiver. "
        "CPU us/call: user + system CPU of the gateway and the sidecar together during the run, per call answered "
        "(less sensitive than rps to what else the shared machine runs).",
    ]
    return "\n".join(lines)


def saved_section() -> list[str]:
    """docs/benchmarks.md's section on tracing's cost, from the last ``--save`` (a separate run: ~5 minutes)."""
    if not FIGURES.is_file():
        return []
    return [
        "## Tracing cost",
        "",
        "A P2P tool call (`p2p_hash_content`, 1 KiB: gateway -> bridge -> sidecar) on three stacks side by side: "
        "`baseline` is the code this branch started from (no tracing code), `off` is this code with no "
        "`*_OTLP_ENDPOINT` (the default), `on` has both processes exporting every span over OTLP/HTTP. Command:",
        "",
        "    .venv/bin/python -m bench.tracing_cost --rounds 7 --seconds 3 --save",
        "",
        FIGURES.read_text().strip(),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument(
        "--baseline", default=None, help="git revision without the tracing code (default: HEAD's merge base with main)"
    )
    parser.add_argument("--save", action="store_true", help=f"write the table to {FIGURES.name}")
    args = parser.parse_args()
    ensure_wrk()
    if args.baseline is None:
        found = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True)
        args.baseline = found.stdout.strip() if found.returncode == 0 else "main"
    revision = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    with (
        tempfile.TemporaryDirectory(prefix="mcp-p2p-tracing-bench-") as tmp_name,
        OtlpReceiver(free_port()) as receiver,
    ):
        tmp = Path(tmp_name)
        baseline_src = extract(revision, tmp / "baseline-src")
        with (
            stack(tmp, "baseline", baseline_src) as baseline,
            stack(tmp, "off", ROOT) as off,
            stack(tmp, "on", ROOT, SIDECAR_OTLP_ENDPOINT=receiver.url) as on,
        ):
            stacks = {"baseline": baseline, "off": off, "on": on}
            clients = [int(count) for count in args.clients.split(",")]
            table = measure(stacks, rounds=args.rounds, seconds=args.seconds, clients=clients)
        spans = len(receiver.spans)
    assert spans > 0, "the 'on' stack exported nothing"
    text = markdown(table, rounds=args.rounds, seconds=args.seconds, baseline=revision, spans=spans)
    print(text)
    if args.save:
        FIGURES.write_text(text + "\n")
        print(f"wrote {FIGURES.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
