"""Run an older version of the code beside this one, for before/after figures measured in the same run.

``export(ref, dest)`` writes the tree of a git ref (``main``, a commit) into ``dest`` with ``git archive``
(nothing in the repository changes); ``in_tree(proc, dest)`` makes a ``tests.procs.Proc`` start from there,
so ``python -m p2p_sidecar`` imports that tree's packages: its working directory comes first on
``sys.path``, before this checkout's editable install.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.procs import ROOT, Proc


def export(ref: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def describe(ref: str) -> str:
    """``ref`` and the commit it names, for a report."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True, text=True
    )
    return f"{ref} ({done.stdout.strip()})"


def in_tree(proc: Proc, tree: Path) -> Proc:
    proc.prefix = ["env", "-C", str(tree)]  # env execs: the pid stays the Python process's
    return proc


def load_average() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"{one:.1f} (5 min: {five:.1f})"
