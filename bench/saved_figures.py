"""Figures of the benches that run apart from ``make bench`` (``--save``), kept beside them in ``bench/*.md``.

``make bench`` includes each saved table in docs/benchmarks.md under its
heading and prose; a bench that was never saved adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save(path: Path, text: str, command: str | None = None) -> None:
    """Write a bench's table, headed by the command that produced it when one is given."""
    path.write_text(f"Command: `{command}`\n\n{text}\n" if command else f"{text}\n")


def section(path: Path, heading: str, prose: Sequence[str], after: Sequence[str] = ()) -> list[str]:
    """docs/benchmarks.md's lines for a saved table: heading, prose, the table, then ``after``; [] if unsaved."""
    if not path.is_file():
        return []
    return [heading, "", *prose, "", path.read_text().strip(), "", *after]
