"""Hostile traffic at every socket the gateway and sidecar listen on, beside a well-behaved client.

    .venv/bin/python -m bench.attack_sockets [--seconds 30] [--slow 200] [--json out.json]

Starts a real gateway and sidecar (bench/stack.py), then runs three phases:
``before`` (the client alone), ``attack`` (the client while an attacker process
hits the sockets) and ``after``.  The attacker is one asyncio process, so it
can hold hundreds of connections, and it connects from 127.0.0.2 where it can,
as a second host would (per-client limits apply to it, not to the client):

* gateway HTTP port: random garbage; slowloris heads (a header byte per
  second); bodies and heads far over the limits (declared, chunked, streamed);
* bridge port (ZeroMQ, raw TCP): garbage; ZMTP greetings cut short and held
  open; a valid NULL handshake followed by a frame header announcing 1 TiB;
* sidecar admin port: garbage, slowloris heads, oversize heads;
* the sidecar's libp2p port (``bench/attack_libp2p.py``): garbage before any
  handshake, Noise handshakes cut short and held, half-open connections, and,
  from a real libp2p peer after a complete handshake, oversize, garbage and
  malformed frames on our protocol, members-only ops, hundreds of idle
  streams, and a stream of fresh-key handshakes.

The network is closed (a network secret): a second node, a member, sits
beside the attacked one.  The well-behaved client calls a local tool and a
P2P tool through the REST face, a P2P tool through /mcp, the sidecar's admin
/health, a remote tool call from the second node to the attacked one over
libp2p, and a task submitted to the attacked node that only the second node
may run (it claims it over libp2p), in a loop.
Its success rate and latency per phase, the attacker's tallies, and each
process's RSS are printed (and written as JSON with --json).  The test
``tests/test_socket_attacks.py`` runs a shorter version and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import attack_libp2p
from bench.stack import modern_call
from tests.procs import Peer, Proc, p2p_network, running_network, wait_for

ATTACKER_ADDRESS = "127.0.0.2"
ZMTP_NULL_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
ZMTP_READY = b"\x04" + bytes([len(_READY_BODY)]) + _READY_BODY


# -- the well-behaved client ------------------------------------------------------------------------


@dataclass
class Sample:
    phase: str
    kind: str
    ok: bool
    seconds: float


@dataclass(frozen=True)
class P2PTarget:
    """The attacked node's libp2p side, and the member node the polite client uses to reach it."""

    multiaddr: str
    port: int
    peer_id: str
    member_gateway_port: int
    member_peer_id: str


@dataclass
class Client:
    """One thread, keep-alive connections, a short pause between rounds: what a polite agent looks like."""

    gateway_port: int
    admin_port: int
    p2p: P2PTarget | None = None
    phase: str = "before"
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _call(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: Any, headers: dict[str, Any]
    ) -> bool:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, payload, {"content-type": "application/json", **headers})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            return False
        if path == "/mcp":
            text = data.decode()
            if "data:" in text:
                text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
            return "error" not in json.loads(text) and not json.loads(text)["result"].get("isError")
        if path == "/tools/execute/task_submit":  # the task must also run, on the member node, and come back
            task_id = json.loads(data)["result"]["task_id"]
            return self._call(conn, "POST", "/tools/execute/task_wait", {"task_id": task_id, "timeout_s": 10}, {})
        if path == "/tools/execute/task_wait":
            result = json.loads(data)["result"]
            assert self.p2p is not None  # task calls are made only with a P2P target
            return result["status"] == "completed" and result["executed_by"] == self.p2p.member_peer_id
        return True

    def run(self) -> None:
        gateway = http.client.HTTPConnection("127.0.0.1", self.gateway_port, timeout=10)
        admin = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        mcp_body, mcp_headers = modern_call("p2p_echo", {"message": "polite"})
        calls = [
            ("local", gateway, "POST", "/tools/execute/hash_content", {"data": "polite"}, {}),
            ("p2p", gateway, "POST", "/tools/execute/p2p_hash_content", {"data": "polite"}, {}),
            ("mcp_p2p", gateway, "POST", "/mcp", mcp_body, mcp_headers),
            ("admin", admin, "GET", "/health", None, {}),
        ]
        connections = [gateway, admin]
        if self.p2p is not None:
            member = http.client.HTTPConnection("127.0.0.1", self.p2p.member_gateway_port, timeout=15)
            connections.append(member)
            remote = {"tool_name": "hash_content", "args": {"data": "polite"}, "remote_peer_id": self.p2p.peer_id}
            placed = {"placement": {"peer": self.p2p.member_peer_id}}
            task = {"task_type": "echo", "payload": "polite", "metadata": placed}
            calls.append(("libp2p_remote_call", member, "POST", "/tools/execute/p2p_remote_call_tool", remote, {}))
            calls.append(("libp2p_task", gateway, "POST", "/tools/execute/task_submit", task, {}))
        while not self.stop.is_set():
            for kind, conn, method, path, body, headers in calls:
                started = time.perf_counter()
                try:
                    ok = self._call(conn, method, path, body, headers)
                except (OSError, http.client.HTTPException, ValueError, KeyError):
                    ok = False
                    conn.close()  # reconnects on the next request
                self.samples.append(Sample(self.phase, kind, ok, time.perf_counter() - started))
            self.stop.wait(0.02)
        for conn in connections:
            conn.close()


def summarize(samples: list[Sample]) -> dict[str, dict[str, float]]:
    by_phase: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_phase[sample.phase].append(sample)
    summary = {}
    for phase, items in by_phase.items():
        latencies = sorted(sample.seconds for sample in items)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        summary[phase] = {
            "requests": len(items),
            "success_rate": sum(sample.ok for sample in items) / len(items),
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": latencies[-1] * 1000,
        }
    return summary


# -- the attacker (its own process, asyncio) ---------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, key: str) -> None:
        self.counts[key] += 1


async def _open(port: int, source: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    local = (source, 0) if source else None
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=local), 5)


async def _answer(reader: asyncio.StreamReader, limit: float) -> bytes:
    with contextlib.suppress(TimeoutError, OSError):
        return await asyncio.wait_for(reader.read(256), limit)
    return b""


def _status(head: bytes) -> str:
    if head.startswith(b"HTTP/1.1 "):
        return head.split(b" ", 2)[1].decode()
    return "closed" if not head else "non_http_reply"  # ZeroMQ answers with its own greeting first


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def garbage(name: str, port: int, source: str | None, tally: Tally, stop: asyncio.Event) -> None:
    """Random bytes, then read whatever comes back, over and over."""
    while not stop.is_set():
        try:
            reader, writer = await _open(port, source)
            writer.write(os.urandom(int.from_bytes(os.urandom(2), "big") % 4096 + 1))
            await writer.drain()
            tally.add(f"{name}:{_status(await _answer(reader, 2))}")
            await _close(writer)
        except OSError:
            tally.add(f"{name}:refused")
            await asyncio.sleep(0.05)


async def slowloris(name: str, port: int, source: str | None, tally: Tally, stop: asyncio.Event) -> None:
    """An HTTP head that never ends: one more header byte every second, reconnecting when dropped."""
    while not stop.is_set():
        try:
            reader, writer = await _open(port, source)
        except OSError:
            tally.add(f"{name}:refused")
            await asyncio.sleep(0.5)
            continue
        tally.add(f"{name}:opened")
        try:
            writer.write(b"POST /tools/execute/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while not stop.is_set():
                await writer.drain()
                head = await _answer(reader, 1.0)
                if head or reader.at_eof():
                    tally.add(f"{name}:{_status(head)}")
                    break
                writer.write(b"a")
        except OSError:
            tally.add(f"{name}:reset")
        await _close(writer)


async def oversize_http(name: str, port: int, source: str | None, tally: Tally, stop: asyncio.Event) -> None:
    """Bodies declared or streamed far past the limit, and heads far past theirs."""
    heads = [
        b"POST /mcp/tools/call HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: 1073741824\r\n\r\n",
        b"POST /mcp/tools/call HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ",
    ]
    chunk = b"x" * 65536
    round_number = 0
    while not stop.is_set():
        head = heads[round_number % len(heads)]
        round_number += 1
        try:
            reader, writer = await _open(port, source)
        except OSError:
            tally.add(f"{name}:refused")
            await asyncio.sleep(0.05)
            continue
        answer = b""
        try:
            writer.write(head)
            for _ in range(128):  # up to 8 MiB, stopping as soon as the server answers or hangs up
                answer = await _answer(reader, 0.01)
                if answer or reader.at_eof():
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if b"chunked" in head else chunk)
                await writer.drain()
            answer = answer or await _answer(reader, 2)
        except OSError:
            pass  # the server hung up mid-send: what it said (if anything) is in answer
        tally.add(f"{name}:{_status(answer)}")
        await _close(writer)


async def zmtp_partial(name: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    """The first 10 bytes of a ZMTP greeting, then silence, until the bridge drops the connection."""
    while not stop.is_set():
        try:
            reader, writer = await _open(port, None)
        except OSError:
            tally.add(f"{name}:refused")
            await asyncio.sleep(0.5)
            continue
        writer.write(ZMTP_NULL_GREETING[:10])
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while not stop.is_set() and not reader.at_eof():
                await _answer(reader, 1.0)
        if reader.at_eof():
            tally.add(f"{name}:dropped_after_{round(time.monotonic() - started)}s")
        await _close(writer)


async def zmtp_huge_frame(name: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    """A correct NULL handshake, then a frame announcing 1 TiB, then data until the bridge hangs up."""
    while not stop.is_set():
        try:
            reader, writer = await _open(port, None)
            writer.write(ZMTP_NULL_GREETING + ZMTP_READY)
            writer.write(b"\x02" + (1 << 40).to_bytes(8, "big"))
            for _ in range(64):
                writer.write(b"\x00" * 65536)
                await writer.drain()
                if reader.at_eof():
                    break
                await asyncio.sleep(0)
            await _answer(reader, 1.0)
            tally.add(f"{name}:{'dropped' if reader.at_eof() else 'held'}")
            await _close(writer)
        except OSError:
            tally.add(f"{name}:reset")
            await asyncio.sleep(0.05)


async def _attack(ports: dict[str, int], slow: int, seconds: float) -> dict[str, int]:
    tally = Tally()
    stop = asyncio.Event()
    http, bridge, admin = ports["http"], ports["bridge"], ports["admin"]
    tasks = [
        asyncio.create_task(garbage("http_garbage", http, ATTACKER_ADDRESS, tally, stop)),
        asyncio.create_task(oversize_http("http_oversize", http, ATTACKER_ADDRESS, tally, stop)),
        asyncio.create_task(garbage("bridge_garbage", bridge, None, tally, stop)),
        asyncio.create_task(zmtp_huge_frame("bridge_huge_frame", bridge, tally, stop)),
        asyncio.create_task(garbage("admin_garbage", admin, ATTACKER_ADDRESS, tally, stop)),
        asyncio.create_task(oversize_http("admin_oversize", admin, ATTACKER_ADDRESS, tally, stop)),
    ]
    for _ in range(slow):
        tasks.append(asyncio.create_task(slowloris("http_slowloris", http, ATTACKER_ADDRESS, tally, stop)))
    for _ in range(slow // 2):
        tasks.append(asyncio.create_task(zmtp_partial("bridge_partial_greeting", bridge, tally, stop)))
        tasks.append(asyncio.create_task(slowloris("admin_slowloris", admin, ATTACKER_ADDRESS, tally, stop)))
    if "p2p" in ports:
        tasks.append(asyncio.create_task(garbage("p2p_garbage", ports["p2p"], ATTACKER_ADDRESS, tally, stop)))
        tasks.extend(attack_libp2p.raw_tasks(ports["p2p"], slow, tally, stop, ATTACKER_ADDRESS))
    await asyncio.sleep(seconds)
    stop.set()
    _done, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return dict(sorted(tally.counts.items()))


def _attacker_process(ports: dict[str, int], slow: int, seconds: float, results: Any) -> None:
    results.put(asyncio.run(_attack(ports, slow, seconds)))


# -- the stack ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackedStack:
    gateway: Proc
    sidecar: Proc
    p2p: P2PTarget


@contextlib.contextmanager
def attack_network(
    tmp: Path, *, sidecar_env: dict[str, str] | None = None, **gateway_env: str
) -> Iterator[AttackedStack]:
    """Node a (attacked: gateway + sidecar) and node b (a member, with its own gateway) in a closed network.

    a serves ``hash_content`` to members, and the polite client's tasks are placed on b, so they run only
    after b claimed them over libp2p; both hold the same network secret, so a stranger is refused everything
    but hello and ping.
    """
    (tmp / "network.secret").write_text(os.urandom(32).hex())
    peers = p2p_network(
        tmp,
        ["a", "b"],
        bootstrap={"b": ["a"]},
        gateways=("a", "b"),
        env={"a": {"SIDECAR_REMOTE_TOOLS_ALLOW": "hash_content", **(sidecar_env or {})}},
        gateway_env={"GATEWAY_LOG_LEVEL": "warning", **gateway_env},
        SIDECAR_NETWORK_SECRET_FILE=str(tmp / "network.secret"),
        SIDECAR_LOG_LEVEL="warning",
    )
    a, b = peers["a"], peers["b"]
    with running_network(peers):
        wait_for(lambda: _member_of(a, b), 30, 0.2, what="b a connected member of a")
        assert a.gateway is not None and b.gateway is not None
        target = P2PTarget(a.multiaddr, a.sidecar.extra["p2p_port"], a.peer_id, b.gateway.extra["port"], b.peer_id)
        yield AttackedStack(a.gateway, a.sidecar, target)


def _member_of(owner: Peer, other: Peer) -> bool:
    status, body = owner.tool("peer_list", {"status_filter": "connected"})
    return status == 200 and any(
        peer["peer_id"] == other.peer_id and peer["member"] and "echo" in peer["capabilities"].get("task_types", [])
        for peer in body["result"]["peers"]
    )


# -- the run ------------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(
    gateway: Proc,
    sidecar: Proc,
    *,
    before: float,
    attack: float,
    after: float,
    slow: int,
    p2p: P2PTarget | None = None,
    idle_streams: int = 300,
) -> dict[str, Any]:
    """Run the three phases against a started gateway + sidecar (and its libp2p port); returns everything measured."""
    bridge_port = int(sidecar.extra["endpoint"].rsplit(":", 1)[1])
    ports = {"http": gateway.extra["port"], "bridge": bridge_port, "admin": sidecar.extra["admin_port"]}
    if p2p is not None:
        ports["p2p"] = p2p.port
    client = Client(gateway.extra["port"], sidecar.extra["admin_port"], p2p)
    thread = threading.Thread(target=client.run, name="polite-client")
    rss = {"before": {"gateway": rss_mib(gateway.pid), "sidecar": rss_mib(sidecar.pid)}}
    thread.start()
    try:
        time.sleep(before)
        client.phase = "attack"
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        attacker = context.Process(target=_attacker_process, args=(ports, slow, attack, results), name="attacker")
        attacker.start()
        p2p_attacker = None
        if p2p is not None:
            p2p_attacker = context.Process(
                target=attack_libp2p.p2p_attacker_process,
                args=(p2p.multiaddr, attack, idle_streams, results),
                name="libp2p-attacker",
            )
            p2p_attacker.start()
        peak = {"gateway": 0.0, "sidecar": 0.0}
        deadline = time.monotonic() + attack
        while time.monotonic() < deadline:
            time.sleep(0.5)
            peak = {
                "gateway": max(peak["gateway"], rss_mib(gateway.pid)),
                "sidecar": max(peak["sidecar"], rss_mib(sidecar.pid)),
            }
        tallies = results.get(timeout=60)
        attacker.join(timeout=30)
        if p2p_attacker is not None:
            tallies = dict(sorted({**tallies, **results.get(timeout=60)}.items()))
            p2p_attacker.join(timeout=30)
        rss["attack_peak"] = peak
        client.phase = "after"
        time.sleep(after)
    finally:
        client.stop.set()
        thread.join(timeout=30)
    rss["after"] = {"gateway": rss_mib(gateway.pid), "sidecar": rss_mib(sidecar.pid)}
    return {
        "client": summarize(client.samples),
        "client_by_kind": {
            kind: summarize([sample for sample in client.samples if sample.kind == kind])
            for kind in sorted({sample.kind for sample in client.samples})
        },
        "attacker": tallies,
        "rss_mib": rss,
        "alive": {"gateway": gateway.alive(), "sidecar": sidecar.alive()},
        "settings": {"before_s": before, "attack_s": attack, "after_s": after, "slow_connections": slow},
    }


def print_report(result: dict[str, Any]) -> None:
    print("well-behaved client (REST local, REST P2P, /mcp P2P, admin /health, libp2p remote call and task):")
    print(f"  {'phase':8} {'requests':>8} {'success':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for phase in ("before", "attack", "after"):
        row = result["client"].get(phase)
        if row:
            print(
                f"  {phase:8} {row['requests']:8d} {row['success_rate']:8.2%} {row['p50_ms']:8.1f} "
                f"{row['p99_ms']:8.1f} {row['max_ms']:8.1f}"
            )
    print("by kind under attack:")
    for kind, rows in result["client_by_kind"].items():
        row = rows.get("attack")
        if row:
            print(
                f"  {kind:20} {row['requests']:6d} {row['success_rate']:8.2%} p50 {row['p50_ms']:7.1f} ms, "
                f"p99 {row['p99_ms']:7.1f} ms"
            )
    print("attacker tallies (attack:outcome -> count):")
    for key, count in result["attacker"].items():
        print(f"  {key:42} {count}")
    print("RSS MiB:", json.dumps(result["rss_mib"]))
    print("processes alive after:", result["alive"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the attack phase")
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--slow", type=int, default=200, help="slowloris connections held against the gateway")
    parser.add_argument("--idle-streams", type=int, default=300, help="idle streams the libp2p attacker holds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-attack-") as tmp, attack_network(Path(tmp)) as target:
        result = run(
            target.gateway,
            target.sidecar,
            before=args.before,
            attack=args.seconds,
            after=args.after,
            slow=args.slow,
            p2p=target.p2p,
            idle_streams=args.idle_streams,
        )
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
