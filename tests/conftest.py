"""Shared fixtures: a gateway + sidecar pair running as real processes on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, gateway_proc, running, sidecar_proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    """One sidecar and one gateway bridged over tcp://, ready (gateway /health/ready is 200)."""
    tmp: Path = tmp_path_factory.mktemp("stack")
    sidecar = sidecar_proc(tmp)
    gateway = gateway_proc(tmp, endpoint=sidecar.extra["endpoint"])
    with running(sidecar, gateway):
        gateway.health_url = gateway.extra["url"] + "/health/ready"
        gateway.wait_healthy(30)
        yield gateway, sidecar


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
