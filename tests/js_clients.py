"""Run the JavaScript clients in tests/js (installed by `make js-tools`) with the project's own Node 22."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.procs import ROOT

JS_DIR = ROOT / "tests" / "js"
CONFORMANCE = JS_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
FIXTURE_TOOLS = ROOT / "conformance_tools"


def node_bin_dir() -> Path:
    """The bin directory of Node 22 (scripts/ensure-node.sh installs it on first use)."""
    out = subprocess.run([str(ROOT / "scripts" / "ensure-node.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{node_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure_installed() -> None:
    if not CONFORMANCE.is_file():
        subprocess.run(["make", "-s", "js-tools"], cwd=ROOT, check=True)


def run_node(
    script: Path, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``node script args`` in tests/js; returns the finished process (stdout and stderr captured)."""
    ensure_installed()
    return subprocess.run(
        ["node", str(script), *args],
        cwd=JS_DIR,
        env={**node_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
