"""An atheris (libFuzzer) target for the peer-protocol codec; run by tests/test_codec_atheris.py.

    python -m tests.fuzz.p2p_wire_target -runs=20000 -max_total_time=10 [CORPUS_DIR]

The properties are the codec's contract (``p2p_sidecar/node/wire.py``): bytes fed to ``FrameReader``
in any chunks give frame bodies or ``WireError("too_large")``; ``decode`` raises nothing but
``WireError`` with one of its fixed reasons; and whatever it accepts re-encodes to a frame that decodes
to the same message.  A violation raises, which libFuzzer reports as a crash with the input.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["p2p_sidecar.node.wire", "shared_schema"]):
    from p2p_sidecar.node.wire import FrameReader, WireError, decode, encode

REASONS = {"too_large", "garbage", "not_a_map", "bad_field", "version"}
MAX_BYTES = 64 * 1024


def check_body(body: bytes) -> None:
    try:
        message = decode(body)
    except WireError as exc:
        if exc.reason not in REASONS:
            raise AssertionError(f"unexpected WireError reason {exc.reason!r}") from exc
        return
    frame = encode(message, 1 << 24)
    if encode(decode(frame[4:]), 1 << 24) != frame:
        raise AssertionError("decode(encode(message)) changed the message")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    # the first byte picks how the rest arrives: as one frame body, or as a byte stream in chunks of that size
    split, rest = data[0], data[1:]
    check_body(rest)
    reader = FrameReader(MAX_BYTES)
    step = split + 1
    try:
        for start in range(0, len(rest), step):
            for body in reader.feed(rest[start : start + step]):
                check_body(body)
    except WireError as exc:
        if exc.reason != "too_large":
            raise AssertionError(f"FrameReader raised {exc.reason!r}") from exc


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
