"""A short coverage-guided fuzz run of the bridge codec with atheris (libFuzzer), seeded with real frames.

Hypothesis (tests/test_codec.py) explores structured inputs; libFuzzer mutates bytes guided by which
branches of the codec they reach.  The run is bounded (``RUNS`` inputs or ``SECONDS``, whichever first)
and happens in a subprocess, since libFuzzer ends its process when it is done.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from shared_schema import Envelope, ErrorCode, ErrorInfo, Kind, encode
from tests.procs import ROOT, base_env

pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only")

RUNS = 1_000_000
SECONDS = 10


def _seeds() -> list[bytes]:
    return [
        encode(Envelope(Kind.CALL, id="c1", deadline=time.time(), tool="p2p_echo", arguments={"message": "x"})),
        encode(Envelope(Kind.RESULT, id="c1", result={"a": [1, 2.5, None, True, "s"]})),
        encode(Envelope(Kind.ERROR, id="c2", error=ErrorInfo(ErrorCode.BUSY, "full", {"n": 1}))),
        encode(Envelope(Kind.CATALOG, body={"revision": "r", "tools": []})),
        encode(Envelope(Kind.PING)),
        msgpack.packb({"v": 9, "k": "call", "id": "v"}),
        b"\x91" * 64,
    ]


def test_atheris_finds_no_crash_in_the_codec(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(_seeds()):
        (corpus / f"seed-{index}").write_bytes(seed)
    command = [
        sys.executable, "-m", "tests.fuzz.codec_target",
        f"-runs={RUNS}", f"-max_total_time={SECONDS}", "-max_len=4096", "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/", str(corpus),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=120)
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, output
    assert "Done" in done.stderr, output  # libFuzzer's summary line: the run completed, no crash
    assert not list(tmp_path.glob("crash-*")), output
