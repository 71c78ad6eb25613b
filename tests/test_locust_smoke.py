"""A few seconds of the locust file against real processes, so it cannot rot."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, base_env

pytestmark = pytest.mark.e2e


def test_locustfile_runs_clean(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--users", "3", "--spawn-rate", "3", "--duration", "4s",
         "--results", str(tmp_path)],
        cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 10 and int(total["Failure Count"]) == 0
    assert any("p2p_hash_content" in name for name in rows)
