"""The sidecar's end of the bridge: a ZeroMQ ROUTER served from Trio.

Gateways connect (DEALER), say HELLO and get the catalog; their CALLs run as
tasks in this server's nursery and are answered under the same id.  The
bridge is symmetric: ``call_gateway`` sends a CALL the other way, which is
how remote peers reach a gateway's local tools.

Frames that cannot be decoded are dropped and counted; a wrong envelope
version that still carries an id is answered with ``version_mismatch`` so the
sender learns why.  Work whose deadline has passed is dropped unanswered (the
caller has already timed out).
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq

from p2p_sidecar.errors import StartupError
from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.tools import ToolCatalog
from p2p_sidecar.zap import BRIDGE_ZAP_DOMAIN, ZapHandler
from p2p_sidecar.zmq_trio import TrioZmqSocket
from shared_schema import (
    BridgeError,
    DecodeError,
    Envelope,
    ErrorCode,
    ErrorInfo,
    Kind,
    decode,
    encode,
    tracing,
)
from shared_schema.curve import CurveKeyError, CurveKeyPair, load_keypair, load_public_keys
from shared_schema.limits import check_argument_depth
from shared_schema.progress import Progress

log = logging.getLogger(__name__)

FLUSH_ON_CLOSE_MS = 500
"""How long closing the bridge waits for queued replies to be sent."""


DROP_LOG_EVERY_S = 10.0
"""Dropped frames of one kind are logged once per this many seconds (all of them counted)."""
DELIVERY_CONFIRM_SECONDS = 1.0
"""How long a drain waits for gateways to confirm they read the last replies (see ``wait_idle``)."""


@dataclass
class GatewayLink:
    """One connected gateway, known by its ROUTER identity."""

    identity: bytes
    last_seen: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def local_tools(self) -> list[str]:
        tools = self.info.get("local_tools")
        return [str(name) for name in tools] if isinstance(tools, list) else []


@dataclass
class _OutboundCall:
    gateway: bytes
    done: trio.Event = field(default_factory=trio.Event)
    reply: Envelope | None = None
    on_progress: Callable[[Progress], None] | None = None


class BridgeServer:
    def __init__(
        self,
        settings: SidecarSettings,
        catalog: ToolCatalog,
        metrics: SidecarMetrics,
        *,
        node_info: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._metrics = metrics
        self._drop_log: dict[str, tuple[float, int]] = {}
        """Per drop reason: when it was last logged, and how many were not logged since."""
        self._node_info = node_info
        self._max_frame = settings.bridge_max_frame_bytes
        self._tsock: TrioZmqSocket | None = None
        self._running: dict[tuple[bytes, str], trio.CancelScope] = {}
        self._outbound: dict[str, _OutboundCall] = {}
        self._barriers: dict[str, trio.Event] = {}
        self._ids = itertools.count(1)
        self._id_prefix = "s" + os.urandom(4).hex() + "-"
        self._accepting = True
        self._idle = trio.Event()
        self._idle.set()
        self._catalog_frame: tuple[str, bytes] | None = None
        self.gateways: dict[bytes, GatewayLink] = {}
        self._calls_to: collections.Counter[bytes] = collections.Counter()
        """This sidecar's calls in flight into each gateway (``call_gateway``), by identity."""
        self._picked: dict[bytes, int] = {}
        self._picks = itertools.count(1)
        self.handled_calls = 0
        self._curve: tuple[CurveKeyPair, frozenset[bytes]] | None = None
        if settings.bridge_curve_secret_key_file is not None:
            try:
                self._curve = (
                    load_keypair(settings.bridge_curve_secret_key_file, "SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE"),
                    load_public_keys(settings.bridge_curve_client_keys, "SIDECAR_BRIDGE_CURVE_CLIENT_KEYS"),
                )
            except CurveKeyError as exc:
                raise StartupError(str(exc)) from None
        metrics.in_flight.set_function(lambda: len(self._running))
        metrics.gateways.set_function(lambda: len(self.gateways))
        catalog.on_change(self._push_catalog)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        context = zmq.Context()
        try:
            async with trio.open_nursery() as nursery:
                if self._curve is not None:  # the ZAP handler must answer before the first handshake can arrive
                    zap = ZapHandler(context, self._curve[1], self._metrics)
                    await nursery.start(zap.run)
                sock = self._bind(context)
                self._tsock = TrioZmqSocket(sock)
                try:
                    nursery.start_soon(self._expire_gateways)
                    task_status.started()
                    await self._receive_loop(nursery)
                finally:
                    self._tsock = None
                    # Replies the drain let finish may still sit in ZeroMQ's queue: give them a
                    # moment to leave instead of discarding them with the socket.
                    sock.close(linger=FLUSH_ON_CLOSE_MS)
        finally:
            context.term()

    def _bind(self, context: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        sock = context.socket(zmq.ROUTER)
        hwm = max(1000, 4 * self._settings.bridge_max_in_flight)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises instead of vanishing
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self._max_frame)  # hard memory guard; the codec enforces the limit
        # a peer that opens a connection and never completes the ZMTP greeting is dropped after this long
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(self._settings.bridge_handshake_timeout * 1000))
        if self._curve is not None:
            keys = self._curve[0]
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            sock.setsockopt(zmq.ZAP_DOMAIN, BRIDGE_ZAP_DOMAIN)
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        try:
            sock.bind(self._settings.bridge_endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise StartupError(f"cannot bind the bridge on {self._settings.bridge_endpoint}: {exc}") from None
        security = "CURVE" if self._curve is not None else "loopback only, no encryption"
        log.info("bridge listening on %s (%s)", self._settings.bridge_endpoint, security)
        return sock

    def stop_accepting(self) -> None:
        """New calls are refused from now on ("sidecar shutting down"); running ones continue."""
        self._accepting = False

    async def wait_idle(self) -> None:
        """Return when no gateway call is running and each gateway has read the replies sent to it.

        The last replies of a drain are sent just before the socket closes, and
        a gateway's ZeroMQ socket discards what it has received but not yet
        read when the connection drops.  So a PING goes to every gateway and
        the drain waits (up to ``DELIVERY_CONFIRM_SECONDS``) for the PONGs:
        frames on a connection are read in order, so a PONG means every reply
        sent before its PING was read.
        """
        await self._idle.wait()
        await self._confirm_delivery(DELIVERY_CONFIRM_SECONDS)

    async def _confirm_delivery(self, timeout: float) -> None:
        waiting: dict[str, trio.Event] = {}
        for identity in list(self.gateways):
            ping_id = f"{self._id_prefix}barrier-{next(self._ids):x}"
            waiting[ping_id] = self._barriers[ping_id] = trio.Event()
            if not self._send(identity, Envelope(Kind.PING, id=ping_id)):
                del waiting[ping_id], self._barriers[ping_id]
        with trio.move_on_after(timeout):
            for done in waiting.values():
                await done.wait()
        for ping_id in waiting:
            self._barriers.pop(ping_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- receiving -------------------------------------------------------------------
    async def _receive_loop(self, nursery: trio.Nursery) -> None:
        assert self._tsock is not None
        while True:
            for frames in await self._tsock.receive_batch():
                if len(frames) != 2:
                    self._drop("multipart", f"expected identity + one frame, got {len(frames)} frames")
                    continue
                identity, frame = frames
                try:
                    envelope = decode(frame, self._max_frame)
                except DecodeError as exc:
                    self._drop(exc.reason, str(exc))
                    if exc.reason == "version" and exc.envelope_id:
                        error = ErrorInfo(ErrorCode.VERSION_MISMATCH, str(exc), {"supported": 1})
                        self._send(identity, Envelope(Kind.ERROR, id=exc.envelope_id, error=error))
                    continue
                self._dispatch(identity, envelope, nursery)

    def _dispatch(self, identity: bytes, envelope: Envelope, nursery: trio.Nursery) -> None:
        kind = envelope.kind
        link = self.gateways.get(identity)
        if link is not None:
            link.last_seen = trio.current_time()
        if kind is Kind.CALL:
            self._start_call(identity, envelope, nursery)
        elif kind is Kind.PING:
            if link is None:  # a gateway we forgot (or never met): ask it to introduce itself again
                self._send(identity, Envelope(Kind.PONG, id=envelope.id, body={"revision": None}))
            else:
                self._send(identity, Envelope(Kind.PONG, id=envelope.id, body={"revision": self._catalog.revision}))
        elif kind is Kind.HELLO:
            self.gateways[identity] = GatewayLink(identity, trio.current_time(), envelope.body or {})
            log.info("gateway connected (%s)", (envelope.body or {}).get("pid", "?"))
            self._send_frame(identity, self._catalog_envelope_frame())
        elif kind is Kind.RESULT or kind is Kind.ERROR:
            pending = self._outbound.get(envelope.id)
            if pending is None:
                self._drop("late_reply", f"reply for unknown or finished call {envelope.id!r}")
            else:
                pending.reply = envelope
                pending.done.set()
        elif kind is Kind.CANCEL:
            scope = self._running.get((identity, envelope.id))
            if scope is not None:
                scope.cancel()
        elif kind is Kind.PROGRESS:
            pending = self._outbound.get(envelope.id)
            update = Progress.from_wire(envelope.body)
            if pending is not None and pending.on_progress is not None and update is not None:
                pending.on_progress(update)
        elif kind is Kind.PONG:
            barrier = self._barriers.pop(envelope.id, None)
            if barrier is not None:
                barrier.set()
        else:
            self._drop("unexpected_kind", f"the sidecar does not accept {kind.value!r} frames")

    def _drop(self, reason: str, detail: str) -> None:
        """Count every dropped frame; log one line per reason every ``DROP_LOG_EVERY_S``, with how many were held
        back: whatever a bridge client sends, the log stays readable (an attack measured 10,600 lines in 8 s)."""
        self._metrics.frames_dropped.labels(reason).inc()
        now = time.monotonic()
        last, held = self._drop_log.get(reason, (-DROP_LOG_EVERY_S, 0))
        if now - last < DROP_LOG_EVERY_S:
            self._drop_log[reason] = (last, held + 1)
            return
        self._drop_log[reason] = (now, 0)
        more = f" ({held} more of these since the last line; every one counted in sidecar_bridge_frames_dropped_total)"
        log.warning("bridge frame dropped (%s): %s%s", reason, detail, more if held else "")

    # -- serving calls -----------------------------------------------------------------
    def _start_call(self, identity: bytes, envelope: Envelope, nursery: trio.Nursery) -> None:
        if envelope.deadline is not None and envelope.deadline <= time.time():
            self._drop("expired", f"call {envelope.id} to {envelope.tool} arrived after its deadline")
            return
        if not self._accepting:
            self._reply_error(identity, envelope, ErrorCode.UNAVAILABLE, "P2P sidecar is shutting down")
            return
        if len(self._running) >= self._settings.bridge_max_in_flight:
            self._reply_error(identity, envelope, ErrorCode.BUSY, "P2P sidecar busy, try again shortly")
            return
        try:
            check_argument_depth(envelope.tool or "", envelope.arguments, self._settings.max_argument_depth)
        except BridgeError as exc:
            self._metrics.limit_rejections.labels("max_argument_depth").inc()
            self._metrics.calls.labels(exc.code.value).inc()
            self._send(identity, envelope.fail(exc.info))
            return
        key = (identity, envelope.id)
        if key in self._running:
            self._drop("duplicate_id", f"call id {envelope.id!r} is already running")
            return
        scope = trio.CancelScope()
        if envelope.deadline is not None:  # the caller's deadline bounds the whole call, tool included
            scope.deadline = trio.current_time() + (envelope.deadline - time.time())
        self._running[key] = scope
        self._idle = trio.Event()
        nursery.start_soon(self._serve_call, identity, envelope, scope)

    def _reply_error(self, identity: bytes, envelope: Envelope, code: ErrorCode, message: str) -> None:
        self._metrics.calls.labels(code.value).inc()
        self._send(identity, envelope.fail(ErrorInfo(code, message)))

    async def _serve_call(self, identity: bytes, envelope: Envelope, scope: trio.CancelScope) -> None:
        started = time.perf_counter()
        reply: Envelope | None = None
        try:
            with (
                scope,
                tracing.served(
                    f"tool {envelope.tool}",
                    traceparent=envelope.traceparent,
                    call_id=envelope.id,
                    attributes={"mcp.tool": envelope.tool or "", "mcp_p2p.call_id": envelope.id},
                ),
            ):
                reply = await self._run_tool(envelope, identity)
            self.handled_calls += 1
            self._metrics.call_latency.observe(time.perf_counter() - started)
            if reply is None:  # cancelled by the caller, or its deadline passed: nobody is waiting for an answer
                outcome = ErrorCode.TIMEOUT if trio.current_time() >= scope.deadline else ErrorCode.CANCELLED
                self._metrics.calls.labels(outcome.value).inc()
            else:
                self._metrics.calls.labels(reply.outcome).inc()
                self._send(identity, reply)
        finally:
            # Only now is the call over (its reply queued): a drain waiting for idle may proceed.
            del self._running[(identity, envelope.id)]
            if not self._running:
                self._idle.set()

    async def _run_tool(self, envelope: Envelope, identity: bytes) -> Envelope:
        tool = self._catalog.get(envelope.tool or "")
        if tool is None:
            return envelope.fail(ErrorInfo(ErrorCode.UNKNOWN_TOOL, f"unknown P2P tool: {envelope.tool}"))
        # The call's own deadline is on the enclosing scope; the tool's timeout_seconds applies only
        # to calls that came without one.
        timeout = None if envelope.deadline is not None else tool.metadata.timeout_seconds

        def forward(update: Progress) -> None:  # the tool's progress travels to the gateway that called
            self._send(identity, Envelope(Kind.PROGRESS, id=envelope.id, body=update.to_wire()))

        try:
            return envelope.reply(await tool.invoke(envelope.arguments or {}, timeout, forward))
        except BridgeError as exc:
            log.info("P2P tool %s (call %s) failed: %s", envelope.tool, envelope.id, exc)
            return envelope.fail(exc.info)

    # -- sending -----------------------------------------------------------------------
    def _send(self, identity: bytes, envelope: Envelope) -> bool:
        try:
            frame = encode(envelope)
        except (TypeError, ValueError, OverflowError) as exc:
            frame = encode(envelope.fail(ErrorInfo(ErrorCode.TOOL_ERROR, f"result is not serialisable: {exc}")))
        if len(frame) > self._max_frame:
            message = f"reply of {len(frame)} bytes exceeds the bridge frame limit of {self._max_frame}"
            frame = encode(envelope.fail(ErrorInfo(ErrorCode.TOO_LARGE, message)))
        return self._send_frame(identity, frame)

    def _send_frame(self, identity: bytes, frame: bytes) -> bool:
        if self._tsock is None:
            return False
        try:
            self._tsock.send_nowait([identity, frame])
        except zmq.Again:
            self._drop("send_full", "gateway is not reading; reply dropped")
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._forget(identity, "its connection is gone")
                return False
            raise
        return True

    def _catalog_envelope_frame(self) -> bytes:
        revision = self._catalog.revision
        if self._catalog_frame is None or self._catalog_frame[0] != revision:
            body: dict[str, Any] = {"revision": revision, "tools": [spec.to_wire() for spec in self._catalog.specs()]}
            body["node"] = self._node_info()
            self._catalog_frame = (revision, encode(Envelope(Kind.CATALOG, body=body)))
        return self._catalog_frame[1]

    def _push_catalog(self) -> None:
        if self._tsock is None:
            return
        frame = self._catalog_envelope_frame()
        for identity in list(self.gateways):
            self._send_frame(identity, frame)

    # -- gateways ------------------------------------------------------------------------
    async def _expire_gateways(self) -> None:
        timeout = self._settings.bridge_gateway_timeout
        while True:
            await trio.sleep(timeout / 4)
            cutoff = trio.current_time() - timeout
            for identity, link in list(self.gateways.items()):
                if link.last_seen < cutoff:
                    self._forget(identity, f"silent for more than {timeout:.0f}s")

    def _forget(self, identity: bytes, reason: str) -> None:
        if self.gateways.pop(identity, None) is not None:
            log.info("gateway forgotten: %s", reason)
        self._picked.pop(identity, None)
        for call_id, pending in list(self._outbound.items()):
            if pending.gateway == identity and not pending.done.is_set():
                error = ErrorInfo(ErrorCode.UNAVAILABLE, f"gateway went away ({reason})")
                pending.reply = Envelope(Kind.ERROR, id=call_id, error=error)
                pending.done.set()

    # -- calls into a gateway ----------------------------------------------------------------
    def local_tools(self) -> list[str]:
        """Every tool some connected gateway says it runs itself (what this node may offer remote peers)."""
        return sorted({name for link in self.gateways.values() for name in link.local_tools})

    def pick_gateway(self, tool: str | None = None, *, exclude: Collection[bytes] = ()) -> GatewayLink | None:
        """The connected gateway a call into ``tool`` should go to, or None when there is none.

        Several gateways may be connected: the worker processes of one gateway
        (``GATEWAY_WORKERS``), or separate gateways.  Those that list ``tool``
        among their local tools come first (any, if none does: a gateway
        resolves collection tools on first use); among them the one with the
        fewest of this sidecar's calls in flight, and of those the one picked
        longest ago, so calls spread over all of them.
        """
        links = [link for identity, link in self.gateways.items() if identity not in exclude]
        if tool is not None:
            links = [link for link in links if tool in link.local_tools] or links
        return min(
            links, key=lambda link: (self._calls_to[link.identity], self._picked.get(link.identity, 0)), default=None
        )

    async def call_gateway(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        trace_id: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Any:
        """Run a connected gateway's local tool; returns its result or raises ``BridgeError``.

        A gateway whose connection refuses the frame (gone, or not reading) is
        skipped for the next one: the call has not reached it, so it cannot
        run twice.  Once sent, the call stays with that gateway.
        ``on_progress`` receives what the tool reports while it runs (``shared_schema.progress``).
        """
        # Made on behalf of a call this process serves (a peer's request, a task): the gateway's log lines then
        # carry an id that starts with that call's, so one grep finds both sides.
        serving = tracing.CALL_ID.get()
        call_id = f"{serving[:64]}>{next(self._ids):x}" if serving else f"{self._id_prefix}{next(self._ids):x}"
        attributes = {"mcp.tool": tool, "mcp_p2p.call_id": call_id}
        with tracing.outgoing(f"bridge call {tool}", attributes=attributes) as traceparent:
            envelope = Envelope(
                Kind.CALL,
                id=call_id,
                deadline=time.time() + timeout,
                tool=tool,
                arguments=arguments,
                trace_id=trace_id,
                traceparent=traceparent,
            )
            refused: list[bytes] = []
            while True:
                link = self.pick_gateway(tool, exclude=refused)
                if link is None:
                    message = "the gateways' connections refused the call" if refused else "no gateway is connected"
                    raise BridgeError(ErrorCode.UNAVAILABLE, f"{message} (to this sidecar)")
                self._picked[link.identity] = next(self._picks)
                if self._send(link.identity, envelope):
                    break
                refused.append(link.identity)
            identity = link.identity
            pending = self._outbound[call_id] = _OutboundCall(identity, on_progress=on_progress)
            self._calls_to[identity] += 1
            try:
                try:
                    with trio.move_on_after(timeout):
                        await pending.done.wait()
                except trio.Cancelled:  # our caller gave up (a cancelled task): the gateway may stop the work
                    self._send(identity, Envelope(Kind.CANCEL, id=call_id))
                    raise
                if pending.reply is None:
                    self._send(identity, Envelope(Kind.CANCEL, id=call_id))
                    raise BridgeError(ErrorCode.TIMEOUT, f"gateway tool {tool!r} did not answer within {timeout:.3g}s")
            finally:
                del self._outbound[call_id]
                self._calls_to[identity] -= 1
                if not self._calls_to[identity]:
                    del self._calls_to[identity]
        reply = pending.reply
        self._metrics.outbound_calls.labels("ok" if reply.kind is Kind.RESULT else "error").inc()
        if reply.kind is Kind.RESULT:
            return reply.result
        raise BridgeError.from_info(reply.error or ErrorInfo(ErrorCode.INTERNAL, "gateway sent an empty error"))
