"""``make test-deploy``'s tests: real containers (podman) and the systemd units' commands."""

from __future__ import annotations

import sys
from pathlib import Path

# harness.py sits beside the tests; the main suite's helpers (tests/procs.py) are under the root.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
