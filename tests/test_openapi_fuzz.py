"""Schemathesis against the gateway's own OpenAPI document: no 5xx faults, every answer as documented.

A bounded run (50 examples per operation and phase, about 10 s) against a real gateway and sidecar, with
every check schemathesis has: server errors, undocumented status codes and content types, responses that
do not match their schema, schema-violating requests accepted, unsupported methods.  Settings it needs
(what "valid" means for the generic /tools/execute operation) are in tests/schemathesis.toml.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT, Proc, base_env, gateway_proc, http_json, running, sidecar_proc, wait_for

pytestmark = pytest.mark.e2e
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    sidecar = sidecar_proc(tmp, SIDECAR_LOG_LEVEL="warning")
    # p2p_echo takes delay_ms up to a minute; the cap keeps each such example to a second (504, documented)
    gateway = gateway_proc(tmp, endpoint=sidecar.extra["endpoint"], GATEWAY_CALL_TIMEOUT_CAP="1")
    with running(sidecar, gateway):
        wait_for(lambda: http_json("GET", gateway.extra["url"] + "/health/ready")[0] == 200, 15, what="ready")
        yield gateway, sidecar


def test_schemathesis_finds_no_faults(fuzz_stack: tuple[Proc, Proc], tmp_path: Path) -> None:
    gateway, sidecar = fuzz_stack
    command = [
        sys.executable, "-m", "schemathesis.cli", "--no-color",
        "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
        "run", gateway.extra["url"] + "/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",  # the coverage phase is not thread-safe in this version (a hypothesis cache race)
        "--request-timeout", "10",
    ]  # fmt: skip
    # run from a scratch directory: schemathesis keeps a cache (.schemathesis/) in its working directory
    done = subprocess.run(command, cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=240)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert " passed" in done.stdout and "Runtime Error" not in done.stdout, report
    assert gateway.alive() and sidecar.alive()
    assert "Traceback" not in gateway.log_path.read_text(), gateway.log_tail(80)
