"""The serving half of the peer protocol: an op registry and the inbound stream handler.

Other subsystems add ops with ``register(op, handler)``; the transport never
changes for them (the task queue registers submit/claim/complete this way).
A handler is ``async def handler(ctx: RpcContext, args: dict) -> result``;
it raises ``BridgeError`` for a defined refusal, and whatever else it raises
becomes an ``internal`` error reply, never a crash.

Every op but ``hello`` needs the two nodes to have exchanged a hello first
(in either direction): until then it is answered ``unavailable`` with
``data.hello_required``, and the caller says hello and asks again.

Each inbound stream is read by one task; every request on it runs as its own
task (so a client may pipeline), bounded by ``SIDECAR_P2P_MAX_INBOUND_REQUESTS``
across the node, and answered under its id.  Bytes that are not our protocol
(undecodable, oversize) reset that stream and are counted; a well-framed
message with a bad field is answered with ``bad_frame`` and the stream lives on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import INetStream

from p2p_sidecar.node.budget import PartialFrameBudget
from p2p_sidecar.node.membership import Refusal
from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.node.streams import FramedStream, StreamGone
from p2p_sidecar.node.wire import Reply, Request, WireError, decode, encode, error_reply
from shared_schema import BridgeError, ErrorCode, tracing

log = logging.getLogger(__name__)

WARN_EVERY = 10.0
HELLO = "hello"
"""The one op a peer may use before the two nodes have exchanged a hello."""


@dataclass(frozen=True, slots=True)
class RpcContext:
    """Who is asking, and how long they will wait."""

    peer_id: str
    request_id: int
    op: str
    timeout: float


OpHandler = Callable[[RpcContext, dict[str, Any]], Awaitable[Any]]
Gate = Callable[[str, str], Refusal | None]
"""``gate(peer_id, op)``: None if the peer may use the op, else why not (``Membership.refusal``)."""


class RpcServer:
    def __init__(
        self,
        *,
        max_bytes: int,
        max_in_flight: int,
        metrics: NodeMetrics,
        max_streams_per_peer: int = 64,
        on_request: Callable[[str], None] = lambda peer_id: None,
        gate: Gate = lambda peer_id, op: None,
        budget: PartialFrameBudget | None = None,
        frame_timeout: float = float("inf"),
        introduced: Callable[[str], bool] = lambda peer_id: True,
    ) -> None:
        self._max_bytes = max_bytes
        self._introduced = introduced
        self._budget = budget
        self._frame_timeout = frame_timeout
        self._max_in_flight = max_in_flight
        self._metrics = metrics
        self._on_request = on_request
        self._gate = gate
        self._max_streams_per_peer = max_streams_per_peer
        self._streams: dict[str, int] = {}
        """Open inbound streams of our protocol, by peer: one peer cannot park thousands of idle streams here."""
        self._warned: dict[str, float] = {}
        self._ops: dict[str, OpHandler] = {}
        self._accepting = True
        self.in_flight = 0

    def register(self, op: str, handler: OpHandler) -> None:
        if op in self._ops:
            raise ValueError(f"peer protocol op {op!r} is already registered")
        self._ops[op] = handler

    @property
    def open_streams(self) -> int:
        """Inbound streams of our protocol open now, all peers together."""
        return sum(self._streams.values())

    @property
    def ops(self) -> list[str]:
        return sorted(self._ops)

    def stop_accepting(self) -> None:
        """From now on requests are answered ``unavailable`` (the node is shutting down)."""
        self._accepting = False

    # -- one inbound stream ---------------------------------------------------------
    async def handle_stream(self, stream: INetStream) -> None:
        framed = FramedStream(stream, self._max_bytes, budget=self._budget, frame_timeout=self._frame_timeout)
        peer = framed.peer_id
        if self._streams.get(peer, 0) >= self._max_streams_per_peer:
            self._metrics.protocol_errors.labels("too_many_streams").inc()
            self._warn(peer, f"already has {self._max_streams_per_peer} streams open here: new stream reset")
            await framed.reset()
            return
        self._streams[peer] = self._streams.get(peer, 0) + 1
        try:
            await self._serve_stream(framed)
        finally:
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]

    async def _serve_stream(self, framed: FramedStream) -> None:
        write_lock = trio.Lock()
        error: WireError | None = None
        async with trio.open_nursery() as nursery:
            error = await self._read_loop(framed, write_lock, nursery)
            if error is not None:
                nursery.cancel_scope.cancel()
        if error is not None:
            self._metrics.protocol_errors.labels(error.reason).inc()
            self._warn(framed.peer_id, f"sent bytes that are not our protocol ({error}): stream reset")
            await framed.reset()
        else:
            await framed.close()

    def _warn(self, peer_id: str, what: str) -> None:
        """At most one warning per peer every WARN_EVERY seconds: a peer sending garbage cannot flood the log
        (every occurrence is still counted in sidecar_p2p_protocol_errors_total)."""
        now = time.monotonic()
        if now - self._warned.get(peer_id, -WARN_EVERY) < WARN_EVERY:
            return
        if len(self._warned) >= 4096:  # many peer ids at once (they cost nothing to make): start over
            self._warned.clear()
        self._warned[peer_id] = now
        log.warning("peer %s %s (further ones within %.0fs only counted)", peer_id, what, WARN_EVERY)

    async def _read_loop(self, framed: FramedStream, lock: trio.Lock, nursery: trio.Nursery) -> WireError | None:
        while True:
            try:
                body = await framed.next_body()
            except StreamGone:
                return None
            except WireError as exc:
                return exc
            try:
                self._dispatch(framed, body, lock, nursery)
            except WireError as exc:
                return exc

    def _dispatch(self, framed: FramedStream, body: bytes, lock: trio.Lock, nursery: trio.Nursery) -> None:
        try:
            message = decode(body)
        except WireError as exc:
            if exc.request_id is None or exc.reason not in ("bad_field", "version"):
                raise
            self._metrics.protocol_errors.labels(exc.reason).inc()
            code = ErrorCode.VERSION_MISMATCH if exc.reason == "version" else ErrorCode.BAD_FRAME
            nursery.start_soon(self._send, framed, lock, error_reply(exc.request_id, code, str(exc)))
            return
        if not isinstance(message, Request):
            raise WireError("bad_field", "a reply arrived on a stream we serve", message.id)
        refusal = self._refusal(framed.peer_id, message)
        if refusal is not None:
            self._metrics.requests.labels("in", self._op_label(message.op), refusal.outcome).inc()
            nursery.start_soon(self._send, framed, lock, refusal)
            return
        self.in_flight += 1
        nursery.start_soon(self._serve, framed, lock, message, self._ops[message.op])

    def _refusal(self, peer_id: str, request: Request) -> Reply | None:
        if not self._accepting:
            return error_reply(request.id, ErrorCode.UNAVAILABLE, "this node is shutting down")
        # Membership before the op lookup: an outsider learns neither which ops exist nor anything else.
        denied = self._gate(peer_id, request.op)
        if denied is not None:
            return error_reply(request.id, ErrorCode.FORBIDDEN, denied.message, {"reason": denied.reason})
        if request.op != HELLO and not self._introduced(peer_id):
            return error_reply(
                request.id,
                ErrorCode.UNAVAILABLE,
                "say hello first: this node does not count you as connected (it restarted, or hung up on you)",
                {"hello_required": True},
            )
        if request.op not in self._ops:
            return error_reply(request.id, ErrorCode.UNKNOWN_TOOL, f"unknown op {request.op!r}", {"ops": self.ops})
        if self.in_flight >= self._max_in_flight:
            return error_reply(request.id, ErrorCode.BUSY, "this node is busy, try again shortly")
        return None

    def _op_label(self, op: str) -> str:
        return op if op in self._ops else "unknown"

    async def _serve(self, framed: FramedStream, lock: trio.Lock, request: Request, handler: OpHandler) -> None:
        started = time.perf_counter()
        context = RpcContext(framed.peer_id, request.id, request.op, request.timeout)
        self._on_request(framed.peer_id)
        try:
            with trio.move_on_after(request.timeout) as scope:
                if request.traceparent is None:
                    result = await handler(context, request.args)
                else:  # part of the caller's trace: this side's span (export on) or at least its context
                    with tracing.served(
                        f"p2p {request.op}",
                        traceparent=request.traceparent,
                        call_id=f"{framed.peer_id[-8:]}/{request.id}",
                        attributes={"rpc.method": request.op, "peer.id": framed.peer_id},
                    ):
                        result = await handler(context, request.args)
            if scope.cancelled_caught:
                reply = error_reply(request.id, ErrorCode.TIMEOUT, f"{request.op} took longer than {request.timeout}s")
            else:
                reply = Reply(request.id, result=result)
        except BridgeError as exc:
            reply = Reply(request.id, error=exc.info)
        except Exception as exc:  # the op handler's own bug: answered as 'internal', never a crash of the node
            log.exception("op %s from peer %s failed", request.op, framed.peer_id)
            reply = error_reply(request.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self.in_flight -= 1
        self._metrics.requests.labels("in", request.op, reply.outcome).inc()
        self._metrics.request_seconds.labels("in").observe(time.perf_counter() - started)
        await self._send(framed, lock, reply)

    async def _send(self, framed: FramedStream, lock: trio.Lock, reply: Reply) -> None:
        try:
            frame = encode(reply, self._max_bytes)
        except WireError:
            frame = encode(error_reply(reply.id, ErrorCode.TOO_LARGE, "the result exceeds the message limit"), 1 << 20)
        except (TypeError, ValueError, OverflowError) as exc:
            frame = encode(error_reply(reply.id, ErrorCode.TOOL_ERROR, f"result is not serialisable: {exc}"), 1 << 20)
        async with lock:
            try:
                await framed.send(frame)
            except StreamGone as exc:
                log.debug("reply %d to %s lost: %s", reply.id, framed.peer_id, exc)
