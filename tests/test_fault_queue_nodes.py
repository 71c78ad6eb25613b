"""Faults under load for the task queue: a shorter run of ``bench/fault_queue_nodes.py`` with assertions.

Three sidecars (a owns the tasks, a, b and c run them) while a submitter keeps adding tasks: ``kill -9``
of a worker and of the submitting node, a network partition of a worker, and a SIGTERM of a worker under
load, which must exit 0 and hand back what it could not finish.  Then, at the owner's database: nothing
lost, nothing twice.  The partition is a cut cable: each node in its own network namespace, the worker's
switch port down while the worker keeps running.  That needs root; without it the test skips (SIGSTOP
would be a frozen node, another fault), and under CI=true it fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fault_queue_nodes import Fault, print_report, run
from bench.netns import NetnsLab
from tests.ci import cannot_run

pytestmark = pytest.mark.e2e

FAULTS = (
    Fault("kill9", "b", 1.0),
    Fault("sigterm", "c", 0.5),
    Fault("kill9", "a", 1.0),
    Fault("partition", "b", 3.0),
)


def test_no_accepted_task_is_lost_or_finished_twice_through_kills_a_partition_and_a_sigterm(tmp_path: Path) -> None:
    why_not = NetnsLab.available()
    if why_not is not None:
        cannot_run(f"a partition needs network namespaces: {why_not}")
    result = run(tmp_path, tasks=300, faults=FAULTS, lease_s=2.0, grace_s=0.3, settle_s=2.0, drain_timeout=120)
    print_report(result)
    assert result["partition_by"] == "netns"
    [partition] = [fault for fault in result["faults"] if fault["node"] == "b" and fault["kind"] == "partition"]
    # while it lasted: b ran on (not stopped), inside its own namespace, whose only cable was unplugged
    assert partition["cut"]["process_state"] in ("R", "S", "D"), partition
    assert partition["cut"]["in_own_namespace"] is True and partition["cut"]["port"] == "DOWN", partition
    assert result["accepted"] == result["stored"] == result["results_recorded"] == 300
    assert result["lost"] == 0 and result["duplicate_rows"] == 0 and result["wrong_results"] == 0, result
    # every recorded result came from an execution that really ran to its end, with the attempt it was leased
    assert result["recorded_result_without_its_execution"] == 0, result
    assert result["executions_to_the_end"] >= 300
    assert result["integrity_check"] == "ok"
    assert (result["kills"], result["sigterms"], result["partitions"]) == (2, 1, 1)
    [sigterm] = [fault for fault in result["faults"] if fault["kind"] == "sigterm"]
    assert sigterm["caught_running"] > 0 and sigterm["exit_code"] == 0, sigterm  # a graceful stop under load: 0
    assert len({peer for peer in result["executed_by"]}) == 3, result["executed_by"]  # every node ran some
