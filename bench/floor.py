"""Scenario 2: the floor. Raw pyzmq DEALER -> ROUTER msgpack round trips next to our bridge's.

Both clients run in this process on the same asyncio loop, against the same
endpoint type (tcp on loopback):

* raw:  an asyncio DEALER and a plain blocking ROUTER echo (bench/raw_router.py), msgpack each way;
* ping: our bridge's PING/PONG through the gateway's BridgeClient and the sidecar's Trio loop;
* call: our bridge's full CALL of ``p2p_echo`` (envelope, routing, Trio task, argument validation, reply).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import zmq
import zmq.asyncio

from gateway.bridge_client import BridgeClient, SidecarState
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from shared_schema.envelope import Envelope
from tests.procs import free_port

ARGS = {"message": "x" * 64}


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


async def _raw(endpoint: str, n: int, concurrency: int) -> dict[str, float]:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    pending: dict[int, asyncio.Future[bytes]] = {}

    async def reader() -> None:
        while True:
            reply = msgpack.unpackb(await sock.recv())
            pending.pop(reply["id"]).set_result(reply)

    task = asyncio.create_task(reader())
    counter = iter(range(10**9))

    async def one() -> float:
        call_id = next(counter)
        future = asyncio.get_running_loop().create_future()
        pending[call_id] = future
        started = time.perf_counter()
        await sock.send(msgpack.packb({"k": "call", "id": call_id, "t": "echo", "a": ARGS}))
        await future
        return time.perf_counter() - started

    try:
        for _ in range(200):
            await one()
        sequential = [await one() for _ in range(n)]
        started = time.perf_counter()
        for _ in range(n // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        throughput = (n // concurrency) * concurrency / (time.perf_counter() - started)
    finally:
        task.cancel()
        sock.close()
        context.term()
    return {**_summary(sequential), "rps_concurrent": throughput}


async def _ours(endpoint: str, n: int, concurrency: int) -> dict[str, dict[str, float]]:
    settings = GatewaySettings(bridge_endpoint=endpoint, bridge_max_in_flight=4096)

    async def inbound(envelope: Envelope) -> Envelope:
        raise AssertionError("no inbound calls in this benchmark")

    client = BridgeClient(
        settings, GatewayMetrics(), on_catalog=lambda specs: None, on_inbound_call=inbound, hello_body=dict
    )
    results: dict[str, dict[str, float]] = {}
    async with client.running():
        assert await client.wait_until(SidecarState.UP, 10), client.state_reason

        async def call() -> float:
            started = time.perf_counter()
            await client.call("p2p_echo", ARGS, timeout=10)
            return time.perf_counter() - started

        for _ in range(200):
            await client.ping()
            await call()
        pings = [await client.ping() for _ in range(n)]
        calls = [await call() for _ in range(n)]
        started = time.perf_counter()
        for _ in range(n // concurrency):
            await asyncio.gather(*(call() for _ in range(concurrency)))
        throughput = (n // concurrency) * concurrency / (time.perf_counter() - started)
        results["ping"] = _summary(pings)
        results["call"] = {**_summary(calls), "rps_concurrent": throughput}
    return results


def run(sidecar_endpoint: str, *, n: int = 3000, concurrency: int = 64) -> dict[str, dict[str, float]]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("raw_router.py")), endpoint], stdout=subprocess.PIPE, text=True
    )
    try:
        assert router.stdout is not None and router.stdout.readline().strip() == "ready"
        raw = asyncio.run(_raw(endpoint, n, concurrency))
    finally:
        router.kill()
        router.wait()
    ours = asyncio.run(_ours(sidecar_endpoint, n, concurrency))
    return {"raw": raw, **ours}
