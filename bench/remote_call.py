"""Round trip of p2p_remote_call_tool between two nodes on loopback, with the hops around it measured side by side.

Starts two sidecars (a, b) and a gateway for each, as separate processes, b serving ``echo`` to remote peers.
Then, one call at a time over a kept-alive HTTP connection to gateway A:

  local        echo on gateway A                                   (HTTP + gateway only)
  bridge       p2p_echo: gateway A -> bridge -> sidecar a          (adds the ZeroMQ bridge)
  remote       p2p_remote_call_tool(echo on b): gateway A -> bridge -> sidecar a -> libp2p -> sidecar b
               -> bridge -> gateway B, and back                    (the full path)
  remote/a     the same calls, timed inside sidecar a (its reported elapsed_ms): libp2p + b's side only

and from this process, a py-libp2p client speaking our protocol straight to sidecar b:

  direct ping      the ``ping`` op (one libp2p round trip through b's event loop)
  direct call      the ``call_tool`` op for echo (libp2p -> sidecar b -> bridge -> gateway B)

and how long ``host.connect`` to b takes from a fresh host, with py-libp2p as shipped and with the node's
connect-delay workaround.

    .venv/bin/python -m bench.remote_call            # 2,000 calls per series after 200 warm-up (about a minute)
    .venv/bin/python -m bench.remote_call --calls 300 --warmup 50
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2p_sidecar.node.libp2p_host import batch_window_updates, remove_connect_delay
from p2p_sidecar.node.wire import PROTOCOL_ID, FrameReader, Reply, Request, decode, encode
from tests.p2p_client import say_hello
from tests.procs import TEST_NETWORK_SECRET, p2p_network, running_network


def http_series(port: int, tool: str, body: dict[str, Any], calls: int, warmup: int) -> tuple[list[float], list[Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    samples: list[float] = []
    results: list[Any] = []
    for index in range(warmup + calls):
        started = time.perf_counter()
        connection.request("POST", f"/tools/execute/{tool}", payload, headers)
        response = connection.getresponse()
        raw = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise SystemExit(f"{tool} failed: {response.status} {raw[:300]!r}")
        if index >= warmup:
            samples.append(elapsed)
            results.append(json.loads(raw)["result"])
    connection.close()
    return samples, results


def connect_series(target: str, count: int) -> tuple[list[float], list[float]]:
    """``host.connect`` to sidecar b from fresh hosts: py-libp2p as shipped, then with the node's workaround."""

    async def connects() -> list[float]:
        samples = []
        info = info_from_p2p_addr(multiaddr.Multiaddr(target))
        for _ in range(count):
            host = new_host()
            async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                started = time.perf_counter()
                await host.connect(info)
                samples.append((time.perf_counter() - started) * 1000)
                await host.disconnect(info.peer_id)
        return samples

    # Fresh hosts that hang up at once leave py-libp2p's background identify failing loudly; not what is measured.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    shipped = trio.run(connects)
    remove_connect_delay()
    return shipped, trio.run(connects)


def direct_series(target: str, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """Our protocol spoken by a py-libp2p host in this process, on one reused stream."""

    async def main() -> tuple[list[float], list[float]]:
        remove_connect_delay()
        batch_window_updates()
        host = new_host()
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(target))
            await host.connect(info)
            # The node answers only peers that said hello, and calls only from members of its closed network: a
            # hello with a proof of the test networks' secret, as a member node would send.
            opener = lambda: host.new_stream(info.peer_id, [TProtocol(PROTOCOL_ID)])  # noqa: E731
            await say_hello(opener, str(host.get_id()), str(info.peer_id), TEST_NETWORK_SECRET)
            stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL_ID)])
            reader = FrameReader(4 * 1024 * 1024)
            pending: list[bytes] = []
            ids = itertools.count(1)

            async def roundtrip(op: str, args: dict[str, Any]) -> Any:
                request_id = next(ids)
                await stream.write(encode(Request(request_id, op, args, 10.0), 4 * 1024 * 1024))
                while not pending:
                    pending.extend(reader.feed(await stream.read(65536)))
                reply = decode(pending.pop(0))
                assert isinstance(reply, Reply) and reply.id == request_id and reply.error is None, reply
                return reply.result

            series: dict[str, list[float]] = {"ping": [], "call_tool": []}
            for op, args in [("ping", {}), ("call_tool", {"tool": "echo", "args": {"message": "bench"}})]:
                for index in range(warmup + calls):
                    started = time.perf_counter()
                    await roundtrip(op, args)
                    if index >= warmup:
                        series[op].append((time.perf_counter() - started) * 1000)
            await stream.close()
            await host.disconnect(info.peer_id)
            return series["ping"], series["call_tool"]

    return trio.run(main)


SERIES = ("local", "bridge", "remote", "remote/a", "direct ping", "direct call")


def _stats(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.90))],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "n": len(ordered),
    }


def run(calls: int = 2000, warmup: int = 200) -> dict[str, Any]:
    """Every series, summarised (milliseconds), plus the connect-delay comparison and per-process notes."""
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        peers = p2p_network(
            Path(tmp),
            ["a", "b"],
            bootstrap={"b": ["a"]},
            gateways=("a", "b"),
            env={"b": {"SIDECAR_REMOTE_TOOLS_ALLOW": "echo"}},
            gateway_env={"GATEWAY_LOG_LEVEL": "warning"},
            SIDECAR_LOG_LEVEL="warning",
        )
        with running_network(peers):
            a, b = peers["a"], peers["b"]
            a.wait_connected([b])
            b.wait_connected([a])
            assert a.gateway is not None
            port = a.gateway.extra["port"]
            local, _ = http_series(port, "echo", {"message": "bench"}, calls, warmup)
            bridge, _ = http_series(port, "p2p_echo", {"message": "bench"}, calls, warmup)
            remote_body = {"tool_name": "echo", "args": {"message": "bench"}, "remote_peer_id": b.peer_id}
            remote, results = http_series(port, "p2p_remote_call_tool", remote_body, calls, warmup)
            inside_a = [float(result["elapsed_ms"]) for result in results]
            connect_shipped, connect_fixed = connect_series(b.multiaddr, 10)
            ping, call = direct_series(b.multiaddr, calls, warmup)
            notes = []
            for peer in (a, b):
                for direction in ("out", "in"):
                    total = peer.metric(f'sidecar_p2p_request_seconds_sum{{direction="{direction}"}}')
                    count = peer.metric(f'sidecar_p2p_request_seconds_count{{direction="{direction}"}}')
                    if count:
                        notes.append(f"sidecar {peer.name} requests {direction}: mean {1000 * total / count:.3f} ms")
                opened = peer.metric("sidecar_p2p_streams_opened_total")
                notes.append(f"sidecar {peer.name} streams opened: {opened:.0f}")
    samples = dict(zip(SERIES, (local, bridge, remote, inside_a, ping, call), strict=True))
    return {
        "calls": calls,
        "warmup": warmup,
        "series": {name: _stats(values) for name, values in samples.items()},
        "connect_ms": {"shipped": statistics.median(connect_shipped), "fixed": statistics.median(connect_fixed)},
        "notes": notes,
    }


DESCRIPTIONS = {
    "local": "`echo` on gateway A (HTTP + gateway only)",
    "bridge": "`p2p_echo`: gateway A -> bridge -> sidecar a",
    "remote": "**`p2p_remote_call_tool`**: gateway A -> a -> libp2p -> b -> gateway B, and back",
    "remote/a": "the same calls, timed inside sidecar a",
    "direct ping": "our `ping` op from a py-libp2p client straight to sidecar b",
    "direct call": "our `call_tool` op straight to sidecar b (-> bridge -> gateway B)",
}


def markdown(results: dict[str, Any]) -> str:
    series = results["series"]
    base = series["local"]["p50"]
    lines = [
        f"Two sidecars with a gateway each, loopback; {results['calls']} sequential calls per series after "
        f"{results['warmup']} warm-up, over one kept-alive HTTP connection (ms).",
        "",
        "| series | path | p50 | p90 | p99 | p50 vs local |",
        "|---|---|---|---|---|---|",
    ]
    for name in SERIES:
        entry = series[name]
        lines.append(
            f"| {name} | {DESCRIPTIONS[name]} | {entry['p50']:.3f} | {entry['p90']:.3f} | {entry['p99']:.3f} | "
            f"{entry['p50'] / base:.2f}x |"
        )
    extra = series["remote"]["p50"] - series["bridge"]["p50"]
    connect = results["connect_ms"]
    lines += [
        "",
        f"The libp2p hop and node b's side add {extra:.3f} ms (p50) to a bridged call. `host.connect` to b from a "
        f"fresh host: {connect['shipped']:.1f} ms with py-libp2p as shipped, {connect['fixed']:.1f} ms without its "
        "fixed 250 ms happy-eyeballs wait (p50 of 10).",
        "",
        "Per process: " + "; ".join(results["notes"]) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    print(markdown(run(args.calls, args.warmup)))


if __name__ == "__main__":
    main()
