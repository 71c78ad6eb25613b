"""The gateway's end of the bridge: an asyncio ZeroMQ DEALER talking to the sidecar's ROUTER.

One object owns the socket, its connection monitor and the heartbeat task,
all started and stopped by ``running()``, which the FastAPI lifespan enters.
Frames are read by loop callbacks (``gateway/zmq_asyncio.py``) and dispatched
synchronously: a reply resolves its caller's future without a task switch.
Calls are correlated by id and bounded in number; each has a deadline.
The connection's life is tracked in ``state``:

    DOWN --handshake--> CONNECTING --CATALOG--> UP --silence--> STALE --PONG--> UP
      ^                                          |
      +---------------- disconnect --------------+   (from any state)

Only UP accepts calls.  Leaving UP fails every pending call at once with
"unavailable", so no caller waits for a sidecar that is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from enum import StrEnum
from functools import partial
from typing import Any

import anyio
import zmq
from pydantic import ValidationError
from zmq.utils.monitor import parse_monitor_message

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.zmq_asyncio import AsyncioZmqSocket
from shared_schema import (
    BridgeError,
    DecodeError,
    Envelope,
    ErrorCode,
    ErrorInfo,
    Kind,
    ToolSpec,
    decode,
    encode,
    tracing,
)
from shared_schema.curve import CurveKeyPair, load_keypair, load_public_key
from shared_schema.progress import Progress, Sink

log = logging.getLogger(__name__)

InboundHandler = Callable[[Envelope], Awaitable[Envelope]]
CatalogHandler = Callable[[list[ToolSpec]], object]
"""Told every catalog the sidecar sends; what it returns is ignored."""


_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class _Expired(Exception):
    """A call's deadline passed; internal to ``_round_trip``."""


def _expire(future: asyncio.Future[Envelope]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class SidecarState(StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"
    STALE = "stale"


class BridgeClient:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        *,
        on_catalog: CatalogHandler,
        on_inbound_call: InboundHandler,
        hello_body: Callable[[], dict[str, Any]],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._on_catalog = on_catalog
        self._on_inbound_call = on_inbound_call
        self._hello_body = hello_body
        self._max_frame = settings.bridge_max_frame_bytes
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._progress: dict[str, Sink] = {}
        """Where each P2P call that asked for progress wants its updates."""
        self._inbound: set[asyncio.Task[None]] = set()
        self._inbound_by_id: dict[str, asyncio.Task[None]] = {}
        """Inbound calls by id, so the sidecar's CANCEL stops the one it gave up on."""
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex() + "-"
        self._sock: AsyncioZmqSocket | None = None
        self._last_inbound = 0.0
        self._clock: Callable[[], float] = time.monotonic
        """The event loop's clock once running: what heartbeats measure silence with (and tests can move)."""
        self._catalog_revision: Any = None
        self.state = SidecarState.DOWN
        self.state_reason = "not connected yet"
        self.sidecar_info: dict[str, Any] = {}
        self.state_changed = asyncio.Event()
        metrics.bridge_in_flight.set_function(lambda: len(self._pending))
        self._handshake_failure: str | None = None
        self._curve: tuple[CurveKeyPair, bytes] | None = None
        if settings.bridge_curve_secret_key_file is not None and settings.bridge_curve_server_key_file is not None:
            self._curve = (  # raises CurveKeyError (one line naming the setting) at start-up
                load_keypair(settings.bridge_curve_secret_key_file, "GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE"),
                load_public_key(settings.bridge_curve_server_key_file, "GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE"),
            )

    # -- lifecycle ----------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[BridgeClient]:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        hwm = max(1000, 4 * self._settings.bridge_max_in_flight)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.IMMEDIATE, 1)  # never queue calls for a sidecar that is not there
        raw.setsockopt(zmq.RECONNECT_IVL, 100)
        raw.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        raw.setsockopt(zmq.SNDHWM, hwm)
        raw.setsockopt(zmq.RCVHWM, hwm)
        raw.setsockopt(zmq.MAXMSGSIZE, 4 * self._max_frame)  # hard memory guard; the codec enforces the limit
        if self._curve is not None:
            keys, server_key = self._curve
            raw.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            raw.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            raw.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED
        monitor = AsyncioZmqSocket(raw.get_monitor_socket(events), self._on_monitor, loop)
        sock = self._sock = AsyncioZmqSocket(raw, self._on_frames, loop)
        raw.connect(self._settings.bridge_endpoint)
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="bridge-heartbeat")
        log.info("bridge connecting to %s", self._settings.bridge_endpoint)
        try:
            yield self
        finally:
            self._set_state(SidecarState.DOWN, "gateway shutting down")
            for task in [heartbeat, *self._inbound]:
                task.cancel()
            await asyncio.gather(heartbeat, *self._inbound, return_exceptions=True)
            self._sock = None
            with suppress(zmq.ZMQError):
                raw.disable_monitor()
            monitor.close()
            sock.close()
            context.term()

    # -- calls out to the sidecar -------------------------------------------
    @property
    def available(self) -> bool:
        return self.state is SidecarState.UP

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        trace_id: str | None = None,
        progress: Sink | None = None,
        call_id: str | None = None,
    ) -> Any:
        """Run a P2P tool in the sidecar and return its result, or raise ``BridgeError``.

        ``progress`` receives the PROGRESS updates the sidecar sends for this call while it runs.
        ``call_id`` (unique per gateway, e.g. the router's) becomes the envelope's id, so the sidecar's log
        lines about the call carry the same call id as this process's.
        """
        if self.state is not SidecarState.UP:
            raise BridgeError(ErrorCode.UNAVAILABLE, f"P2P sidecar unavailable ({self.state_reason})")
        if len(self._pending) >= self._settings.bridge_max_in_flight:
            raise BridgeError(
                ErrorCode.BUSY, f"P2P sidecar busy: {len(self._pending)} calls already in flight, try again shortly"
            )
        if call_id is None or call_id in self._pending:
            call_id = f"{self._id_prefix}{next(self._ids):x}"
        if tracing.enabled():
            attributes = {"mcp.tool": tool, "mcp_p2p.call_id": call_id, "mcp_p2p.runtime": "p2p"}
            with tracing.outgoing(f"bridge call {tool}", attributes=attributes) as traceparent:
                return await self._call(tool, arguments, timeout, trace_id, call_id, traceparent, progress)
        return await self._call(tool, arguments, timeout, trace_id, call_id, tracing.traceparent_of_current(), progress)

    async def _call(
        self,
        tool: str,
        arguments: dict[str, Any],
        timeout: float,
        trace_id: str | None,
        call_id: str,
        traceparent: str | None,
        progress: Sink | None,
    ) -> Any:
        envelope = Envelope(
            Kind.CALL,
            id=call_id,
            deadline=time.time() + timeout,
            tool=tool,
            arguments=arguments,
            trace_id=trace_id,
            traceparent=traceparent,
        )
        try:
            frame = encode(envelope)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"arguments cannot be sent to the sidecar: {exc}") from None
        if len(frame) > self._max_frame:
            raise BridgeError(
                ErrorCode.TOO_LARGE, f"call of {len(frame)} bytes exceeds the bridge frame limit of {self._max_frame}"
            )
        if progress is not None:
            self._progress[call_id] = progress
        try:
            reply = await self._round_trip(call_id, frame, timeout)
        except asyncio.CancelledError:
            self._send(encode(Envelope(Kind.CANCEL, id=call_id)))  # our caller gave up: the sidecar may stop
            raise
        finally:
            if progress is not None:
                self._progress.pop(call_id, None)
        if reply is None:
            self._send(encode(Envelope(Kind.CANCEL, id=call_id)))
            raise BridgeError(
                ErrorCode.TIMEOUT, f"P2P tool {tool!r} did not answer within {timeout:.3g}s", {"call_id": call_id}
            )
        if reply.kind is Kind.RESULT:
            return reply.result
        raise BridgeError.from_info(reply.error or ErrorInfo(ErrorCode.INTERNAL, "sidecar sent an empty error"))

    async def ping(self, timeout: float = 1.0) -> float:
        """One application-level round trip through both event loops; returns seconds taken."""
        call_id = f"{self._id_prefix}{next(self._ids):x}"
        started = time.perf_counter()
        if await self._round_trip(call_id, encode(Envelope(Kind.PING, id=call_id)), timeout) is None:
            raise BridgeError(ErrorCode.TIMEOUT, f"no pong within {timeout:.3g}s")
        return time.perf_counter() - started

    async def _round_trip(self, call_id: str, frame: bytes, timeout: float) -> Envelope | None:
        """Send one frame and wait for the envelope answering ``call_id``; None when ``timeout`` passes.

        The deadline is a loop timer that resolves the future, which is much
        cheaper per call than a cancel scope; the future may also be failed by
        ``_fail_pending`` when the sidecar goes away.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Envelope] = loop.create_future()
        self._pending[call_id] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            if not self._send(frame):
                raise BridgeError(ErrorCode.UNAVAILABLE, "P2P sidecar unavailable (bridge is not accepting frames)")
            return await future
        except _Expired:
            return None
        finally:
            timer.cancel()
            self._pending.pop(call_id, None)

    def _send(self, frame: bytes) -> bool:
        """Queue one frame without waiting; False when ZeroMQ refuses (no live connection, or full)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send_nowait([frame])
        except zmq.ZMQError as exc:  # zmq.Again included: no live connection (IMMEDIATE), or the queue is full
            log.debug("bridge send refused: %s", exc)
            return False
        return True

    # -- state --------------------------------------------------------------
    def _set_state(self, state: SidecarState, reason: str) -> None:
        if state is self.state and reason == self.state_reason:
            return
        previous, self.state, self.state_reason = self.state, state, reason
        self._metrics.bridge_up.set(1 if state is SidecarState.UP else 0)
        if previous is not state:
            log.info("bridge %s -> %s (%s)", previous.value, state.value, reason)
        if state is not SidecarState.UP and previous is SidecarState.UP:
            self._fail_pending(f"P2P sidecar unavailable ({reason})")
        self.state_changed.set()
        self.state_changed = asyncio.Event()

    def _fail_pending(self, message: str) -> None:
        for call_id, future in list(self._pending.items()):
            if not future.done():
                future.set_exception(BridgeError(ErrorCode.UNAVAILABLE, message, {"call_id": call_id}))

    async def wait_until(self, state: SidecarState, timeout: float) -> bool:
        """For tests and start-up scripts: wait for ``state`` up to ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            while self.state is not state:
                await self.state_changed.wait()
            return True
        return False

    # -- tasks ----------------------------------------------------------------
    def _on_monitor(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshake_failure = None
            self._metrics.bridge_connects.inc()
            self._last_inbound = self._clock()
            self._set_state(SidecarState.CONNECTING, "connected, waiting for the catalog")
            self._send_hello()
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            if self._sock is not None:
                self._sock.drain_now()  # replies that arrived before the drop still answer their callers
            # a failed handshake is followed by a disconnect: keep saying why it failed
            self._set_state(SidecarState.DOWN, self._handshake_failure or "connection to the sidecar was lost")
        elif event["event"] & _HANDSHAKE_FAILED:
            reason = (
                "the sidecar refused this gateway's CURVE key, or the sidecar's key is not the one configured"
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                else "bridge handshake failed (CURVE keys on one side only, or not a sidecar)"
            )
            self._metrics.bridge_handshake_failures.inc()
            if reason != self._handshake_failure:
                log.warning("%s", reason)
            self._handshake_failure = reason
            self._set_state(SidecarState.DOWN, reason)

    def _send_hello(self) -> None:
        self._send(encode(Envelope(Kind.HELLO, body=self._hello_body())))

    async def _heartbeat_loop(self) -> None:
        interval = self._settings.bridge_heartbeat_interval
        timeout = self._settings.bridge_heartbeat_timeout
        while True:
            await asyncio.sleep(interval)
            if self.state is SidecarState.DOWN:
                continue
            silent_for = self._clock() - self._last_inbound
            if self.state is SidecarState.CONNECTING:
                self._send_hello()  # the catalog may have been lost; asking again is harmless
            elif self.state is SidecarState.UP and silent_for > timeout:
                self._set_state(SidecarState.STALE, f"no answer to heartbeats for {silent_for:.1f}s")
            self._send(encode(Envelope(Kind.PING)))

    def _on_frames(self, frames: list[bytes]) -> None:
        self._last_inbound = self._clock()
        if len(frames) != 1:
            self._drop("multipart", f"expected one frame, got {len(frames)}")
            return
        try:
            envelope = decode(frames[0], self._max_frame)
        except DecodeError as exc:
            self._drop(exc.reason, str(exc))
            future = self._pending.get(exc.envelope_id or "")
            if future is not None and not future.done():
                future.set_exception(BridgeError(ErrorCode.BAD_FRAME, f"sidecar sent an undecodable reply: {exc}"))
            return
        self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind is Kind.RESULT or kind is Kind.ERROR:
            future = self._pending.get(envelope.id)
            if future is None or future.done():
                self._drop("late_reply", f"reply for unknown or finished call {envelope.id!r}")
            else:
                future.set_result(envelope)
        elif kind is Kind.CALL:
            self._start_inbound(envelope)
        elif kind is Kind.CATALOG:
            self._install_catalog(envelope.body or {})
        elif kind is Kind.PONG:
            if envelope.id and (future := self._pending.get(envelope.id)) is not None and not future.done():
                future.set_result(envelope)  # an explicit ping()
            revision = (envelope.body or {}).get("revision")
            if self.state is SidecarState.STALE:
                self._set_state(SidecarState.UP, "heartbeats answered again")
            if revision != self._catalog_revision and self.state is SidecarState.UP:
                self._send_hello()  # the catalog changed and we missed the push
        elif kind is Kind.PING:
            self._send(encode(Envelope(Kind.PONG, id=envelope.id)))
        elif kind is Kind.PROGRESS:
            sink = self._progress.get(envelope.id)
            update = Progress.from_wire(envelope.body)
            if sink is not None and update is not None:
                sink(update)
        elif kind is Kind.CANCEL:
            task = self._inbound_by_id.get(envelope.id)
            if task is not None:  # the sidecar gave up (a cancelled task, a caller's deadline): stop the work
                task.cancel()
        else:
            self._drop("unexpected_kind", f"the gateway does not accept {kind.value!r} frames")

    def _drop(self, reason: str, detail: str) -> None:
        self._metrics.bridge_frames_dropped.labels(reason).inc()
        log.warning("bridge frame dropped (%s): %s", reason, detail)

    def _install_catalog(self, body: dict[str, Any]) -> None:
        specs: list[ToolSpec] = []
        for raw in body.get("tools") or []:
            try:
                specs.append(ToolSpec.from_wire(raw))
            except ValidationError as exc:
                self._drop("bad_catalog_entry", f"{raw.get('name') if isinstance(raw, dict) else raw!r:.80}: {exc}")
        self._catalog_revision = body.get("revision")
        node = body.get("node")
        self.sidecar_info = node if isinstance(node, dict) else {}
        self._on_catalog(specs)
        self._set_state(SidecarState.UP, f"catalog of {len(specs)} tools received")

    def send_progress(self, call_id: str, update: Progress) -> None:
        """Tell the sidecar how far an inbound call ``call_id`` has come."""
        self._send(encode(Envelope(Kind.PROGRESS, id=call_id, body=update.to_wire())))

    # -- calls in from the sidecar (remote peers) -------------------------------
    def _start_inbound(self, envelope: Envelope) -> None:
        if len(self._inbound) >= self._settings.max_inbound_calls:
            self._metrics.inbound_calls.labels(ErrorCode.BUSY.value).inc()
            self._send(encode(envelope.fail(ErrorInfo(ErrorCode.BUSY, "gateway busy with inbound calls"))))
            return
        task = asyncio.create_task(self._serve_inbound(envelope), name=f"inbound-{envelope.tool}")
        self._inbound.add(task)
        task.add_done_callback(self._inbound.discard)
        if envelope.id and envelope.id not in self._inbound_by_id:
            self._inbound_by_id[envelope.id] = task
            task.add_done_callback(partial(self._forget_inbound, envelope.id))

    def _forget_inbound(self, call_id: str, _task: asyncio.Task[None]) -> None:
        self._inbound_by_id.pop(call_id, None)

    async def _serve_inbound(self, envelope: Envelope) -> None:
        try:
            reply = await self._on_inbound_call(envelope)
        except asyncio.CancelledError:
            self._metrics.inbound_calls.labels(ErrorCode.CANCELLED.value).inc()
            raise  # cancelled by the sidecar's CANCEL or at shutdown: nobody waits for an answer
        try:
            frame = encode(reply)
        except (TypeError, ValueError, OverflowError) as exc:
            frame = encode(envelope.fail(ErrorInfo(ErrorCode.TOOL_ERROR, f"result is not serialisable: {exc}")))
        if len(frame) > self._max_frame:
            frame = encode(envelope.fail(ErrorInfo(ErrorCode.TOO_LARGE, "result exceeds the bridge frame limit")))
        self._metrics.inbound_calls.labels(reply.outcome).inc()
        self._send(frame)
