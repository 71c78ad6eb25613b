"""The one codec of the peer protocol ``/mcp-p2p/rpc/1.0.0`` (see docs/p2p-protocol.md).

A libp2p stream carries frames: a 4-byte big-endian length, then that many
bytes of one msgpack map.  Two kinds of message exist:

    request  {"v": 1, "k": "req", "id": u64, "op": str, "a": map, "t": ms, "tp"?: str}
    reply    {"v": 1, "k": "res", "id": u64, "r": any}
             {"v": 1, "k": "err", "id": u64, "e": {"code": str, "message": str, "data"?: any}}

``t`` is the time the caller will wait, in milliseconds, measured when the
request was written: peers do not share a clock, so a relative budget is the
only deadline both ends can agree on.  ``tp``, optional, is the caller's W3C
``traceparent`` when the request is part of a trace; a peer that does not
know it ignores it (unknown keys are not an error), and one that is not a
short string is dropped, so it needed no version bump.  Error codes are the bridge's
(``shared_schema.ErrorCode``), so an error can travel peer -> sidecar ->
gateway -> MCP client unchanged.

Everything here is synchronous and free of I/O and of libp2p: ``FrameReader``
turns bytes into frame bodies, ``decode`` turns a body into a message, and
neither lets anything but ``WireError`` escape.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from shared_schema import ErrorCode, ErrorInfo
from shared_schema.envelope import MAX_TRACEPARENT

PROTOCOL_ID = "/mcp-p2p/rpc/1.0.0"
WIRE_VERSION = 1
HEADER = struct.Struct(">I")
MAX_REQUEST_ID = 2**64 - 1
MAX_TIMEOUT_MS = 3_600_000
"""No request may ask a peer to keep working on it for more than an hour."""


class WireError(ValueError):
    """Bytes that are not a valid message of this protocol.

    ``reason`` is one of ``too_large``, ``garbage``, ``not_a_map``,
    ``bad_field``, ``version``: short enough to label a metric.
    ``request_id`` is set when the message got far enough to have one, so the
    receiver can still answer it with an error instead of dropping the stream.
    """

    def __init__(self, reason: str, detail: str, request_id: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    timeout: float = 10.0
    """Seconds the caller will wait; the callee should not work on it for longer."""
    traceparent: str | None = None
    """The caller's W3C trace context, when the request belongs to a trace."""


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    result: Any = None
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> str:
        """The metrics label: ``ok``, or the error's code."""
        return "ok" if self.error is None else self.error.code.value


Message = Request | Reply


def _body(message: Message) -> dict[str, Any]:
    if isinstance(message, Request):
        timeout_ms = max(1, min(MAX_TIMEOUT_MS, round(message.timeout * 1000)))
        body = {"v": WIRE_VERSION, "k": "req", "id": message.id, "op": message.op, "a": message.args, "t": timeout_ms}
        if message.traceparent is not None:
            body["tp"] = message.traceparent
        return body
    if message.error is not None:
        return {"v": WIRE_VERSION, "k": "err", "id": message.id, "e": message.error.to_wire()}
    return {"v": WIRE_VERSION, "k": "res", "id": message.id, "r": message.result}


def encode(message: Message, max_bytes: int) -> bytes:
    """One frame (header + body).

    Raises ``TypeError`` if a value cannot be packed and ``WireError("too_large")``
    if the body would exceed ``max_bytes``: the sender learns before the peer does.
    """
    body: bytes = msgpack.packb(_body(message), use_bin_type=True)
    if len(body) > max_bytes:
        raise WireError("too_large", f"message of {len(body)} bytes exceeds the limit of {max_bytes}", message.id)
    return HEADER.pack(len(body)) + body


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "ext_hook": _reject_ext,
    # msgpack decodes extension type -1 (timestamps) itself, without calling ext_hook; an extension of at most
    # 0 bytes of data refuses timestamps too, so no extension type of any kind gets in.
    "max_ext_len": 0,
    "timestamp": 0,
}


def decode(body: bytes) -> Message:
    """Turn one frame body into a ``Request`` or ``Reply``, or raise ``WireError``."""
    try:
        wire = msgpack.unpackb(body, **_UNPACK_OPTIONS)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise WireError("garbage", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(wire, dict):
        raise WireError("not_a_map", f"top level is {type(wire).__name__}, expected a map")
    request_id = wire.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int) or not 0 <= request_id <= MAX_REQUEST_ID:
        raise WireError("bad_field", "id must be an unsigned 64-bit integer")
    version = wire.get("v")
    if version != WIRE_VERSION:
        raise WireError("version", f"message version {version!r:.20} is not {WIRE_VERSION}", request_id)
    kind = wire.get("k")
    if kind == "req":
        return _decode_request(wire, request_id)
    if kind == "res":
        return Reply(request_id, result=wire.get("r"))
    if kind == "err":
        raw = wire.get("e")
        if not isinstance(raw, dict):
            raise WireError("bad_field", "e must be a map", request_id)
        return Reply(request_id, error=ErrorInfo.from_wire(raw))
    raise WireError("bad_field", f"unknown kind {kind!r:.40}", request_id)


def _decode_request(wire: dict[str, Any], request_id: int) -> Request:
    op = wire.get("op")
    if not isinstance(op, str) or not op or len(op) > 128:
        raise WireError("bad_field", "op must be a non-empty string of at most 128 characters", request_id)
    args = wire.get("a", {})
    if not isinstance(args, dict):
        raise WireError("bad_field", "a must be a map", request_id)
    timeout_ms = wire.get("t")
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise WireError("bad_field", f"t must be milliseconds from 1 to {MAX_TIMEOUT_MS}", request_id)
    traceparent = wire.get("tp")
    if not isinstance(traceparent, str) or not 0 < len(traceparent) <= MAX_TRACEPARENT:
        traceparent = None  # advisory: a bad one starts a new trace on this side, it fails no request
    return Request(request_id, op, args, timeout_ms / 1000, traceparent)


def error_reply(request_id: int, code: ErrorCode, message: str, data: Any = None) -> Reply:
    return Reply(request_id, error=ErrorInfo(code, message, data))


class FrameReader:
    """Reassembles frames from the arbitrary chunks a stream delivers.

    A header announcing more than ``max_bytes`` raises ``WireError("too_large")``
    at once, before the body arrives, so an oversize message never occupies
    memory; the caller resets the stream.  ``buffered`` is what an unfinished
    frame holds now (the caller charges it to the node's budget and times it):
    the body's parts are kept as they came and joined once, when the last one
    arrives, so a large frame is never copied while it grows.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._head = b""
        self._parts: list[bytes] = []
        self._have = 0
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress: its body so far (or the part of a header that came)."""
        return len(self._head) + self._have

    @property
    def in_frame(self) -> bool:
        """Whether a frame has begun and not finished (a header alone counts)."""
        return bool(self._head) or self._need is not None

    def feed(self, data: bytes) -> list[bytes]:
        bodies: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._need is None:
                missing = HEADER.size - len(self._head)
                self._head += bytes(view[:missing])
                view = view[missing:]
                if len(self._head) < HEADER.size:
                    break
                (length,) = HEADER.unpack(self._head)
                if length > self._max:
                    raise WireError("too_large", f"frame of {length} bytes announced; the limit is {self._max}")
                self._head = b""
                self._need = length
            take = min(self._need - self._have, len(view))
            if take:
                self._parts.append(bytes(view[:take]))
                self._have += take
                view = view[take:]
            if self._have == self._need:
                bodies.append(self._parts[0] if len(self._parts) == 1 else b"".join(self._parts))
                self._parts = []
                self._have = 0
                self._need = None
        return bodies
