"""Three nodes in network namespaces on links with delay and loss: bootstrap, remote calls, tasks, workflows, liveness.

The short form of ``bench/slow_links.py`` (which has the figures in docs/benchmarks.md): a-b and a-c are 50 ms /
1% links, b-c a 200 ms / 5% one (``bench/linklab.py``), every setting the default.  It needs root for the
namespaces; without root it is skipped with the command to run instead, except under ``CI=true``, where
not being able to run it is a failure, as is being root and still unable to make namespaces.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.linklab import LinkLab
from bench.slow_links import run
from tests.ci import cannot_run

pytestmark = pytest.mark.e2e

GONE_TIMEOUT, PING_INTERVAL = 10.0, 2.0
"""The defaults: a peer unanswered for 10 s is gone; pings every 2 s (a ping waits at most 2 s)."""


@pytest.mark.timeout(600)
def test_three_nodes_on_delayed_lossy_links(tmp_path: Path) -> None:
    why_not = LinkLab.available()
    if why_not is not None:
        if os.geteuid() == 0:
            pytest.fail(f"the namespace scenario must run as root but cannot: {why_not}")
        cannot_run(f"{why_not}: run `sudo .venv/bin/python -m bench.slow_links` for this scenario")
    result = run(tmp_path, calls=15, tasks=40, pinned=8, workflow_count=2)
    print(result)
    assert result["bootstrap_s"] < 30, result
    calls = result["remote_calls_ms"]
    for name, rtt in (("a->b (50 ms, 1%)", 100), ("a->c (50 ms, 1%)", 100), ("b->c (200 ms, 5%)", 400)):
        assert calls[name]["failures"] == 0, calls[name]
        assert calls[name]["p50"] >= rtt * 0.95, (name, calls[name])  # the delay is real: a call takes a round trip
    b_id, c_id = result["peer_ids"]["b"], result["peer_ids"]["c"]
    remote = result["tasks"]["at a, placement remote"]
    assert remote["failed"] == 0 and set(remote["ran_on"]) == {b_id, c_id}, remote
    pinned = result["tasks"]["at b, pinned to c (200 ms, 5%)"]
    assert pinned["failed"] == 0 and pinned["ran_on"] == {c_id: 8}, pinned
    assert result["workflows_ms"]["completed"] == 2
    # lost packets and slow pings (some take over a second on the 5% link) never made a peer gone
    assert result["gone_before_faults"] == 0, result["pings"]
    # a node cut off, and one killed, are noticed within the gone timeout plus one ping's wait and some slack
    assert result["cut_b_seen_gone_by_a_s"] <= GONE_TIMEOUT + PING_INTERVAL + 3, result
    assert result["b_back_after_heal_s"] < 30 and result["mesh_back_after_heal_s"] < 60, result
    assert max(result["kill9_c_seen_gone_s"].values()) <= GONE_TIMEOUT + PING_INTERVAL + 3, result
    assert all(counts["dropped"] > 0 for counts in result["relay_counts"].values()), result["relay_counts"]
