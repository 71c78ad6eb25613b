"""Stalled 4 MiB frames from several peer ids: the sidecar's memory stays bounded and comes back.

Four py-libp2p peers with fresh keys (strangers: the node reads a frame before any op is looked at) each open
16 streams of our protocol and announce a 4 MiB frame on every one, sending all of it but the last byte
(``bench/stalled_frames.py``).  With default settings the node holds at most 8 MiB of unfinished messages per
peer and 32 MiB in all, resets the streams past that at once, resets the ones it holds 10 s after their first
byte, and trims its heap once they are gone.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.stalled_frames import Sampler, attack
from tests.procs import http_json, make_identity, running, sidecar_proc

PEERS, STREAMS = 4, 16


def metric(admin_port: int, prefix: str) -> float:
    _, text = http_json("GET", f"http://127.0.0.1:{admin_port}/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_stalled_frames_hold_bounded_memory_are_reset_in_time_and_the_memory_comes_back(tmp_path: Path) -> None:
    sidecar = sidecar_proc(tmp_path, SIDECAR_LOG_LEVEL="info")
    peer_id = make_identity(sidecar.extra["data_dir"])
    target = f"/ip4/127.0.0.1/tcp/{sidecar.extra['p2p_port']}/p2p/{peer_id}"
    with running(sidecar), Sampler(sidecar.pid) as sampler:
        time.sleep(2.0)
        baseline = sampler.median(time.monotonic() - 1.5, time.monotonic())
        started = time.monotonic()
        result = attack(target, peers=PEERS, streams=STREAMS, hold=14.0)
        ended = time.monotonic()
        time.sleep(5.0)  # the trimmer looks every 2 s
        after = sampler.median(time.monotonic() - 1.0, time.monotonic())
        peak = sampler.peak(started, ended)
        over_budget = metric(sidecar.extra["admin_port"], 'sidecar_p2p_protocol_errors_total{reason="over_budget"}')
        too_slow = metric(sidecar.extra["admin_port"], 'sidecar_p2p_protocol_errors_total{reason="too_slow"}')
        held_now = metric(sidecar.extra["admin_port"], "sidecar_p2p_partial_frame_bytes")
    summary = f"RSS {baseline:.0f} -> peak {peak:.0f} -> {after:.0f} MiB; {result}"
    assert peak - baseline < 64, summary
    # every stream was ended by the node, none later than the 10 s frame deadline (plus scheduling slack)
    assert result["streams"] == PEERS * STREAMS and result["open_at_end"] == 0, summary
    assert result["ended_by_node"] == PEERS * STREAMS, summary
    assert max(result["held_s"]) < 13.0, summary
    # the ones it held: two 4 MiB frames per peer (8 MiB each), the rest reset at once over the budget
    assert result["outcomes"].get("sent_all_but_one_byte") == 2 * PEERS, summary
    assert statistics.median(result["held_s"]) < 5.0, summary
    assert over_budget >= PEERS * (STREAMS - 2) and too_slow >= 2 * PEERS, (over_budget, too_slow)
    assert held_now == 0
    # and the memory came back once they were gone (glibc keeps freed heap until malloc_trim)
    assert after - baseline < 16, summary
    # one warning per peer per 10 s, not one per stream
    warnings = [line for line in sidecar.log_tail(2000).splitlines() if "not our protocol" in line]
    assert 1 <= len(warnings) <= PEERS * 3, warnings
