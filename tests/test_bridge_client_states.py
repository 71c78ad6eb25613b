"""The gateway's ``BridgeClient`` state machine against a sidecar played by the test, in one process.

The stand-in is a real ROUTER on loopback (the client's DEALER, monitor and heartbeats are the real ones);
it answers HELLO with a catalog and PING with PONG unless told to keep quiet, and holds CALLs until the test
answers them.  Heartbeat timing runs on a virtual clock: an event loop whose time jumps to its next timer
whenever nothing is ready (after giving ZeroMQ's I/O thread a moment of real time), so "3 s of silence" is
exactly that, measured, in milliseconds of wall time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import zmq

from gateway.bridge_client import BridgeClient, SidecarState
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.zmq_asyncio import AsyncioZmqSocket
from shared_schema import BridgeError, Envelope, ErrorCode, Kind, decode, encode
from tests.procs import free_port
from tests.zmq_peer import rebind_router

IN_FLIGHT = 64


class _JumpingSelector(selectors.EpollSelector):
    def __init__(self, grace: float) -> None:
        super().__init__()
        self.grace = grace
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        ready = super().select(min(timeout, self.grace))
        if not ready:
            self.now += timeout  # idle: the next timer is due now
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` moves only when the loop would otherwise sleep, straight to the next timer."""

    def __init__(self, grace: float = 0.2) -> None:
        self._jumps = _JumpingSelector(grace)
        super().__init__(self._jumps)

    def time(self) -> float:
        return self._jumps.now


def run_virtual(scenario: Callable[[], Awaitable[None]]) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


class FakeSidecar:
    """A ROUTER that speaks just enough of the bridge: catalog on hello, pong on ping, calls held for the test."""

    def __init__(self, raw: zmq.Socket[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.sock = AsyncioZmqSocket(raw, self._on_frames, loop)
        self.answer_pings = True
        self.calls: list[tuple[bytes, Envelope]] = []
        self.hellos = 0

    def _on_frames(self, frames: list[bytes]) -> None:
        identity, body = frames
        envelope = decode(body)
        if envelope.kind is Kind.HELLO:
            self.hellos += 1
            catalog = Envelope(Kind.CATALOG, body={"revision": "r1", "tools": [], "node": {"peer_id": "fake"}})
            self.sock.send_nowait([identity, encode(catalog)])
        elif envelope.kind is Kind.PING and self.answer_pings:
            self.sock.send_nowait([identity, encode(Envelope(Kind.PONG, id=envelope.id, body={"revision": "r1"}))])
        elif envelope.kind is Kind.CALL:
            self.calls.append((identity, envelope))

    def answer(self, identity: bytes, call: Envelope, result: Any) -> None:
        self.sock.send_nowait([identity, encode(call.reply(result))])


def client_for(port: int, **settings: Any) -> BridgeClient:
    async def no_inbound(envelope: Envelope) -> Envelope:
        raise AssertionError("the fake sidecar makes no calls into the gateway")

    return BridgeClient(
        GatewaySettings(bridge_endpoint=f"tcp://127.0.0.1:{port}", **settings),
        GatewayMetrics(),
        on_catalog=lambda specs: None,
        on_inbound_call=no_inbound,
        hello_body=dict,
    )


def bound_router(context: zmq.Context[zmq.Socket[bytes]], port: int) -> zmq.Socket[bytes]:
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    return router


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def test_up_on_the_catalog_then_64_calls_answered_out_of_order_and_the_65th_is_busy() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    raw = bound_router(context, port)

    async def scenario() -> None:
        sidecar = FakeSidecar(raw, asyncio.get_running_loop())
        client = client_for(port, bridge_max_in_flight=IN_FLIGHT)
        assert client.state is SidecarState.DOWN
        try:
            async with client.running():
                assert await client.wait_until(SidecarState.UP, 10), client.state_reason
                assert client.sidecar_info == {"peer_id": "fake"}
                calls = [asyncio.create_task(client.call("p2p_echo", {"n": n}, timeout=60)) for n in range(IN_FLIGHT)]
                await until(lambda: len(sidecar.calls) == IN_FLIGHT)
                with pytest.raises(BridgeError) as busy:
                    await client.call("p2p_echo", {"n": "one too many"}, timeout=60)
                assert busy.value.code is ErrorCode.BUSY
                for identity, call in reversed(sidecar.calls):
                    assert call.arguments is not None
                    sidecar.answer(identity, call, {"n": call.arguments["n"]})
                assert [result["n"] for result in await asyncio.gather(*calls)] == list(range(IN_FLIGHT))
        finally:
            sidecar.sock.close()

    try:
        asyncio.run(scenario())
    finally:
        raw.close(linger=0)
        context.term()


def test_heartbeats_on_a_virtual_clock_stale_after_the_timeout_and_up_again_on_the_next_pong() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    raw = bound_router(context, port)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sidecar = FakeSidecar(raw, loop)
        client = client_for(port, bridge_heartbeat_interval=1.0, bridge_heartbeat_timeout=3.0)
        try:
            async with client.running():
                assert await client.wait_until(SidecarState.UP, 30), client.state_reason
                held = asyncio.create_task(client.call("p2p_echo", {}, timeout=600))
                await until(lambda: len(sidecar.calls) == 1)
                await asyncio.sleep(5.0)  # virtual: heartbeats answered all along
                assert client.state is SidecarState.UP
                sidecar.answer_pings = False  # stuck: its I/O thread answers ZeroMQ, its loop nothing
                quiet_since = loop.time()
                assert await client.wait_until(SidecarState.STALE, 30)
                silent = loop.time() - quiet_since
                assert 3.0 < silent <= 3.0 + 1.0 + 0.01, silent  # the first heartbeat after 3 s of silence
                assert "no answer to heartbeats" in client.state_reason
                with pytest.raises(BridgeError) as failed:
                    await held  # a call in flight is failed at once, not left to its 600 s deadline
                assert failed.value.code is ErrorCode.UNAVAILABLE and loop.time() - quiet_since < 5
                with pytest.raises(BridgeError) as refused:
                    await client.call("p2p_echo", {}, timeout=5)
                assert refused.value.code is ErrorCode.UNAVAILABLE
                sidecar.answer_pings = True
                stale_at = loop.time()
                assert await client.wait_until(SidecarState.UP, 30)
                assert loop.time() - stale_at <= 1.0 + 0.01  # the next heartbeat's pong
        finally:
            sidecar.sock.close()

    try:
        run_virtual(scenario)
    finally:
        raw.close(linger=0)
        context.term()


def test_a_sidecar_restart_fails_what_was_in_flight_and_the_client_comes_back_by_itself() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    raws = [bound_router(context, port)]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sidecar = FakeSidecar(raws[0], loop)
        client = client_for(port)
        try:
            async with client.running():
                assert await client.wait_until(SidecarState.UP, 10), client.state_reason
                held = [asyncio.create_task(client.call("p2p_echo", {"n": n}, timeout=600)) for n in range(8)]
                await until(lambda: len(sidecar.calls) == 8)
                sidecar.sock.close()  # the sidecar dies with 8 calls inside
                assert await client.wait_until(SidecarState.DOWN, 10)
                for task in held:
                    with pytest.raises(BridgeError) as failed:
                        await task
                    assert failed.value.code is ErrorCode.UNAVAILABLE
                raws.append(rebind_router(context, port))
                sidecar = FakeSidecar(raws[-1], loop)  # a new one on the same endpoint
                assert await client.wait_until(SidecarState.UP, 10), client.state_reason
                assert sidecar.hellos >= 1  # the client said hello again, unasked
                answer = asyncio.create_task(client.call("p2p_echo", {"n": "after"}, timeout=10))
                await until(lambda: len(sidecar.calls) == 1)
                identity, call = sidecar.calls[0]
                sidecar.answer(identity, call, "back")
                assert await answer == "back"
        finally:
            sidecar.sock.close()

    try:
        asyncio.run(scenario())
    finally:
        for raw in raws:
            raw.close(linger=0)
        context.term()
