"""The two ZeroMQ adapters (``p2p_sidecar/zmq_trio.py``, ``gateway/zmq_asyncio.py``) and their shared core.

Two kinds of test.  ``EdgeSocket`` plays a ZeroMQ socket whose descriptor is a pipe holding a byte while an
edge is pending, and anything that touches the socket consumes it, as libzmq's does: the rules (drain until
``EAGAIN`` and re-read ``EVENTS``; a send that may have eaten the edge wakes the reader) are checked there
deterministically, with a control that shows the fake reproduces the lost wake-up.  Then real DEALER/ROUTER
pairs in one process carry 64 requests in flight, both ends sending while they receive, and survive the
ROUTER being closed and bound again.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

import pytest
import trio
import trio.testing
import zmq

from gateway.zmq_asyncio import DRAIN_BATCH, AsyncioZmqSocket
from p2p_sidecar.zmq_trio import TrioZmqSocket
from shared_schema.zmq_socket import ZmqSocketCore
from tests.procs import free_port
from tests.zmq_peer import rebind_router, reconnection_of

IN_FLIGHT = 64
ROUNDS = 25


class EdgeSocket:
    """Just enough of a pyzmq socket, with an edge-triggered descriptor whose edges the test controls."""

    def __init__(self) -> None:
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._read_end, False)
        self.inbox: deque[list[bytes]] = deque()
        self.commands: deque[list[bytes]] = deque()
        """Messages libzmq has taken in but not yet processed: reading ``EVENTS`` processes them."""
        self.sent: list[list[bytes]] = []
        self.full = False
        self.closed = False

    @property
    def FD(self) -> int:
        return self._read_end

    def arrive(self, *messages: list[bytes], edge: bool = True) -> None:
        """Messages reach the socket; ``edge`` is whether libzmq signals it on the descriptor."""
        self.inbox.extend(messages)
        if edge:
            os.write(self._write_end, b"!")

    def edge_pending(self) -> bool:
        try:
            return bool(os.read(self._read_end, 64))
        except BlockingIOError:
            return False

    def _touched(self) -> None:
        self.edge_pending()  # any operation on a ZeroMQ socket may consume the edge

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        self._touched()
        self.inbox.extend(self.commands)
        self.commands.clear()
        return zmq.POLLIN if self.inbox else 0

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        self._touched()
        if not self.inbox:
            raise zmq.Again()
        return self.inbox.popleft()

    def send_multipart(self, frames: Sequence[bytes], flags: int = 0) -> None:
        self._touched()
        if self.full:
            raise zmq.Again()
        self.sent.append(list(frames))

    def close(self, linger: int | None = None) -> None:
        self.closed = True
        os.close(self._read_end)
        os.close(self._write_end)


def as_socket(fake: EdgeSocket) -> zmq.Socket[bytes]:
    return cast("zmq.Socket[bytes]", fake)  # the adapters use only what EdgeSocket has


class CountingCore(ZmqSocketCore):
    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        super().__init__(sock)
        self.woken = 0

    def _input_pending(self) -> None:
        self.woken += 1


# -- the core's rules -------------------------------------------------------------------------------------------


def test_a_drain_rereads_events_after_eagain_so_nothing_waits_for_an_edge_already_spent() -> None:
    fake = EdgeSocket()
    core = CountingCore(as_socket(fake))
    fake.arrive([b"1"], [b"2"], [b"3"], edge=False)  # the edge for these went to someone else
    assert core.read_batch(2) == [[b"1"], [b"2"]]  # bounded
    fake.commands.append([b"late"])  # there, but a receive says EAGAIN until EVENTS is read
    assert core.read_batch(10) == [[b"3"], [b"late"]]
    assert core.read_batch(10) == [] and not core.input_pending()
    fake.close()


def test_a_send_that_leaves_input_pending_calls_the_wake_up_and_one_that_does_not_stays_quiet() -> None:
    fake = EdgeSocket()
    core = CountingCore(as_socket(fake))
    core.send_nowait([b"a"])
    assert core.woken == 0 and fake.sent == [[b"a"]]
    fake.arrive([b"reply"])
    core.send_nowait([b"b"])  # consumed the reply's edge: the reader must hear about it some other way
    assert core.woken == 1 and not fake.edge_pending()
    fake.full = True
    with pytest.raises(zmq.Again):
        core.send_nowait([b"c"])  # EAGAIN still leaves the reader informed
    assert core.woken == 2
    core.close()
    assert fake.closed and core.closed and core.read_batch(10) == []


# -- the Trio shell ---------------------------------------------------------------------------------------------


def test_trio_a_send_that_eats_the_edge_still_wakes_the_sleeping_receiver() -> None:
    async def main() -> None:
        fake = EdgeSocket()
        sock = TrioZmqSocket(as_socket(fake))
        received: list[list[list[bytes]]] = []

        async def receiver() -> None:
            received.append(await sock.receive_batch())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()  # asleep in wait_readable
            fake.arrive([b"reply"])
            sock.send_nowait([b"request"])  # in the same step: the edge is gone before Trio polls
            with trio.fail_after(2):
                while not received:
                    await trio.sleep(0.001)
        assert received == [[[b"reply"]]]
        fake.close()

    trio.run(main)


def test_trio_control_without_the_wake_up_the_receiver_sleeps_through_its_reply() -> None:
    """The fake reproduces the hazard: a send that bypasses the adapter leaves the receiver asleep."""

    async def main() -> None:
        fake = EdgeSocket()
        sock = TrioZmqSocket(as_socket(fake))
        received: list[list[list[bytes]]] = []

        async def receiver() -> None:
            received.append(await sock.receive_batch())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            fake.arrive([b"reply"])
            fake.send_multipart([b"request"])  # what a send without rule 2 does
            await trio.sleep(0.3)
            assert received == []  # the reply sits in the socket and nobody knows
            sock.send_nowait([b"another"])  # the adapter's send looks, and wakes it
            with trio.fail_after(2):
                while not received:
                    await trio.sleep(0.001)
        assert received == [[[b"reply"]]]
        fake.close()

    trio.run(main)


def test_trio_one_receiver_at_a_time() -> None:
    async def main() -> None:
        fake = EdgeSocket()
        sock = TrioZmqSocket(as_socket(fake))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sock.receive_batch)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await sock.receive_batch()
            nursery.cancel_scope.cancel()
        fake.close()

    trio.run(main)


async def _trio_echo(sock: TrioZmqSocket) -> None:
    while True:
        for frames in await sock.receive_batch():
            sock.send_nowait(frames)  # ROUTER: [identity, body] back to whoever asked


async def _trio_calls(dealer: TrioZmqSocket, *, rounds: int, timeout: float = 10.0) -> list[bytes]:
    """``IN_FLIGHT`` callers, each making ``rounds`` calls in turn; returns every reply body."""
    waiting: dict[bytes, trio.Event] = {}
    replies: dict[bytes, bytes] = {}

    async def reader() -> None:
        while True:
            for (body,) in await dealer.receive_batch():
                replies[body] = body
                waiting.pop(body).set()

    async def caller(index: int) -> None:
        for round_ in range(rounds):
            body = f"{index}:{round_}".encode()
            waiting[body] = event = trio.Event()
            dealer.send_nowait([body])
            await event.wait()

    with trio.fail_after(timeout):
        async with trio.open_nursery() as outer:
            outer.start_soon(reader)
            async with trio.open_nursery() as callers:
                for index in range(IN_FLIGHT):
                    callers.start_soon(caller, index)
            outer.cancel_scope.cancel()
    return list(replies)


def _pair(context: zmq.Context[zmq.Socket[bytes]], port: int) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RECONNECT_IVL, 50)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return router, dealer


def test_trio_64_in_flight_both_ends_sending_while_receiving_and_a_router_restart() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    router, dealer = _pair(context, port)

    async def main() -> None:
        client = TrioZmqSocket(dealer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_trio_echo, TrioZmqSocket(router))
            replies = await _trio_calls(client, rounds=ROUNDS)
            assert sorted(replies) == sorted(f"{i}:{r}".encode() for i in range(IN_FLIGHT) for r in range(ROUNDS))
            nursery.cancel_scope.cancel()
        with reconnection_of(dealer):
            router.close(linger=0)  # the peer goes away ...
            again = rebind_router(context, port)  # ... and comes back on the same endpoint
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_trio_echo, TrioZmqSocket(again))
                replies = await _trio_calls(client, rounds=2)
                assert len(replies) == 2 * IN_FLIGHT
                nursery.cancel_scope.cancel()
        finally:
            again.close(linger=0)

    try:
        trio.run(main)
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        context.term()


# -- the asyncio shell ------------------------------------------------------------------------------------------


def test_asyncio_a_send_that_eats_the_edge_schedules_a_drain() -> None:
    async def main() -> None:
        fake = EdgeSocket()
        delivered: list[list[bytes]] = []
        sock = AsyncioZmqSocket(as_socket(fake), delivered.append, asyncio.get_running_loop())
        await asyncio.sleep(0)  # the first look, at creation, finds nothing
        fake.arrive([b"reply"])
        sock.send_nowait([b"request"])  # the edge is gone before the loop polls
        await asyncio.wait_for(_until(lambda: bool(delivered)), 2)
        assert delivered == [[b"reply"]]
        sock.close()

    asyncio.run(main())


def test_asyncio_what_was_queued_before_the_reader_was_registered_is_delivered() -> None:
    async def main() -> None:
        fake = EdgeSocket()
        fake.arrive([b"early"], edge=False)  # e.g. a monitor socket's first event, its edge already spent
        delivered: list[list[bytes]] = []
        sock = AsyncioZmqSocket(as_socket(fake), delivered.append, asyncio.get_running_loop())
        await asyncio.wait_for(_until(lambda: bool(delivered)), 2)
        assert delivered == [[b"early"]]
        sock.close()

    asyncio.run(main())


def test_asyncio_a_long_queue_is_drained_in_batches_that_let_other_callbacks_run() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = EdgeSocket()
        order: list[str] = []
        fake.arrive(*([f"{n}".encode()] for n in range(DRAIN_BATCH + 10)), edge=False)
        sock = AsyncioZmqSocket(as_socket(fake), lambda frames: order.append(frames[0].decode()), loop)
        loop.call_soon(order.append, "other")  # queued after the adapter's first drain
        await asyncio.wait_for(_until(lambda: len(order) == DRAIN_BATCH + 11), 2)
        assert order[:DRAIN_BATCH] == [str(n) for n in range(DRAIN_BATCH)]
        assert order[DRAIN_BATCH] == "other"  # a turn for someone else between two batches
        assert order[DRAIN_BATCH + 1 :] == [str(n) for n in range(DRAIN_BATCH, DRAIN_BATCH + 10)]
        sock.close()

    asyncio.run(main())


def test_asyncio_a_handler_that_closes_the_socket_gets_nothing_more() -> None:
    async def main() -> None:
        fake = EdgeSocket()
        fake.arrive([b"1"], [b"2"], [b"3"], edge=False)
        delivered: list[bytes] = []
        sock: AsyncioZmqSocket | None = None

        def handle(frames: list[bytes]) -> None:
            delivered.append(frames[0])
            assert sock is not None
            sock.close()

        sock = AsyncioZmqSocket(as_socket(fake), handle, asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        assert delivered == [b"1"] and fake.closed

    asyncio.run(main())


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_asyncio_64_in_flight_both_ends_sending_while_receiving_and_a_router_restart() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port()
    router_raw, dealer_raw = _pair(context, port)
    raw = [router_raw, dealer_raw]
    waiting: dict[bytes, asyncio.Future[bytes]] = {}
    routers: list[AsyncioZmqSocket] = []

    def echo(frames: list[bytes]) -> None:
        routers[-1].send_nowait(frames)

    def answered(frames: list[bytes]) -> None:
        waiting.pop(frames[0]).set_result(frames[0])

    async def calls(dealer: AsyncioZmqSocket, rounds: int) -> int:
        async def caller(index: int) -> None:
            for round_ in range(rounds):
                body = f"{index}:{round_}".encode()
                waiting[body] = future = asyncio.get_running_loop().create_future()
                dealer.send_nowait([body])
                assert await future == body

        await asyncio.wait_for(asyncio.gather(*(caller(index) for index in range(IN_FLIGHT))), 10)
        return IN_FLIGHT * rounds

    async def main() -> None:
        loop = asyncio.get_running_loop()
        routers.append(AsyncioZmqSocket(router_raw, echo, loop))
        dealer = AsyncioZmqSocket(dealer_raw, answered, loop)
        try:
            assert await calls(dealer, ROUNDS) == IN_FLIGHT * ROUNDS
            with reconnection_of(dealer_raw):
                routers.pop().close()  # the peer goes away, and comes back on the same endpoint
                raw.append(rebind_router(context, port))
            routers.append(AsyncioZmqSocket(raw[-1], echo, loop))
            assert await calls(dealer, 2) == IN_FLIGHT * 2
        finally:
            for sock in [*routers, dealer]:
                sock.close()

    try:
        asyncio.run(main())
    finally:
        for sock in raw:
            sock.close(linger=0)
        context.term()
