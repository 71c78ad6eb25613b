"""An atheris (libFuzzer) target for the bridge codec; run by tests/test_codec_atheris.py.

    python -m tests.fuzz.codec_target -runs=20000 -max_total_time=10 [CORPUS_DIR]

The properties are the codec's contract: ``decode`` raises nothing but ``DecodeError`` (with one of
its fixed reasons) on any bytes, and whatever it accepts re-encodes to a frame that decodes to the
same envelope.  A violation raises, which libFuzzer reports as a crash with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["shared_schema"]):
    from shared_schema import DecodeError, decode, encode

REASONS = {"too_large", "garbage", "not_a_map", "bad_field", "version"}
MAX_BYTES = 64 * 1024


def test_one_input(data: bytes) -> None:
    try:
        envelope = decode(data, MAX_BYTES)
    except DecodeError as exc:
        if exc.reason not in REASONS:
            raise AssertionError(f"unexpected DecodeError reason {exc.reason!r}") from exc
        return
    frame = encode(envelope)
    if encode(decode(frame, len(frame))) != frame:
        raise AssertionError("decode(encode(envelope)) changed the envelope")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
