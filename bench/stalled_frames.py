"""Stalled frames: peers that announce large messages and never send their last byte, against the sidecar's RSS.

Each attacking peer is a py-libp2p host with a fresh key (peer ids cost nothing), in this process under Trio.
It completes Noise + Yamux, opens ``streams`` streams of ``/mcp-p2p/rpc/1.0.0`` and on each announces a frame of
``frame`` bytes (4 MiB, the default message limit) and sends all of it but the last byte, then holds the stream.
Meanwhile the sidecar's RSS is sampled from /proc.  What the node should do: hold at most
``SIDECAR_P2P_MAX_PARTIAL_BYTES_PER_PEER`` per peer and ``SIDECAR_P2P_MAX_PARTIAL_BYTES`` in all (streams past
that are reset at once), reset every held stream ``SIDECAR_P2P_FRAME_TIMEOUT`` after its first byte, and give the
memory back.

    .venv/bin/python -m bench.stalled_frames            # a sidecar with default settings: 4 peers x 16 streams
    .venv/bin/python -m bench.stalled_frames --peers 8 --streams 32 --hold 15
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAME = 4 * 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Sampler:
    """RSS of one process every ``interval`` seconds, in a thread, with the time of each sample."""

    pid: int
    interval: float = 0.1
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mib(self.pid)))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((rss for at, rss in self.samples if since <= at <= until), default=0.0)

    def median(self, since: float, until: float) -> float:
        chosen = [rss for at, rss in self.samples if since <= at <= until]
        return statistics.median(chosen) if chosen else 0.0


def attack(target: str, *, peers: int, streams: int, frame: int = FRAME, hold: float = 15.0) -> dict[str, Any]:
    """Run the attackers in a process of their own (under Trio); returns what happened to the streams.

    ``held_s`` lists, for each stream the node ended, how long after its first byte; ``open_at_end`` counts
    streams still open when ``hold`` ran out.  A separate process keeps the attackers' py-libp2p hosts (and
    the sockets they leave behind) out of the caller.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_attack_process, target, peers, streams, frame, hold).result(timeout=hold + 120)


def _attack_process(target: str, peers: int, streams: int, frame: int, hold: float) -> dict[str, Any]:
    import trio

    return trio.run(_attack, target, peers, streams, frame, hold)


async def _attack(target: str, peers: int, streams: int, frame: int, hold: float) -> dict[str, Any]:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamEOF, StreamError
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2p_sidecar.node.libp2p_host import remove_connect_delay
    from p2p_sidecar.node.wire import HEADER, PROTOCOL_ID

    remove_connect_delay()
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    tally: Counter[str] = Counter()
    held: list[float] = []
    body = b"\x00" * (frame - 1)

    async def one_stream(host: Any) -> None:
        try:
            stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL_ID)])
        except Exception as exc:  # boundary: the node may refuse or reset a stream as it opens
            tally[f"open_failed:{type(exc).__name__}"] += 1
            return
        started = trio.current_time()
        try:
            await stream.write(HEADER.pack(frame))
            for offset in range(0, len(body), 256 * 1024):
                await stream.write(body[offset : offset + 256 * 1024])
            tally["sent_all_but_one_byte"] += 1
            while True:
                data = await stream.read(65536)
                if not data:
                    break
        except (StreamEOF, StreamError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            tally[f"ended:{type(exc).__name__}"] += 1
            held.append(trio.current_time() - started)
            return
        except Exception as exc:  # boundary: py-libp2p raises many types when a stream is reset under a write
            tally[f"ended:{type(exc).__name__}"] += 1
            held.append(trio.current_time() - started)
            return
        tally["ended:eof"] += 1
        held.append(trio.current_time() - started)

    async def one_peer() -> None:
        host = new_host()
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            for attempt in range(3):
                try:
                    with trio.fail_after(30):
                        await host.connect(info)
                    break
                except Exception as exc:  # boundary: a refused or failed dial is an outcome to count
                    tally[f"connect_failed:{type(exc).__name__}"] += 1
                    await trio.sleep(0.5 * (attempt + 1))
            else:
                tally["open_failed:no_connection"] += streams
                return
            with trio.move_on_after(hold):
                async with trio.open_nursery() as nursery:
                    for _ in range(streams):
                        nursery.start_soon(one_stream, host)

    async with trio.open_nursery() as nursery:
        for _ in range(peers):
            nursery.start_soon(one_peer)
    ended = len(held)
    return {
        "streams": peers * streams,
        "ended_by_node": ended,
        "open_at_end": peers * streams - ended - sum(v for k, v in tally.items() if k.startswith("open_failed")),
        "held_s": sorted(round(seconds, 2) for seconds in held),
        "outcomes": dict(sorted(tally.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--hold", type=float, default=15.0)
    parser.add_argument("--after", type=float, default=5.0, help="seconds to watch RSS after the attackers left")
    args = parser.parse_args()
    from tests.procs import running, sidecar_proc

    with tempfile.TemporaryDirectory() as tmp:
        sidecar = sidecar_proc(Path(tmp), SIDECAR_LOG_LEVEL="warning")
        with running(sidecar), Sampler(sidecar.pid) as sampler:
            time.sleep(2)
            before = sampler.median(time.monotonic() - 1.5, time.monotonic())
            target = f"/ip4/127.0.0.1/tcp/{sidecar.extra['p2p_port']}/p2p/" + _peer_id(sidecar.extra["data_dir"])
            started = time.monotonic()
            result = attack(target, peers=args.peers, streams=args.streams, hold=args.hold)
            ended = time.monotonic()
            time.sleep(args.after)
            after = sampler.median(time.monotonic() - 2, time.monotonic())
            peak = sampler.peak(started, ended)
    held = result["held_s"]
    print(f"{args.peers} peers x {args.streams} streams, each {FRAME - 1} of a {FRAME}-byte frame, held {args.hold}s")
    print(
        f"RSS before {before:.0f} MiB, peak {peak:.0f} MiB (+{peak - before:.0f}), "
        f"{args.after:.0f} s after {after:.0f} MiB"
    )
    print(f"streams ended by the node: {result['ended_by_node']} of {result['streams']}, still open at the end: "
          f"{result['open_at_end']}")  # fmt: skip
    if held:
        print(f"time from first byte to the node's reset: min {held[0]} s, median {statistics.median(held)} s, "
              f"max {held[-1]} s")  # fmt: skip
    print(f"outcomes: {result['outcomes']}")


def _peer_id(data_dir: Path) -> str:
    from p2p_sidecar.node.identity import load_or_create
    from p2p_sidecar.node.libp2p_host import peer_id_of

    return peer_id_of(load_or_create(data_dir)[0])


if __name__ == "__main__":
    main()
