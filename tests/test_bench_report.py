"""docs/benchmarks.md's prose is generated from the run it reports: the sentences about tails and about what
limits throughput say what that run measured, and change with it."""

from __future__ import annotations

from typing import Any

from bench.report import _bridge_or_not, queue_ceiling, tail_note


def row(face: str, clients: int, local: tuple[float, float, float], p2p: tuple[float, float, float]) -> dict[str, Any]:
    def side(p50: float, p99: float, rps: float) -> dict[str, float]:
        return {"p50_ms": p50, "p99_ms": p99, "rps": rps}

    return {"face": face, "clients": clients, "local": side(*local), "p2p": side(*p2p)}


def test_the_tail_sentence_is_this_runs_spread_and_only_points_further_when_the_tail_is_wide() -> None:
    calm = [
        row("rest", 16, (3.0, 6.0, 4000), (3.0, 7.5, 4100)),
        row("rest", 64, (12.0, 24.0, 4800), (12.0, 30.0, 4900)),
    ]
    note = tail_note(calm)
    assert note.startswith("At 64 clients p99 was 2.0x to 2.5x p50") and "P2P tool on the rest face" in note
    assert "tail_check" not in note and "480" not in note
    stormy = [*calm, row("mcp", 64, (25.0, 600.0, 2400), (25.0, 160.0, 2300))]
    note = tail_note(stormy)
    assert "24.0x" in note and "p99 600.00 ms" in note and "tail_check" in note


def test_what_limits_throughput_is_said_only_as_far_as_section_1_measured_it() -> None:
    even = {"bridge_cost": [row("rest", 16, (3.5, 7.0, 4181), (3.5, 7.5, 4224))], "load_cpu_cores": {"gateway": 0.96}}
    assert "not what limits it" in _bridge_or_not(even) and "0.96 cores" in _bridge_or_not(even)
    apart = {"bridge_cost": [row("rest", 16, (3.0, 6.0, 6000), (4.0, 8.0, 4000))]}
    assert "not what limits it" not in _bridge_or_not(apart) and "cores" not in _bridge_or_not(apart)


def test_the_queue_ceiling_is_explained_from_the_runs_cpu_only_when_the_target_was_missed() -> None:
    def scenario(rate: float, a: float, b: float, c: float) -> dict[str, Any]:
        return {"completed_per_s": rate, "sidecar_cpu_ms_per_task": {"a": a, "b": b, "c": c}}

    slow = {
        "queue_network": {
            "throughput": {"a_any": scenario(5000, 0.2, 0.03, 0.03), "a_remote": scenario(2400, 0.3, 0.2, 0.1)}
        }
    }
    text = "\n".join(queue_ceiling(slow, cores=2))
    assert (
        'placement `remote` (every task over the network)", at 2,400 tasks/s' in text
        and "0.300 + 0.200 + 0.100 = 0.600 ms" in text
    )
    assert "at most 3,333 such tasks/s" in text and "under 0.50 ms per task" in text
    near = {"queue_network": {"throughput": {"a_remote": scenario(3700, 0.2, 0.1, 0.1)}}}
    text = "\n".join(queue_ceiling(near, cores=2))
    assert "would fit 5,000 tasks/s" in text and "Not met in this run" in text and "at most" not in text
    fast = {
        "queue_network": {
            "throughput": {"a_any": scenario(5000, 0.2, 0.03, 0.03), "a_remote": scenario(4100, 0.2, 0.1, 0.1)}
        }
    }
    assert queue_ceiling(fast, cores=2) == []
