"""Bad frames sent straight at the bridge sockets: dropped, counted, and the processes keep serving."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from shared_schema import Envelope, Kind, decode, encode
from tests.procs import Proc, free_port, gateway_proc, http_json, running, wait_for
from tests.zmq_peer import connect_when_ready

pytestmark = pytest.mark.e2e


def _metric(url: str, name: str) -> float:
    _, text = http_json("GET", url)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sidecar_survives_garbage_wrong_version_and_oversize(stack: tuple[Proc, Proc]) -> None:
    gateway, sidecar = stack
    metrics_url = f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics"
    dropped_before = _metric(metrics_url, "sidecar_bridge_frames_dropped_total")
    context = zmq.Context()
    attacker = context.socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.setsockopt(zmq.RCVTIMEO, 3000)
    try:
        connect_when_ready(attacker, sidecar.extra["endpoint"])
        frames = [
            b"",
            os.urandom(64),
            b"\xc1\xc1\xc1",
            msgpack.packb([1, 2, 3]),
            msgpack.packb({"v": 1, "k": "call"}),  # a call without id or tool
            msgpack.packb({"v": 1, "k": "bogus", "id": "x"}),
            encode(Envelope(Kind.CALL, id="t", tool="p2p_echo", arguments={"message": "x"}))[:-3],  # truncated
            b"\x91" * 10_000,  # nesting bomb
            os.urandom(5 * 1024 * 1024),  # over the 4 MiB frame limit
        ]
        for frame in frames:
            attacker.send(frame)
        attacker.send_multipart([b"two", b"frames"])

        # another envelope version still gets an answer that says why
        attacker.send(msgpack.packb({"v": 99, "k": "call", "id": "vx", "t": "p2p_echo", "a": {}}))
        reply = decode(attacker.recv())
        assert reply.kind is Kind.ERROR and reply.id == "vx" and reply.outcome == "version_mismatch"

        # a well-formed call from the same socket still works
        call = Envelope(Kind.CALL, id="ok1", deadline=time.time() + 5, tool="p2p_echo", arguments={"message": "hi"})
        attacker.send(encode(call))
        reply = decode(attacker.recv())
        assert reply.kind is Kind.RESULT and reply.result == {"message": "hi", "delay_ms": 0}
        # an expired deadline is dropped, unanswered
        attacker.send(encode(Envelope(Kind.CALL, id="old", deadline=time.time() - 1, tool="p2p_echo", arguments={})))
    finally:
        attacker.close()
        context.term()

    assert sidecar.alive()
    status, body = http_json("POST", gateway.extra["url"] + "/tools/execute/p2p_echo", {"message": "still here"})
    assert status == 200 and body["result"]["message"] == "still here"
    dropped = wait_for(
        lambda: (d := _metric(metrics_url, "sidecar_bridge_frames_dropped_total") - dropped_before) >= 10 and d,
        5,
        what="drops counted",
    )
    assert dropped >= 10


def test_gateway_survives_a_rogue_sidecar(tmp_path: Path) -> None:
    """A 'sidecar' that answers the HELLO with garbage first, then a real catalog: the gateway copes."""
    port = free_port()
    context = zmq.Context()
    rogue = context.socket(zmq.ROUTER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.setsockopt(zmq.RCVTIMEO, 5000)
    rogue.bind(f"tcp://127.0.0.1:{port}")
    gateway = gateway_proc(tmp_path, endpoint=f"tcp://127.0.0.1:{port}")
    try:
        with running(gateway):
            identity, hello = rogue.recv_multipart()
            assert decode(hello).kind is Kind.HELLO
            for junk in [b"junk", msgpack.packb({"v": 7, "k": "result", "id": "z"}), os.urandom(100)]:
                rogue.send_multipart([identity, junk])
            rogue.send_multipart([identity, b"a", b"b"])
            catalog = {"revision": "r1", "tools": [{"name": "bad entry"}, _spec("rogue_tool")]}
            rogue.send_multipart([identity, encode(Envelope(Kind.CATALOG, body=catalog))])
            url = gateway.extra["url"]
            wait_for(lambda: http_json("GET", url + "/health/ready")[0] == 200, 10, what="ready")
            names = {tool["name"] for tool in http_json("GET", url + "/tools/list")[1]["tools"]}
            assert "rogue_tool" in names
            _, text = http_json("GET", url + "/metrics")
            assert 'gateway_bridge_frames_dropped_total{reason="garbage"}' in text
            assert 'gateway_bridge_frames_dropped_total{reason="bad_catalog_entry"}' in text
            assert http_json("POST", url + "/tools/execute/echo", {"message": "fine"})[0] == 200
    finally:
        rogue.close()
        context.term()


def _spec(name: str) -> dict[str, Any]:
    return {"name": name, "description": "", "input_schema": {"type": "object"}, "metadata": {"runtime": "trio"}}
