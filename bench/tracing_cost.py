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

    .venv/bin/python -m bench.tracing_cost [--rounds 6] [--seconds 3] [--baseline REV] [--save]

``--save`` writes the table to bench/tracing_cost.md, which docs/benchmarks.md includes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import saved_figures
from bench.loadgen import LoadResult, ensure_wrk, process_cpu_seconds, run_wrk
from bench.stack import modern_call
from shared_schema import tracing
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
    orders = list(itertools.permutations(stacks))
    for round_index in range(rounds):
        for face in ("rest", "mcp"):
            for count in clients:
                # every order of the stacks in turn: none always runs first, or right after another
                for config in orders[
                    (round_index * 2 * len(clients) + len(clients) * (face == "mcp") + count) % len(orders)
                ]:
                    target, body, headers = requests(stacks[config].url)[face]
                    cpu_before = stacks[config].cpu_seconds()
                    result = run_wrk(target, body, connections=count, seconds=seconds, headers=headers)
                    cpu_us = (stacks[config].cpu_seconds() - cpu_before) / max(1, result.requests) * 1e6
                    assert result.errors == 0 and result.non2xx == 0, (config, face, count, result)
                    results.setdefault(f"{face} c={count}", {}).setdefault(config, []).append((result, cpu_us))
                    if config == "on":  # its last spans leave within the export delay: not during the next run
                        time.sleep(tracing.EXPORT_DELAY_MS / 1000 + 0.5)
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
    def cells(row: dict[str, Any], key: str, digits: int) -> str:
        return " / ".join(f"{row[c][key]:.{digits}f}" if c in row else "-" for c in CONFIGS)

    def ratio(row: dict[str, Any], config: str, key: str) -> str:
        return f"{row[config][key] / row['baseline'][key]:.3f}" if config in row and "baseline" in row else "-"

    lines = [
        "| face, clients | CPU us/call base / off / on | off/base CPU | on/base CPU | rps base / off / on "
        "| off/base rps | on/base rps | p50 ms base / off / on | p99 ms base / off / on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for point, row in table.items():
        lines.append(
            f"| {point} | {cells(row, 'cpu_us', 0)} | {ratio(row, 'off', 'cpu_us')} | {ratio(row, 'on', 'cpu_us')} | "
            f"{cells(row, 'rps', 0)} | {ratio(row, 'off', 'rps')} | {ratio(row, 'on', 'rps')} | "
            f"{cells(row, 'p50_ms', 3)} | {cells(row, 'p99_ms', 2)} |"
        )
    lines += [
        "",
        f"Medians of {rounds} rounds of {seconds:g} s per point (wrk, keep-alive), the stacks run in every order "
        f"in turn; baseline = `{baseline}` without the tracing code; `on` exported {spans} spans to the bench's "
        "OTLP receiver (and is followed by a pause while its last batch leaves). CPU us/call: user + system CPU of "
        "the gateway and the sidecar together during the run, per call answered.",
    ]
    return "\n".join(lines)


def micro(repeats: int = 7, number: int = 200_000) -> list[tuple[str, float]]:
    """Per call, what the tracing code adds with export off, step by step (in this process, min of repeats, us).

    The end-to-end A/B above cannot resolve a few microseconds on a shared machine; these are the exact
    operations a P2P call runs that the baseline did not, timed alone.
    """
    import timeit

    from starlette.types import Message

    from gateway.trace_context import TraceContextPassThrough
    from shared_schema import Envelope, Kind, decode, encode
    from shared_schema.tracing import CALL_ID

    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"agent/1.0"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"content-length", b"120"),
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", b"p2p_hash_content"),
    ]
    scope = {"type": "http", "headers": headers}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def receive() -> Message:
        raise AssertionError("the timed app reads no body")

    async def send(message: Message) -> None:
        raise AssertionError("the timed app sends nothing")

    middleware = TraceContextPassThrough(app)

    def through_middleware() -> None:
        coroutine = middleware(scope, receive, send)
        with contextlib.suppress(StopIteration):
            coroutine.send(None)

    def direct() -> None:
        coroutine = app(scope, receive, send)
        with contextlib.suppress(StopIteration):
            coroutine.send(None)

    def call_id() -> None:
        token = CALL_ID.set(f"{'ab12cd34-'}{12345:x}")
        CALL_ID.reset(token)

    def bridge_client() -> None:
        if tracing.enabled():
            raise AssertionError
        tracing.traceparent_of_current()

    def served() -> None:
        with tracing.served("tool p2p_hash_content", traceparent=None, call_id="ab12cd34-3039"):
            pass

    envelope = Envelope(Kind.CALL, id="ab12cd34-3039", deadline=1e9, tool="p2p_hash_content", arguments=PAYLOAD)
    frame = encode(envelope)

    def codec() -> None:
        decode(encode(envelope))

    def best(fn: Any) -> float:
        return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6

    assert decode(frame).traceparent is None
    rows = [
        (
            "gateway: traceparent pass-through middleware (8 headers, none a traceparent)",
            best(through_middleware) - best(direct),
        ),
        ("gateway: the router's call id (make it, set and reset the context variable)", best(call_id)),
        ("gateway: the bridge client's check (export off?) and current trace context", best(bridge_client)),
        ("sidecar: serving the call (call id set and reset, no traceparent)", best(served)),
    ]
    rows.append(("(for scale) one envelope encoded and decoded, 1 KiB arguments", best(codec)))
    return rows


def saved_section() -> list[str]:
    """docs/benchmarks.md's section on tracing's cost, from the last ``--save`` (a separate run: about 7 minutes)."""
    return saved_figures.section(
        FIGURES,
        "## Tracing cost",
        [
            "A P2P tool call (`p2p_hash_content`, 1 KiB: gateway -> bridge -> sidecar) on three stacks side by side: "
            "`baseline` is the code this branch started from (no tracing code), `off` is this code with no "
            "`*_OTLP_ENDPOINT` (the default), `on` has both processes exporting every span over OTLP/HTTP. Command:",
            "",
            "    .venv/bin/python -m bench.tracing_cost --save   (6 rounds of 3 s per point, about 7 minutes)",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which stacks to run (baseline,off,on)")
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
        wanted = args.configs.split(",")
        sources = {
            "baseline": (baseline_src, {}),
            "off": (ROOT, {}),
            "on": (ROOT, {"SIDECAR_OTLP_ENDPOINT": receiver.url}),
        }
        with contextlib.ExitStack() as running_stacks:
            stacks = {
                name: running_stacks.enter_context(stack(tmp, name, sources[name][0], **sources[name][1]))
                for name in CONFIGS
                if name in wanted
            }
            clients = [int(count) for count in args.clients.split(",")]
            table = measure(stacks, rounds=args.rounds, seconds=args.seconds, clients=clients)
        spans = len(receiver.spans)
    assert spans > 0 or "on" not in wanted, "the 'on' stack exported nothing"
    text = markdown(table, rounds=args.rounds, seconds=args.seconds, baseline=revision, spans=spans)
    steps = micro()
    added = sum(us for name, us in steps if not name.startswith("(for scale)"))
    text += "\n\nWhat export off adds to each P2P call, timed alone (`micro()`, min of 7 x 200,000):\n\n"
    text += "| step | us per call |\n|---|---|\n"
    text += "\n".join(f"| {name} | {us:.2f} |" for name, us in steps)
    text += f"\n| **added per call, in all** | **{added:.2f}** |\n"
    print(text)
    if args.save:
        saved_figures.save(FIGURES, text)
        print(f"wrote {FIGURES.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
