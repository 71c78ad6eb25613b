"""The bridge codec: round trips, and nothing but DecodeError escapes on any input."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_schema import ENVELOPE_VERSION, DecodeError, Envelope, ErrorCode, ErrorInfo, Kind, decode, encode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(
    kind=st.sampled_from(list(Kind)),
    call_id=st.text(min_size=1, max_size=20),
    tool=st.text(min_size=1, max_size=20),
    arguments=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    result=json_values,
    deadline=st.none() | st.floats(0, 2e9),
)
def test_round_trip(
    kind: Kind, call_id: str, tool: str, arguments: dict[str, Any], result: object, deadline: float | None
) -> None:
    envelope = Envelope(kind, id=call_id, tool=tool, arguments=arguments, result=result, deadline=deadline)
    assert decode(encode(envelope)) == envelope


def test_error_round_trip_and_unknown_codes_degrade() -> None:
    envelope = Envelope(Kind.ERROR, id="1", error=ErrorInfo(ErrorCode.BUSY, "full", {"n": 3}))
    assert decode(encode(envelope)) == envelope
    odd = msgpack.packb({"v": ENVELOPE_VERSION, "k": "error", "id": "2", "e": {"code": "martian", "message": 5}})
    assert decode(odd).error == ErrorInfo(ErrorCode.INTERNAL, "5")


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_decode_error(frame: bytes) -> None:
    try:
        decode(frame)
    except DecodeError as exc:
        assert exc.reason in {"too_large", "garbage", "not_a_map", "bad_field", "version"}


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["v", "k", "id", "dl", "t", "a", "r", "e", "tr", "b", "zz"]), json_values))
def test_structured_garbage_only_raises_decode_error(wire: dict[str, Any]) -> None:
    with contextlib.suppress(DecodeError):
        decode(msgpack.packb(wire))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "garbage"),
        (msgpack.packb([1]), "not_a_map"),
        (msgpack.packb({"v": 2, "k": "ping", "id": "a"}), "version"),
        (msgpack.packb({"v": 1, "k": "call", "id": "a"}), "bad_field"),
        (msgpack.packb({"v": 1, "k": "ping", "dl": "soon"}), "bad_field"),
        (msgpack.packb({"v": 1, "k": {"a": 1}}), "bad_field"),  # found by atheris: an unhashable kind
        (msgpack.packb({"v": 1, "k": ["call"]}), "bad_field"),
        (b"\x91" * 100_000, "garbage"),
    ],
)
def test_specific_rejections(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(frame)
    assert caught.value.reason == reason


def test_size_limit_and_version_carry_the_id() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"\x80" * 2000, max_bytes=1024)
    assert caught.value.reason == "too_large"
    with pytest.raises(DecodeError) as caught:
        decode(msgpack.packb({"v": 9, "k": "call", "id": "keep-me"}))
    assert caught.value.envelope_id == "keep-me" and caught.value.version == 9
