"""Scenario 6 (part): resident memory of each process, and time from start to /health/ready."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.loadgen import rss_mb
from bench.stack import wait_ready_seconds
from tests.procs import gateway_proc, sidecar_proc


def startup(tmp: Path, runs: int = 3) -> dict[str, float]:
    """Start sidecar and gateway together, as `make run` does; seconds until the gateway is ready."""
    ready, gateway_rss, sidecar_rss = [], [], []
    for index in range(runs):
        sidecar = sidecar_proc(tmp, f"sc-start{index}", SIDECAR_LOG_LEVEL="warning")
        gateway = gateway_proc(tmp, f"gw-start{index}", endpoint=sidecar.extra["endpoint"], GATEWAY_LOG_LEVEL="warning")
        started = time.monotonic()
        sidecar.start(wait=False)
        gateway.start(wait=False)
        try:
            ready.append(wait_ready_seconds(started, gateway.extra["url"]))
            time.sleep(1.0)
            gateway_rss.append(rss_mb(gateway.pid))
            sidecar_rss.append(rss_mb(sidecar.pid))
        finally:
            gateway.stop()
            sidecar.stop()
    return {
        "ready_s": statistics.median(ready),
        "gateway_idle_rss_mb": statistics.median(gateway_rss),
        "sidecar_idle_rss_mb": statistics.median(sidecar_rss),
    }
