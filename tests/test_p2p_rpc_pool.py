"""The libp2p RPC client's stream pools (``p2p_sidecar/node/rpc_client.py``), on Trio's virtual clock.

The peer is a stand-in stream pair in memory that answers each request after the delay its arguments ask
for (``MockClock`` with autojump: a 30 s timeout takes no wall time).  What is checked is the pool's
contract: streams reused one request at a time, at most ``streams_per_peer`` in parallel with the rest
waiting, and a stream that failed, timed out or answered out of turn reset and never reused.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamReset
from prometheus_client import CollectorRegistry

from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.node.rpc_client import RpcClient
from p2p_sidecar.node.wire import FrameReader, Reply, Request, decode, encode
from shared_schema import BridgeError, ErrorCode

PEER = "12D3KooWBE2ucXFS2cfStcm8tNA3PqaHCw1wchf3US3k8kUoVGWg"
MAX_BYTES = 1 << 20


class FakePeer:
    """Opens streams on request; each answers ``{"echo": args}`` after ``args["delay"]`` virtual seconds."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.streams: list[FakeStream] = []
        self.busiest = 0
        self.in_progress = 0
        self.reachable = True

    async def open(self, peer_id: str) -> INetStream:
        if not self.reachable:
            raise BridgeError(ErrorCode.UNAVAILABLE, f"cannot reach {peer_id}")
        stream = FakeStream(self, peer_id)
        self.streams.append(stream)
        return cast(INetStream, stream)  # FramedStream uses read, write, reset, close and muxed_conn.peer_id


class FakeStream:
    def __init__(self, peer: FakePeer, peer_id: str) -> None:
        self.peer = peer
        self.muxed_conn = SimpleNamespace(peer_id=peer_id)
        self._to_caller, self._from_peer = trio.open_memory_channel[bytes](16)
        self._reader = FrameReader(MAX_BYTES)
        self.requests = 0
        self.was_reset = False
        self.fail_next_write = False
        self.wrong_id_next = False

    async def write(self, data: bytes) -> None:
        if self.was_reset:
            raise StreamReset("the stream was reset")
        if self.fail_next_write:
            raise StreamReset("the connection under this stream died")
        for body in self._reader.feed(data):
            request = decode(body)
            assert isinstance(request, Request)
            self.requests += 1
            self.peer.nursery.start_soon(self._answer, request)

    async def _answer(self, request: Request) -> None:
        self.peer.in_progress += 1
        self.peer.busiest = max(self.peer.busiest, self.peer.in_progress)
        try:
            await trio.sleep(float(request.args.get("delay", 0)))
        finally:
            self.peer.in_progress -= 1
        reply_id = request.id + 1000 if self.wrong_id_next else request.id
        self.wrong_id_next = False
        if not self.was_reset:
            await self._to_caller.send(encode(Reply(reply_id, {"echo": request.args}), MAX_BYTES))

    async def read(self, n: int = -1) -> bytes:
        if self.was_reset:
            raise StreamReset("the stream was reset")
        return await self._from_peer.receive()

    async def reset(self) -> None:
        self.was_reset = True

    async def close(self) -> None:
        self.was_reset = True


def client(peer: FakePeer, streams_per_peer: int = 4) -> RpcClient:
    return RpcClient(
        peer.open, max_bytes=MAX_BYTES, streams_per_peer=streams_per_peer, metrics=NodeMetrics(CollectorRegistry())
    )


def run(scenario: Any) -> None:
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_one_stream_carries_request_after_request() -> None:
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            peer = FakePeer(nursery)
            rpc = client(peer)
            for n in range(20):
                assert await rpc.request(PEER, "echo", {"n": n}, timeout=5) == {"echo": {"n": n}}
            assert len(peer.streams) == 1 and peer.streams[0].requests == 20
            nursery.cancel_scope.cancel()

    run(scenario)


def test_64_callers_share_at_most_streams_per_peer_streams_and_the_rest_wait_their_turn() -> None:
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            peer = FakePeer(nursery)
            rpc = client(peer, streams_per_peer=4)
            results: dict[int, Any] = {}
            started = trio.current_time()

            async def caller(n: int) -> None:
                results[n] = await rpc.request(PEER, "echo", {"n": n, "delay": 1.0}, timeout=60)

            async with trio.open_nursery() as callers:
                for n in range(64):
                    callers.start_soon(caller, n)
                await trio.testing.wait_all_tasks_blocked()
                assert rpc.in_flight(PEER) == 64
            assert results == {n: {"echo": {"n": n, "delay": 1.0}} for n in range(64)}
            assert len(peer.streams) == 4 and peer.busiest == 4  # never more than the bound in parallel
            assert trio.current_time() - started == pytest.approx(16.0)  # 64 one-second calls, four at a time
            assert rpc.in_flight(PEER) == 0
            await rpc.wait_idle(PEER)  # returns at once when nothing runs
            nursery.cancel_scope.cancel()

    run(scenario)


def test_a_timed_out_stream_is_reset_and_the_next_request_gets_a_fresh_one() -> None:
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            peer = FakePeer(nursery)
            rpc = client(peer)
            started = trio.current_time()
            with pytest.raises(BridgeError) as caught:
                await rpc.request(PEER, "echo", {"delay": 30.0}, timeout=2.5)
            assert caught.value.code is ErrorCode.TIMEOUT
            assert trio.current_time() - started == pytest.approx(2.5)
            assert peer.streams[0].was_reset  # its late answer must never meet another request
            assert await rpc.request(PEER, "echo", {"n": 1}, timeout=5) == {"echo": {"n": 1}}
            assert len(peer.streams) == 2 and not peer.streams[1].was_reset
            nursery.cancel_scope.cancel()

    run(scenario)


def test_an_answer_out_of_turn_is_a_bad_frame_and_that_stream_is_not_reused() -> None:
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            peer = FakePeer(nursery)
            rpc = client(peer)
            await rpc.request(PEER, "echo", {}, timeout=5)
            peer.streams[0].wrong_id_next = True
            with pytest.raises(BridgeError) as caught:
                await rpc.request(PEER, "echo", {}, timeout=5)
            assert caught.value.code is ErrorCode.BAD_FRAME and peer.streams[0].was_reset
            await rpc.request(PEER, "echo", {}, timeout=5)
            assert len(peer.streams) == 2
            nursery.cancel_scope.cancel()

    run(scenario)


def test_a_dead_pooled_stream_takes_its_siblings_along_and_only_idempotent_requests_go_again() -> None:
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            peer = FakePeer(nursery)
            rpc = client(peer)
            async with trio.open_nursery() as callers:  # two pooled streams
                for _ in range(2):
                    callers.start_soon(partial(rpc.request, PEER, "echo", {"delay": 1.0}, timeout=5))
            assert len(peer.streams) == 2
            for stream in peer.streams:
                stream.fail_next_write = True  # the connection they rode died while they sat in the pool
            with pytest.raises(BridgeError) as caught:
                await rpc.request(PEER, "call_tool", {}, timeout=5)  # not idempotent: reported, not repeated
            assert caught.value.code is ErrorCode.UNAVAILABLE
            assert all(stream.was_reset for stream in peer.streams)  # the sibling went too
            assert await rpc.request(PEER, "echo", {"n": 2}, timeout=5, idempotent=True) == {"echo": {"n": 2}}
            assert len(peer.streams) == 3  # a fresh one
            nursery.cancel_scope.cancel()

    run(scenario)


def test_drop_resets_the_pool_and_an_unreachable_peer_is_unavailable() -> None:
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            peer = FakePeer(nursery)
            rpc = client(peer)
            await rpc.request(PEER, "echo", {}, timeout=5)
            await rpc.drop(PEER)
            assert peer.streams[0].was_reset
            peer.reachable = False
            with pytest.raises(BridgeError) as caught:
                await rpc.request(PEER, "echo", {}, timeout=5)
            assert caught.value.code is ErrorCode.UNAVAILABLE and rpc.in_flight(PEER) == 0
            nursery.cancel_scope.cancel()

    run(scenario)
