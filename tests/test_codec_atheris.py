"""Short coverage-guided fuzz runs of both codecs with atheris (libFuzzer), seeded with real frames.

The bridge codec (``shared_schema``) and the peer-protocol codec (``p2p_sidecar/node/wire.py``).
Hypothesis (tests/test_codec.py, tests/test_p2p_wire.py) explores structured inputs; libFuzzer mutates
bytes guided by which branches of the codec they reach.  Each run is bounded (``RUNS`` inputs or its
time, whichever first) and happens in a subprocess, since libFuzzer ends its process when it is done.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import msgpack

from shared_schema import Envelope, ErrorCode, ErrorInfo, Kind, encode
from tests.ci import require_module
from tests.procs import ROOT, base_env

require_module("atheris", "atheris has wheels for Linux x86_64 only")

RUNS = 1_000_000
SECONDS = 10
P2P_SECONDS = 5


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


def _fuzz(tmp_path: Path, target: str, seeds: list[bytes], seconds: int) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(seeds):
        (corpus / f"seed-{index}").write_bytes(seed)
    command = [
        sys.executable, "-m", target,
        f"-runs={RUNS}", f"-max_total_time={seconds}", "-max_len=4096", "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/", str(corpus),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=120)
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, output
    assert "Done" in done.stderr, output  # libFuzzer's summary line: the run completed, no crash
    assert not list(tmp_path.glob("crash-*")), output


def test_atheris_finds_no_crash_in_the_codec(tmp_path: Path) -> None:
    _fuzz(tmp_path, "tests.fuzz.codec_target", _seeds(), SECONDS)


def _p2p_seeds() -> list[bytes]:
    from p2p_sidecar.node.wire import Reply, Request, error_reply
    from p2p_sidecar.node.wire import encode as wire_encode

    frames = [
        wire_encode(Request(1, "hello", {"addrs": ["/ip4/127.0.0.1/tcp/1"], "auth": {"nonce": "ab"}}, 10.0), 1 << 20),
        wire_encode(Request(2, "queue.claim", {"worker": "w", "boot": "b", "types": ["echo"], "max": 8}, 5.0), 1 << 20),
        wire_encode(Reply(3, result={"tasks": [{"task_id": "t", "payload": [1, 2.5, None]}]}), 1 << 20),
        wire_encode(error_reply(4, ErrorCode.FORBIDDEN, "not a member", {"reason": "no_secret_proof"}), 1 << 20),
        msgpack.packb({"v": 2, "k": "req", "id": 5}),
    ]
    # the first byte of an input picks the chunk size; the rest is a stream of frames (or one body)
    return [b"\x07" + frame for frame in frames] + [b"\x00" + frame[4:] for frame in frames]


def test_atheris_finds_no_crash_in_the_peer_protocol_codec(tmp_path: Path) -> None:
    _fuzz(tmp_path, "tests.fuzz.p2p_wire_target", _p2p_seeds(), P2P_SECONDS)
