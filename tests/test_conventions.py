"""Two writing rules the whole tree keeps: a module that speaks of "the seed" says what it is, and nothing
refers to the plan's bookkeeping (issue numbers, phases of work) that a reader of the code cannot see."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.procs import ROOT

SKIPPED_DIRS = {".venv", "node_modules", ".tools", ".git", "__pycache__", ".mypy_cache", "results"}
SEED = re.compile(r"\bthe seed\b|\bseed's\b|\bseed-style\b", re.IGNORECASE)
BOOKKEEPING = re.compile(r"\bissues? #?\d+|\bphase \d+ of\b|\(phase \d+\)|\bissue-\d+\b", re.IGNORECASE)


def files(*suffixes: str) -> list[Path]:
    """The project's own files: what git tracks (and what is about to be added), not build output or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [
        ROOT / name
        for name in sorted(filter(None, listed.split("\0")))
        if Path(name).suffix in suffixes and (ROOT / name).is_file() and not SKIPPED_DIRS.intersection(Path(name).parts)
    ]


def test_every_module_that_speaks_of_the_seed_defines_it() -> None:
    undefined = [
        str(path.relative_to(ROOT))
        for path in files(".py")
        if SEED.search(path.read_text()) and '"The seed" is' not in path.read_text()
    ]
    assert not undefined, f'these speak of the seed without saying what it is ("The seed" is ...): {undefined}'


def test_nothing_refers_to_issue_numbers_or_phases_of_work() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in files(".py", ".md", ".toml", ".sh", ".yml", ".yaml", ".json", ".mjs", ".service")
        if path.name != "package-lock.json" and path != Path(__file__)
        for match in BOOKKEEPING.finditer(path.read_text(errors="replace"))
    ]
    assert not found, found
