"""`make loadtest`: start a gateway and a sidecar on free ports, run locust headless against them.

    .venv/bin/python -m loadtests.run [--users 20] [--spawn-rate 5] [--duration 30s]

Results (CSV and HTML) land in loadtests/results/, which git ignores.  To load a
deployed gateway instead, run locust directly (see the README).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import bench_stack  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--results", default=str(ROOT / "loadtests" / "results"))
    args = parser.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mcp-p2p-load-") as tmp, bench_stack(Path(tmp)) as (gateway, _sidecar):
        command = [
            sys.executable, "-m", "locust",
            "-f", str(ROOT / "loadtests" / "locustfile.py"),
            "--headless", "--only-summary",
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration,
            "--host", gateway.extra["url"],
            "--csv", str(results / "run"), "--html", str(results / "report.html"),
            "--exit-code-on-error", "1",
        ]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
