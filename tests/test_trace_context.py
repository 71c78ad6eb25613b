"""Trace context on the wire: an optional field on the bridge envelope and on the peer protocol's request.

Neither needed a version bump: a decoder ignores keys it does not know (so an
older gateway, sidecar or peer is served as before), and a field that is not
a short string is dropped rather than failing the call.
"""

from __future__ import annotations

import msgpack
import pytest

from p2p_sidecar.node import wire
from shared_schema import Envelope, Kind, decode, encode, tracing
from shared_schema.envelope import ENVELOPE_VERSION

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_envelope_carries_a_traceparent_and_older_frames_still_decode() -> None:
    call = Envelope(Kind.CALL, id="c1", tool="echo", arguments={}, traceparent=TRACEPARENT)
    frame = encode(call)
    assert decode(frame) == call
    wire_map = msgpack.unpackb(frame)
    assert wire_map["tp"] == TRACEPARENT
    # what an older gateway sends (no "tp") decodes to no trace context
    old = msgpack.packb({"v": ENVELOPE_VERSION, "k": "call", "id": "c1", "t": "echo", "a": {}})
    assert decode(old).traceparent is None
    # the field is the only one added: a decoder that reads the older keys reads the same call
    assert set(wire_map) - {"v", "k", "id", "t", "a", "dl", "r", "e", "tr", "b"} == {"tp"}


@pytest.mark.parametrize("bad", [5, ["x"], {"a": 1}, "", "x" * 257, b"00-bytes"])
def test_a_bad_envelope_traceparent_is_dropped_not_an_error(bad: object) -> None:
    frame = msgpack.packb({"v": ENVELOPE_VERSION, "k": "call", "id": "c1", "t": "echo", "tp": bad})
    assert decode(frame).traceparent is None


def test_the_peer_request_carries_a_traceparent_and_older_requests_still_decode() -> None:
    request = wire.Request(7, "call_tool", {"tool": "echo"}, 2.0, TRACEPARENT)
    frame = wire.encode(request, 1 << 20)
    body = frame[wire.HEADER.size :]
    assert wire.decode(body) == request
    assert set(msgpack.unpackb(body)) == {"v", "k", "id", "op", "a", "t", "tp"}
    untraced = wire.encode(wire.Request(8, "ping", {}, 1.0), 1 << 20)[wire.HEADER.size :]
    assert "tp" not in msgpack.unpackb(untraced)  # background traffic carries nothing extra
    decoded = wire.decode(untraced)
    assert isinstance(decoded, wire.Request) and decoded.traceparent is None
    for bad in (3, "", "y" * 300, [1]):
        raw = msgpack.packb({"v": 1, "k": "req", "id": 9, "op": "ping", "a": {}, "t": 100, "tp": bad})
        decoded = wire.decode(raw)
        assert isinstance(decoded, wire.Request) and decoded.traceparent is None


def test_parent_from_accepts_only_valid_w3c_trace_context() -> None:
    parent = tracing.parent_from(TRACEPARENT)
    assert parent is not None
    from opentelemetry import trace

    span_context = trace.get_current_span(parent).get_span_context()
    assert format(span_context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_context.is_remote
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", 42, "z" * 300):
        assert tracing.parent_from(bad) is None


def test_with_export_off_nothing_is_recorded_but_the_callers_context_passes_through() -> None:
    assert not tracing.enabled()
    with tracing.served("tool x", traceparent=TRACEPARENT, call_id="c9") as span:
        assert span is None
        assert tracing.CALL_ID.get() == "c9"
        assert tracing.current_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
        with tracing.outgoing("bridge call y") as sent:
            assert sent == TRACEPARENT  # passed on unchanged: this process adds no span
    assert tracing.CALL_ID.get() is None and tracing.current_trace_id() is None
    with tracing.outgoing("p2p ping") as sent:
        assert sent is None  # outside any trace nothing is sent
