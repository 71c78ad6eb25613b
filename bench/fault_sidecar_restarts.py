"""Steady load through the gateway while the sidecar is killed with SIGKILL and restarted, several times.

    .venv/bin/python -m bench.fault_sidecar_restarts [--clients 4] [--outages 5] [--down 2] [--up 5] [--json out.json]

Starts a real gateway and sidecar (bench/stack.py).  ``--clients`` threads
each keep one keep-alive connection to the gateway and call, in turn, a local
tool (REST ``hash_content``), a P2P tool (REST ``p2p_hash_content``) and a P2P
tool through the seed's JSON-RPC face (``/mcp/tools/call`` ``p2p_echo``),
recording when each call started and ended and whether it succeeded.  After a
warm-up, each outage is: ``kill -9`` the sidecar, wait ``--down`` seconds,
start a new sidecar on the same endpoint, wait for the first P2P call that
started after the restart to succeed ("recovered"), then run ``--up`` seconds
of steady state.

Per outage it reports the P2P error rate inside the outage window (from the
kill to recovery), the P2P error rate in the steady state after it, the time
to recovery from the restart (split into the sidecar's own start-up and the
gateway's reconnection), and every local-tool error (there must be none).
``tests/test_fault_restarts.py`` runs a short version and asserts on it.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import bench_stack
from tests.procs import Proc, http_json

CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("local", "/tools/execute/hash_content", {"data": "steady"}),
    ("p2p", "/tools/execute/p2p_hash_content", {"data": "steady"}),
    ("p2p", "/mcp/tools/call", {"name": "p2p_echo", "arguments": {"message": "steady"}}),
]


@dataclass(frozen=True)
class Call:
    kind: str
    path: str
    started: float
    ended: float
    ok: bool
    status: int


@dataclass
class Load:
    port: int
    clients: int
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _one(self, conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> tuple[bool, int]:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
        if response.status != 200:
            return False, response.status
        if path == "/mcp/tools/call":
            return "result" in payload and not payload["result"]["isError"], response.status
        return payload.get("status") == "success", response.status

    def _client(self, offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        index = offset
        while not self.stop.is_set():
            kind, path, body = CALLS[index % len(CALLS)]
            index += 1
            started = time.monotonic()
            try:
                ok, status = self._one(conn, path, body)
            except (OSError, http.client.HTTPException, ValueError):
                ok, status = False, 0
                conn.close()
            call = Call(kind, path, started, time.monotonic(), ok, status)
            with self._lock:
                self.calls.append(call)
        conn.close()

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=(i,), name=f"load-{i}") for i in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


def _wait_recovered(load: Load, since: float, timeout: float) -> float | None:
    """End time of the first successful P2P call that started at or after ``since``."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        calls = load.snapshot()
        for call in calls[seen:]:
            if call.kind == "p2p" and call.ok and call.started >= since:
                return call.ended
        seen = len(calls)
        time.sleep(0.01)
    return None


def _wait_sidecar_healthy(sidecar: Proc, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_json("GET", sidecar.health_url, timeout=0.5)[0] == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.01)
    return None


def _p99_ms(calls: list[Call]) -> float:
    """How long the 99th-percentile call took: for failures, how fast the caller learned."""
    if not calls:
        return 0.0
    latencies = sorted(call.ended - call.started for call in calls)
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000


def _rate(calls: list[Call]) -> float | None:
    return sum(not call.ok for call in calls) / len(calls) if calls else None


def run(
    gateway: Proc, sidecar: Proc, *, clients: int, warmup: float, outages: int, down: float, up: float
) -> dict[str, Any]:
    load = Load(gateway.extra["port"], clients)
    threads = load.start()
    windows: list[dict[str, float | None]] = []
    try:
        time.sleep(warmup)
        for _ in range(outages):
            killed = time.monotonic()
            sidecar.kill9()
            time.sleep(down)
            restarted = time.monotonic()
            sidecar.start(wait=False)
            healthy = _wait_sidecar_healthy(sidecar, 60)
            recovered = _wait_recovered(load, restarted, 60)
            windows.append({"killed": killed, "restarted": restarted, "healthy": healthy, "recovered": recovered})
            time.sleep(up)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return analyse(load.snapshot(), windows, settings={"clients": clients, "down_s": down, "up_s": up})


def _at(window: dict[str, float | None], moment: str) -> float:
    """A moment every window has (``killed``, ``restarted``)."""
    value = window[moment]
    assert value is not None, f"window without {moment}"
    return value


def analyse(calls: list[Call], windows: list[dict[str, float | None]], settings: dict[str, Any]) -> dict[str, Any]:
    """Attribute every call to an outage window or to steady state, and compute the figures."""
    first = calls[0].started if calls else 0.0

    def inside(call: Call) -> bool:
        for window in windows:
            end = window["recovered"] if window["recovered"] is not None else float("inf")
            if call.started < end and call.ended >= _at(window, "killed"):
                return True
        return False

    outages = []
    for index, window in enumerate(windows):
        killed, restarted = _at(window, "killed"), _at(window, "restarted")
        recovered, healthy = window["recovered"], window["healthy"]
        next_kill = _at(windows[index + 1], "killed") if index + 1 < len(windows) else float("inf")
        p2p = [call for call in calls if call.kind == "p2p"]
        during = [c for c in p2p if recovered is not None and c.started < recovered and c.ended >= killed]
        # steady state: calls that started after recovery and were over before the next kill
        after = [c for c in p2p if recovered is not None and c.started >= recovered and c.ended < next_kill]
        outages.append(
            {
                "outage_s": None if recovered is None else recovered - killed,
                "recovery_s": None if recovered is None else recovered - restarted,
                "sidecar_start_s": None if healthy is None else healthy - restarted,
                "reconnect_s": None if recovered is None or healthy is None else max(0.0, recovered - healthy),
                "p2p_calls_during": len(during),
                "p2p_error_rate_during": _rate(during),
                "p2p_calls_after": len(after),
                "p2p_error_rate_after": _rate(after),
            }
        )
    local = [call for call in calls if call.kind == "local"]
    p2p_errors = [call for call in calls if call.kind == "p2p" and not call.ok]
    statuses: dict[str, int] = {}
    for call in p2p_errors:
        statuses[str(call.status)] = statuses.get(str(call.status), 0) + 1
    recoveries = [o["recovery_s"] for o in outages if o["recovery_s"] is not None]
    return {
        "settings": settings,
        "duration_s": (calls[-1].ended - first) if calls else 0.0,
        "calls": len(calls),
        "local_calls": len(local),
        "local_errors": sum(not call.ok for call in local),
        "local_p99_ms": _p99_ms(local),
        "p2p_errors": len(p2p_errors),
        "p2p_errors_outside_outages": sum(not inside(call) for call in p2p_errors),
        "p2p_error_statuses": statuses,
        "p2p_error_p99_ms": _p99_ms(p2p_errors),
        "recovery_s_median": statistics.median(recoveries) if recoveries else None,
        "recovery_s_max": max(recoveries) if recoveries else None,
        "outages": outages,
    }


def print_report(result: dict[str, Any]) -> None:
    settings = result["settings"]
    print(
        f"{result['calls']} calls in {result['duration_s']:.1f}s from {settings['clients']} clients; "
        f"sidecar down {settings['down_s']}s per outage, {settings['up_s']}s steady between"
    )
    local = f"{result['local_calls']} calls, {result['local_errors']} errors, p99 {result['local_p99_ms']:.1f} ms"
    print(f"local tools: {local}")
    print(
        f"P2P errors: {result['p2p_errors']} ({result['p2p_errors_outside_outages']} outside outage windows), "
        f"statuses {result['p2p_error_statuses']}, answered in p99 {result['p2p_error_p99_ms']:.1f} ms"
    )
    header = ["#", "outage s", "recovery s", "start s", "reconn s", "P2P err during", "P2P err after"]
    widths = [2, 9, 10, 8, 8, 15, 14]
    print("  " + " ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    for number, outage in enumerate(result["outages"], 1):

        def fmt(value: float | None, spec: str = ".2f") -> str:
            return "-" if value is None else format(value, spec)

        during = f"{fmt(outage['p2p_error_rate_during'], '.0%')} of {outage['p2p_calls_during']}"
        after = f"{fmt(outage['p2p_error_rate_after'], '.0%')} of {outage['p2p_calls_after']}"
        print(
            f"  {number:2d} {fmt(outage['outage_s']):>9} {fmt(outage['recovery_s']):>10} "
            f"{fmt(outage['sidecar_start_s']):>8} {fmt(outage['reconnect_s']):>8} {during:>15} {after:>14}"
        )
    print(f"recovery after restart: median {result['recovery_s_median']:.2f}s, max {result['recovery_s_max']:.2f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--outages", type=int, default=5)
    parser.add_argument("--down", type=float, default=2.0, help="seconds the sidecar stays dead")
    parser.add_argument("--up", type=float, default=5.0, help="seconds of steady state after each recovery")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-fault-") as tmp, bench_stack(Path(tmp)) as (gateway, sidecar):
        result = run(
            gateway,
            sidecar,
            clients=args.clients,
            warmup=args.warmup,
            outages=args.outages,
            down=args.down,
            up=args.up,
        )
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
