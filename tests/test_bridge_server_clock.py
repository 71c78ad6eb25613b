"""The sidecar's side of the bridge heartbeat, on Trio's virtual clock: a silent gateway is forgotten after
``SIDECAR_BRIDGE_GATEWAY_TIMEOUT``, one that keeps pinging never is, and a forgotten one that pings again is
told to introduce itself (a PONG without a catalog revision) and is known again after its HELLO.

The bridge server runs for real (its ROUTER, its Trio adapter); the gateway is the test's own DEALER.
``MockClock`` jumps only after the tasks have been idle for a moment of real time, so ZeroMQ's I/O
thread, which runs on real time, gets its frames through before the clock moves.
"""

from __future__ import annotations

import trio
import trio.testing
import zmq

from p2p_sidecar.bridge_server import BridgeServer
from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.tools import ToolCatalog
from p2p_sidecar.zmq_trio import TrioZmqSocket
from shared_schema import Envelope, Kind, decode, encode
from tests.procs import free_port

TIMEOUT = 5.0


async def ask(gateway: TrioZmqSocket, envelope: Envelope) -> Envelope:
    gateway.send_nowait([encode(envelope)])
    with trio.fail_after(10):
        [frames] = await gateway.receive_batch(1)
    return decode(frames[0])


def test_silent_gateways_are_forgotten_after_the_timeout_and_pinging_ones_are_not() -> None:
    port = free_port()
    settings = SidecarSettings(bridge_endpoint=f"tcp://127.0.0.1:{port}", bridge_gateway_timeout=TIMEOUT)
    server = BridgeServer(settings, ToolCatalog(), SidecarMetrics())
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            raw.connect(settings.bridge_endpoint)
            gateway = TrioZmqSocket(raw)

            catalog = await ask(gateway, Envelope(Kind.HELLO, body={"pid": 1}))
            assert catalog.kind is Kind.CATALOG and len(server.gateways) == 1
            [link] = server.gateways.values()

            for _ in range(10):  # 10 virtual seconds of heartbeats, twice the timeout: still known
                await trio.sleep(1.0)
                pong = await ask(gateway, Envelope(Kind.PING, id="p"))
                assert pong.kind is Kind.PONG and (pong.body or {}).get("revision") is not None
            assert len(server.gateways) == 1

            heard = link.last_seen  # now silent
            while server.gateways:
                await trio.sleep(0.25)
            forgotten_after = trio.current_time() - heard
            # checked every timeout / 4, seen here within a quarter second
            assert TIMEOUT < forgotten_after <= TIMEOUT * 1.25 + 0.25, forgotten_after

            pong = await ask(gateway, Envelope(Kind.PING, id="q"))  # it comes back: asked to say hello
            assert pong.kind is Kind.PONG and (pong.body or {}).get("revision") is None and not server.gateways
            assert (await ask(gateway, Envelope(Kind.HELLO, body={"pid": 1}))).kind is Kind.CATALOG
            assert len(server.gateways) == 1
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.1))
    finally:
        raw.close(linger=0)
        context.term()
