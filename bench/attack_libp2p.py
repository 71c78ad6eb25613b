"""Hostile traffic at a sidecar's libp2p listener: the libp2p half of ``bench/attack_sockets.py``.

Two kinds of attacker, each in its own process beside the other sockets' attacker:

* raw TCP (asyncio, the functions below, run by attack_sockets' attacker process): random bytes
  before any handshake; connections that complete multistream-select, pick ``/noise`` and then send
  a third of the first Noise message and go quiet (a slowloris of the handshake); connections that
  send nothing at all (half-open).  Each is held until the node drops it.
* a real libp2p peer (py-libp2p under Trio, ``p2p_attacker_process``): it completes Noise + Yamux
  with a fresh key, so it reaches our protocol, and then sends frames announcing 1 GiB, frames of
  random bytes, well-framed msgpack that is not a message, requests with missing fields, the ops
  only members may use, and it opens hundreds of streams and holds them idle; another loop keeps
  making complete handshakes with new keys.

Everything it sees is tallied as ``attack:outcome`` counts, as in attack_sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from typing import Any

MULTISTREAM = b"/multistream/1.0.0\n"
NOISE = b"/noise\n"


def _ms(message: bytes) -> bytes:
    """One multistream-select message: uvarint length, then the line."""
    return bytes([len(message)]) + message


PARTIAL_NOISE_HANDSHAKE = _ms(MULTISTREAM) + _ms(NOISE) + b"\x00\x20" + os.urandom(10)
"""Multistream header, a proposal of /noise, then 10 of the 32 bytes the first Noise message announces."""


# -- raw TCP (asyncio; called from attack_sockets' attacker process) --------------------------------------------


async def held_until_dropped(
    name: str, port: int, opening: bytes, tally: Any, stop: asyncio.Event, source: str | None
) -> None:
    """Connect, send ``opening`` (maybe nothing), then hold the connection until the node drops it."""
    local = (source, 0) if source else None
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=local), 5)
        except (OSError, TimeoutError):
            tally.add(f"{name}:refused")
            await asyncio.sleep(0.5)
            continue
        tally.add(f"{name}:opened")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            if opening:
                writer.write(opening)
                await writer.drain()
            while not stop.is_set() and not reader.at_eof():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(4096), 1.0)
        if reader.at_eof():
            tally.add(f"{name}:dropped_after_{round(time.monotonic() - started)}s")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def raw_tasks(port: int, slow: int, tally: Any, stop: asyncio.Event, source: str) -> list[asyncio.Task[None]]:
    """The raw-TCP attacks on the libp2p port (garbage comes from attack_sockets' own ``garbage``)."""
    tasks = []
    for _ in range(slow // 2):
        tasks.append(
            asyncio.create_task(
                held_until_dropped("p2p_partial_handshake", port, PARTIAL_NOISE_HANDSHAKE, tally, stop, source)
            )
        )
        tasks.append(asyncio.create_task(held_until_dropped("p2p_half_open", port, b"", tally, stop, source)))
    return tasks


# -- a real libp2p peer (Trio; its own process) ------------------------------------------------------------------


def p2p_attacker_process(target: str, seconds: float, idle_streams: int, results: Any) -> None:
    import trio

    results.put(trio.run(_p2p_attack, target, seconds, idle_streams))


async def _p2p_attack(target: str, seconds: float, idle_streams: int) -> dict[str, int]:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2p_sidecar.node.libp2p_host import remove_connect_delay
    from p2p_sidecar.node.wire import HEADER, PROTOCOL_ID

    remove_connect_delay()
    tally: Counter[str] = Counter()
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    protocol = [TProtocol(PROTOCOL_ID)]
    host = new_host()

    async def open_stream() -> Any:
        return await host.new_stream(info.peer_id, protocol)

    async def loop(name: str, body: Any) -> None:
        while True:
            try:
                with trio.fail_after(10):
                    tally[f"{name}:{await body()}"] += 1
            except trio.TooSlowError:
                tally[f"{name}:no_answer_10s"] += 1
            except Exception as exc:  # boundary: py-libp2p raises many types when the node resets or refuses
                tally[f"{name}:{type(exc).__name__}"] += 1
                await trio.sleep(0.05)
            await trio.sleep(0.01)

    async def oversize() -> str:
        stream = await open_stream()
        await stream.write(HEADER.pack(1 << 30) + b"\x00" * 65536)
        return await _ending(stream)

    async def garbage_frame() -> str:
        stream = await open_stream()
        body = os.urandom(int.from_bytes(os.urandom(2), "big") % 2048 + 1)
        await stream.write(HEADER.pack(len(body)) + body)
        return await _ending(stream)

    async def not_a_message() -> str:
        import msgpack

        stream = await open_stream()
        body = msgpack.packb([1, 2, {"v": 1}])
        await stream.write(HEADER.pack(len(body)) + body)
        return await _ending(stream)

    async def missing_fields() -> str:
        import msgpack

        stream = await open_stream()
        body = msgpack.packb({"v": 1, "k": "req", "id": 7, "t": 1000})  # no op
        await stream.write(HEADER.pack(len(body)) + body)
        return await _answer_code(stream)

    async def members_only() -> str:
        from p2p_sidecar.node.wire import Request, encode

        stream = await open_stream()
        claim = Request(1, "queue.claim", {"worker": "w", "boot": "x", "types": ["echo"], "max": 256}, 5.0)
        await stream.write(encode(claim, 1 << 20))
        return await _answer_code(stream)

    async def hold_idle_streams() -> None:
        held = []
        for _ in range(idle_streams):
            try:
                held.append(await open_stream())
                tally["p2p_idle_streams:opened"] += 1
            except Exception as exc:  # boundary: the node may refuse or reset a stream
                tally[f"p2p_idle_streams:{type(exc).__name__}"] += 1
        await trio.sleep_forever()

    async def handshakes() -> None:
        while True:
            other = new_host()
            try:
                async with other.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                    with trio.fail_after(10):
                        await other.connect(info)
                    tally["p2p_handshake:completed"] += 1
                    await other.disconnect(info.peer_id)
            except Exception as exc:  # boundary: a refused or failed handshake is an outcome to count
                tally[f"p2p_handshake:{type(exc).__name__}"] += 1
                await trio.sleep(0.05)

    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(30):
            await host.connect(info)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop, "p2p_oversize_frame", oversize)
                nursery.start_soon(loop, "p2p_garbage_frame", garbage_frame)
                nursery.start_soon(loop, "p2p_not_a_message", not_a_message)
                nursery.start_soon(loop, "p2p_missing_fields", missing_fields)
                nursery.start_soon(loop, "p2p_members_only_op", members_only)
                nursery.start_soon(hold_idle_streams)
                nursery.start_soon(handshakes)
    return dict(sorted(tally.items()))


async def _ending(stream: Any) -> str:
    """How the node ended a stream we sent bad bytes on: ``reset`` (or ``eof``), or ``open`` if it did not."""
    import trio
    from libp2p.network.stream.exceptions import StreamEOF, StreamError

    with trio.move_on_after(5):
        while True:
            try:
                data = await stream.read(65536)
            except StreamEOF:
                return "eof"
            except StreamError:
                return "reset"
            if not data:
                return "eof"
    return "open"


async def _answer_code(stream: Any) -> str:
    """The error code (or ``ok``) of the one reply the node sends on ``stream``."""
    from p2p_sidecar.node.wire import FrameReader, decode

    reader = FrameReader(1 << 20)
    frames: list[bytes] = []
    while not frames:
        frames = reader.feed(await stream.read(65536))
    reply = decode(frames[0])
    await stream.close()
    error = getattr(reply, "error", None)
    return "ok" if error is None else error.code.value
