"""The only encoder and the only decoder of bridge frames.

Wire form: one ZeroMQ frame holding a msgpack map with short keys

    v   envelope version (int)          k   kind (str)
    id  correlation id (str)            dl  deadline, epoch seconds (float)
    t   tool name (str)                 a   arguments (map)
    r   result (any msgpack value)      e   error {code, message, data?}
    tr  trace id (str)                  b   kind-specific body (map)
    tp  W3C traceparent of a call (str, optional; added without a version bump: older
        decoders ignore keys they do not know, and one that is not a short string is dropped)

Keys whose value is absent are omitted.  ``decode`` never lets a foreign
exception escape: anything it cannot turn into an ``Envelope`` raises
``DecodeError`` with a reason short enough for a log line and a metric label.
"""

from __future__ import annotations

from typing import Any

import msgpack

from shared_schema.envelope import ENVELOPE_VERSION, MAX_TRACEPARENT, Envelope, Kind
from shared_schema.errors import ErrorInfo

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024


class DecodeError(ValueError):
    """A frame that is not a valid envelope.

    ``reason`` is one of a small fixed set (``too_large``, ``garbage``,
    ``not_a_map``, ``bad_field``, ``version``) so it can label a metric;
    ``envelope_id`` is the correlation id when the frame got far enough to
    have one, so the receiver can still answer the sender with an error.
    """

    def __init__(self, reason: str, detail: str, envelope_id: str | None = None, version: Any = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.envelope_id = envelope_id
        self.version = version


_KINDS = {kind.value: kind for kind in Kind}


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope.  Raises ``TypeError`` if a result is not msgpack-able."""
    wire: dict[str, Any] = {"v": envelope.version, "k": envelope.kind.value}
    if envelope.id:
        wire["id"] = envelope.id
    if envelope.deadline is not None:
        wire["dl"] = envelope.deadline
    if envelope.tool is not None:
        wire["t"] = envelope.tool
    if envelope.arguments is not None:
        wire["a"] = envelope.arguments
    if envelope.result is not None:
        wire["r"] = envelope.result
    if envelope.error is not None:
        wire["e"] = envelope.error.to_wire()
    if envelope.trace_id is not None:
        wire["tr"] = envelope.trace_id
    if envelope.body is not None:
        wire["b"] = envelope.body
    if envelope.traceparent is not None:
        wire["tp"] = envelope.traceparent
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return packed


def _field(wire: dict[str, Any], key: str, types: tuple[type, ...], expected: str, envelope_id: str) -> Any:
    """An optional field of the wire map, checked for type (bools are not numbers here)."""
    value = wire.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise DecodeError("bad_field", f"{key} must be {expected}", envelope_id=envelope_id or None)
    return value


def decode(frame: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Envelope:
    """Parse one frame into an ``Envelope`` or raise ``DecodeError``."""
    if len(frame) > max_bytes:
        raise DecodeError("too_large", f"frame of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        wire = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise DecodeError("garbage", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(wire, dict):
        raise DecodeError("not_a_map", f"top level is {type(wire).__name__}, expected a map")

    envelope_id = wire.get("id", "")
    if not isinstance(envelope_id, str):
        raise DecodeError("bad_field", "id must be a string")
    version = wire.get("v")
    if version != ENVELOPE_VERSION:
        raise DecodeError(
            "version",
            f"envelope version {version!r} is not supported (this side speaks {ENVELOPE_VERSION})",
            envelope_id=envelope_id or None,
            version=version,
        )
    raw_kind = wire.get("k")
    kind = _KINDS.get(raw_kind) if isinstance(raw_kind, str) else None  # a map or list here is unhashable
    if kind is None:
        raise DecodeError("bad_field", f"unknown kind {wire.get('k')!r:.50}", envelope_id=envelope_id or None)

    deadline = _field(wire, "dl", (int, float), "a number", envelope_id)
    tool = _field(wire, "t", (str,), "a string", envelope_id)
    arguments = _field(wire, "a", (dict,), "a map", envelope_id)
    trace_id = _field(wire, "tr", (str,), "a string", envelope_id)
    body = _field(wire, "b", (dict,), "a map", envelope_id)
    traceparent = wire.get("tp")
    if not isinstance(traceparent, str) or not 0 < len(traceparent) <= MAX_TRACEPARENT:
        traceparent = None  # trace context is advisory: a bad one starts a new trace, it fails no call
    raw_error = wire.get("e")
    error = ErrorInfo.from_wire(raw_error) if raw_error is not None else None

    if kind is Kind.CALL and (tool is None or not envelope_id):
        raise DecodeError("bad_field", "a call needs an id and a tool", envelope_id=envelope_id or None)

    return Envelope(
        kind=kind,
        id=envelope_id,
        deadline=float(deadline) if deadline is not None else None,
        tool=tool,
        arguments=arguments,
        result=wire.get("r"),
        error=error,
        trace_id=trace_id,
        body=body,
        traceparent=traceparent,
    )
