"""A bare py-libp2p client for tests: it speaks Noise and Yamux, then whatever bytes a test wants on our protocol.

A raw TCP socket cannot reach our protocol (it would fail the Noise handshake
first), so tests that send garbage over ``/mcp-p2p/rpc/1.0.0`` use a real
libp2p host of their own, run in the test process with ``trio.run``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2p_sidecar.node.libp2p_host import remove_connect_delay
from p2p_sidecar.node.membership import Membership
from p2p_sidecar.node.wire import PROTOCOL_ID, FrameReader, Reply, Request, decode, encode
from tests.procs import TEST_NETWORK_SECRET

T = TypeVar("T")
Opener = Callable[[], Awaitable[INetStream]]


def run_client(
    target: str,
    scenario: Callable[[Opener], Awaitable[T]],
    *,
    timeout: float = 30.0,
    secret: bytes | None = TEST_NETWORK_SECRET,
) -> T:
    """Connect to the node at ``target`` (a full multiaddr) and run ``scenario`` with a stream opener.

    With ``secret`` (by default the test networks' one) the client first says hello with a proof of it, as a
    member of the test network would; ``secret=None`` leaves the scenario to speak first, as a stranger.
    """

    async def main() -> T:
        remove_connect_delay()
        host = new_host()
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(target))
            with trio.fail_after(timeout):
                await host.connect(info)

                async def open_stream() -> INetStream:
                    return await host.new_stream(info.peer_id, [TProtocol(PROTOCOL_ID)])

                try:
                    if secret is not None:
                        await say_hello(open_stream, str(host.get_id()), str(info.peer_id), secret)
                    return await scenario(open_stream)
                finally:
                    await host.disconnect(info.peer_id)

    return trio.run(main)


def hello_body(auth: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "test-client",
        "wire_version": 1,
        "addrs": [],
        "capabilities": {"tools": [], "task_types": []},
    }
    if auth is not None:
        body["auth"] = auth
    return body


async def say_hello(open_stream: Opener, own_id: str, target_id: str, secret: bytes) -> Reply:
    """A hello with a proof of ``secret`` on its own stream; returns the node's reply."""
    offer = Membership(own_id, secret=secret).offer(target_id)
    assert offer is not None
    stream = await open_stream()
    await stream.write(encode(Request(1, "hello", hello_body(offer.wire), 5.0), 1 << 24))
    reader = FrameReader(1 << 24)
    frames: list[bytes] = []
    while not frames:
        frames = reader.feed(await stream.read(65536))
    await stream.close()
    reply = decode(frames[0])
    assert isinstance(reply, Reply) and reply.ok, reply
    return reply


async def read_until_closed(stream: INetStream, timeout: float = 5.0) -> tuple[bytes, str]:
    """Everything the peer sends until it ends the stream, and how it ended: 'reset' or 'eof'."""
    received = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.read(65536)
            except StreamEOF:
                return received, "eof"
            except StreamError:
                return received, "reset"
            if not data:
                return received, "eof"
            received += data


async def writable(stream: INetStream) -> bool:
    """Whether the stream still takes writes: after a reset it does not (a graceful close only ends reading).

    py-libp2p's yamux may report a received reset to readers as end-of-stream once it has dropped the
    stream's bookkeeping, so reading alone cannot tell a reset from a close; writing can.
    """
    try:
        await stream.write(b"\x00")
    except StreamError:
        return False
    return True


def ask(
    target: str, requests: list[tuple[str, dict[str, Any]]], *, timeout: float = 30.0, secret: bytes | None = None
) -> list[Reply]:
    """Connect to ``target`` with a fresh key and send each ``(op, args)`` in turn on one stream.

    A stranger by default (no hello of its own: the requests say what it does); ``secret`` makes it a member first.
    """

    async def scenario(open_stream: Opener) -> list[Reply]:
        stream = await open_stream()
        reader, replies = FrameReader(1 << 24), []
        for request_id, (op, args) in enumerate(requests, 1):
            await stream.write(encode(Request(request_id, op, args, 5.0), 1 << 24))
            frames: list[bytes] = []
            while not frames:
                frames = reader.feed(await stream.read(65536))
            reply = decode(frames[0])
            assert isinstance(reply, Reply), reply
            replies.append(reply)
        await stream.close()
        return replies

    return run_client(target, scenario, timeout=timeout, secret=secret)
