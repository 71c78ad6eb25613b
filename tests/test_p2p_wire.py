"""The peer protocol codec: round trips, limits, and nothing but WireError escaping on any input."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_sidecar.node.wire import (
    HEADER,
    MAX_TIMEOUT_MS,
    FrameReader,
    Reply,
    Request,
    WireError,
    decode,
    encode,
    error_reply,
)
from shared_schema import ErrorCode

LIMIT = 64 * 1024

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def body(frame: bytes) -> bytes:
    (length,) = HEADER.unpack_from(frame)
    assert length == len(frame) - HEADER.size
    return frame[HEADER.size :]


@given(
    request_id=st.integers(0, 2**64 - 1),
    op=st.text(min_size=1, max_size=128),
    args=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    timeout=st.floats(0.001, 3600),
)
def test_request_round_trip(request_id: int, op: str, args: dict[str, Any], timeout: float) -> None:
    message = decode(body(encode(Request(request_id, op, args, timeout), LIMIT)))
    assert isinstance(message, Request)
    assert (message.id, message.op, message.args) == (request_id, op, args)
    assert message.timeout == pytest.approx(max(0.001, min(3600.0, round(timeout * 1000) / 1000)), abs=0.001)


@given(request_id=st.integers(0, 2**64 - 1), result=json_values)
def test_reply_round_trip(request_id: int, result: object) -> None:
    assert decode(body(encode(Reply(request_id, result=result), LIMIT))) == Reply(request_id, result=result)


def test_error_reply_round_trip() -> None:
    reply = error_reply(7, ErrorCode.FORBIDDEN, "not served", {"served": ["echo"]})
    assert decode(body(encode(reply, LIMIT))) == reply


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        decode(data)
    except WireError as exc:
        assert exc.reason in {"garbage", "not_a_map", "bad_field", "version"}


@settings(max_examples=300)
@given(json_values)
def test_decode_of_any_msgpack_value_raises_only_wire_error(value: object) -> None:
    with contextlib.suppress(WireError):
        decode(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_frame_reader_raises_only_wire_error(chunks: list[bytes]) -> None:
    reader = FrameReader(128)
    try:
        for chunk in chunks:
            for item in reader.feed(chunk):
                assert len(item) <= 128
    except WireError as exc:
        assert exc.reason == "too_large"


@given(st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_frame_reader_reassembles_any_split(cuts: list[int]) -> None:
    frames = [encode(Request(i, "ping", {"n": i}, 1.0), LIMIT) for i in range(5)]
    stream = b"".join(frames)
    reader = FrameReader(LIMIT)
    bodies: list[bytes] = []
    position = 0
    for cut in cuts * 20:
        if position >= len(stream):
            break
        bodies.extend(reader.feed(stream[position : position + cut]))
        position += cut
    bodies.extend(reader.feed(stream[position:]))
    assert [decode(item).id for item in bodies] == [0, 1, 2, 3, 4]
    assert reader.buffered == 0


def test_oversize_header_is_refused_before_the_body_arrives() -> None:
    reader = FrameReader(1024)
    with pytest.raises(WireError) as caught:
        reader.feed(struct.pack(">I", 1025))
    assert caught.value.reason == "too_large"


def test_encode_refuses_oversize_and_unpackable() -> None:
    with pytest.raises(WireError) as caught:
        encode(Reply(1, result="x" * 2000), 1024)
    assert caught.value.reason == "too_large" and caught.value.request_id == 1
    with pytest.raises(TypeError):
        encode(Reply(1, result=object()), 1024)


@pytest.mark.parametrize(
    ("wire", "reason", "has_id"),
    [
        ({"v": 1, "k": "req", "op": "ping", "t": 5}, "bad_field", False),
        ({"v": 1, "k": "req", "id": -1, "op": "ping", "t": 5}, "bad_field", False),
        ({"v": 1, "k": "req", "id": True, "op": "ping", "t": 5}, "bad_field", False),
        ({"v": 2, "k": "req", "id": 3, "op": "ping", "t": 5}, "version", True),
        ({"v": 1, "k": "req", "id": 3, "t": 5}, "bad_field", True),
        ({"v": 1, "k": "req", "id": 3, "op": "", "t": 5}, "bad_field", True),
        ({"v": 1, "k": "req", "id": 3, "op": "ping", "a": [1], "t": 5}, "bad_field", True),
        ({"v": 1, "k": "req", "id": 3, "op": "ping"}, "bad_field", True),
        ({"v": 1, "k": "req", "id": 3, "op": "ping", "t": 0}, "bad_field", True),
        ({"v": 1, "k": "req", "id": 3, "op": "ping", "t": MAX_TIMEOUT_MS + 1}, "bad_field", True),
        ({"v": 1, "k": "err", "id": 3, "e": "nope"}, "bad_field", True),
        ({"v": 1, "k": "what", "id": 3}, "bad_field", True),
    ],
)
def test_bad_fields_are_named_and_keep_the_id(wire: dict[str, Any], reason: str, has_id: bool) -> None:
    with pytest.raises(WireError) as caught:
        decode(msgpack.packb(wire))
    assert caught.value.reason == reason
    assert (caught.value.request_id is not None) == has_id


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", msgpack.packb([1, 2]), b"\x91" * 10_000, msgpack.packb({1: 2}), msgpack.ExtType(5, b"x").data],
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)


def test_extension_types_are_refused() -> None:
    with pytest.raises(WireError):
        decode(msgpack.packb({"v": 1, "k": "res", "id": 1, "r": msgpack.ExtType(3, b"abc")}))


def test_timestamps_are_refused_like_every_other_extension_type() -> None:
    # msgpack decodes extension type -1 (a timestamp) itself, without the ext hook; the codec refuses it too
    for value in (msgpack.Timestamp(5), msgpack.Timestamp(2**33, 7), msgpack.ExtType(3, b"")):
        with pytest.raises(WireError) as caught:
            decode(msgpack.packb({"v": 1, "k": "res", "id": 1, "r": value}))
        assert caught.value.reason == "garbage"
