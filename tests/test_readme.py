"""The README's settings tables are generated from the settings classes; this keeps them in step."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import ROOT


def test_readme_settings_match_the_settings_classes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import settings_table
    finally:
        sys.path.pop(0)
    readme = (ROOT / "README.md").read_text()
    assert settings_table.readme_section(readme) == settings_table.tables().strip(), (
        "README settings are stale: run `.venv/bin/python scripts/settings_table.py --write`"
    )


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert "make run" in head and "make test" in head


def test_makefile_has_run_and_test() -> None:
    done = subprocess.run(["make", "-n", "run", "test"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
