"""A/B: the gateway's hand-written asyncio adapter (``gateway/zmq_asyncio.py``) against pyzmq's ``zmq.asyncio``.

The choice this measures: the bridge client reads its DEALER through reader callbacks that drain the socket
and resolve each caller's future synchronously, where ``zmq.asyncio`` wraps every send and receive in a
Future of its own and re-schedules after each.  Both clients run in this process, on one asyncio loop each
in turn, against the same echo ROUTER in another process (``bench/raw_router.py``), with the same framing
(one msgpack map per frame) and the same correlation (a dict of futures by call id).  What is compared is
the client process's CPU per call (``time.process_time``, which also counts libzmq's I/O thread, the same
for both) and the calls per second, at a fixed number of calls in flight.  Runs alternate A, B, A, B, ...
so both see the same machine; medians are reported with the ratio.

    python -m bench.zmq_adapters                # 64 in flight, 20000 calls a run, 5 runs each
    python -m bench.zmq_adapters --in-flight 1 --calls 5000
    python -m bench.zmq_adapters --save         # both, into bench/zmq_adapters.md for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from bench import saved_figures
from gateway.zmq_asyncio import AsyncioZmqSocket
from tests.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
FIGURES = Path(__file__).with_suffix(".md")
SAVE_COMMAND = ".venv/bin/python -m bench.zmq_adapters --save"
ARGS = {"message": "x" * 64}

Caller = Callable[[int], Awaitable[None]]


async def _drive(call: Caller, calls: int, in_flight: int) -> None:
    """``in_flight`` workers making ``calls`` calls in all, each waiting for its answer before the next."""
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < calls:
            await call(n)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def run_callbacks(endpoint: str, calls: int, in_flight: int) -> dict[str, float]:
    """A: reader callbacks, as the gateway's BridgeClient uses them."""
    loop = asyncio.get_running_loop()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    pending: dict[int, asyncio.Future[Any]] = {}

    def on_message(frames: list[bytes]) -> None:
        reply = msgpack.unpackb(frames[0])
        future = pending.pop(reply["id"], None)
        if future is not None:
            future.set_result(reply["r"])

    sock = AsyncioZmqSocket(raw, on_message, loop)

    async def call(n: int) -> None:
        future = pending[n] = loop.create_future()
        sock.send_nowait([msgpack.packb({"k": "call", "id": n, "t": "echo", "a": ARGS})])
        await future

    try:
        return await _measure(call, calls, in_flight)
    finally:
        sock.close()
        context.term()


async def run_zmq_asyncio(endpoint: str, calls: int, in_flight: int) -> dict[str, float]:
    """B: pyzmq's asyncio sockets, one reader task resolving the callers' futures."""
    loop = asyncio.get_running_loop()
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    pending: dict[int, asyncio.Future[Any]] = {}

    async def reader() -> None:
        while True:
            reply = msgpack.unpackb(await sock.recv())
            future = pending.pop(reply["id"], None)
            if future is not None:
                future.set_result(reply["r"])

    task = asyncio.create_task(reader())

    async def call(n: int) -> None:
        future = pending[n] = loop.create_future()
        await sock.send(msgpack.packb({"k": "call", "id": n, "t": "echo", "a": ARGS}))
        await future

    try:
        return await _measure(call, calls, in_flight)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
        context.term()


async def _measure(call: Caller, calls: int, in_flight: int) -> dict[str, float]:
    await _drive(call, min(calls, 1000), in_flight)  # warm-up: connected, buffers grown
    wall, cpu = time.perf_counter(), time.process_time()
    await _drive(call, calls, in_flight)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"cpu_us_per_call": cpu / calls * 1e6, "calls_per_s": calls / wall}


VARIANTS: dict[str, Callable[[str, int, int], Coroutine[Any, Any, dict[str, float]]]] = {
    "reader callbacks (gateway/zmq_asyncio.py)": run_callbacks,
    "zmq.asyncio": run_zmq_asyncio,
}


def run(*, calls: int, in_flight: int, repeats: int) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = subprocess.Popen(
        [sys.executable, "-m", "bench.raw_router", endpoint], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert router.stdout is not None and router.stdout.readline().strip() == "ready"
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for _ in range(repeats):
            for name, variant in VARIANTS.items():  # interleaved: A, B, A, B, ...
                samples[name].append(asyncio.run(variant(endpoint, calls, in_flight)))
    finally:
        router.terminate()
        router.wait(timeout=10)
    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in ("cpu_us_per_call", "calls_per_s")}
        for name, runs in samples.items()
    }
    ours, theirs = (medians[name] for name in VARIANTS)
    return {
        "calls": calls,
        "in_flight": in_flight,
        "repeats": repeats,
        "medians": medians,
        "cpu_ratio_zmq_asyncio_over_callbacks": theirs["cpu_us_per_call"] / ours["cpu_us_per_call"],
        "rate_ratio_callbacks_over_zmq_asyncio": ours["calls_per_s"] / theirs["calls_per_s"],
        "runs": samples,
    }


def table(results: list[dict[str, Any]]) -> str:
    """The saved figures: one row per client and load, with the ratios measured in the same run."""
    lines = [
        "| in flight | client | CPU µs per call | calls/s | zmq.asyncio / callbacks CPU "
        "| callbacks / zmq.asyncio rate |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for index, (name, median) in enumerate(result["medians"].items()):
            ratios = (
                f"{result['cpu_ratio_zmq_asyncio_over_callbacks']:.2f}x | "
                f"{result['rate_ratio_callbacks_over_zmq_asyncio']:.2f}x"
                if index == 0
                else " | "
            )
            lines.append(
                f"| {result['in_flight']} | {name} | {median['cpu_us_per_call']:.1f} | "
                f"{median['calls_per_s']:.0f} | {ratios} |"
            )
    runs = ", ".join(f"{r['calls']} calls x {r['repeats']} runs at {r['in_flight']} in flight" for r in results)
    return "\n".join([*lines, "", f"Medians of interleaved runs ({runs}), {time.strftime('%Y-%m-%d')}."])


def saved_section() -> list[str]:
    """docs/benchmarks.md's section on the asyncio adapter, from the last ``--save`` (a separate run, seconds)."""
    return saved_figures.section(
        FIGURES,
        "## The gateway's ZeroMQ adapter: reader callbacks vs zmq.asyncio",
        [
            "The same DEALER client written both ways in one process (a dict of futures by call id, msgpack frames), "
            "against one echo ROUTER process, runs alternating. CPU is the client process's, per call. Command:",
            "",
            f"    {SAVE_COMMAND}",
        ],
    )


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['calls']} calls a run, {result['in_flight']} in flight, {result['repeats']} runs each, interleaved; "
        "medians:",
        f"{'client':<44} {'CPU µs/call':>12} {'calls/s':>10}",
    ]
    for name, median in result["medians"].items():
        lines.append(f"{name:<44} {median['cpu_us_per_call']:>12.1f} {median['calls_per_s']:>10.0f}")
    lines.append(
        f"zmq.asyncio costs {result['cpu_ratio_zmq_asyncio_over_callbacks']:.2f}x the CPU per call; reader "
        f"callbacks run {result['rate_ratio_callbacks_over_zmq_asyncio']:.2f}x the calls per second"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON too")
    parser.add_argument("--save", action="store_true", help="64 and 1 in flight, saved to " + FIGURES.name)
    args = parser.parse_args()
    if args.save:
        results = [run(calls=20_000, in_flight=64, repeats=5), run(calls=5_000, in_flight=1, repeats=5)]
        for result in results:
            print(report(result))
        saved_figures.save(FIGURES, table(results))
        print(f"saved to {FIGURES.relative_to(ROOT)}")
        return
    result = run(calls=args.calls, in_flight=args.in_flight, repeats=args.repeats)
    print(report(result))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
