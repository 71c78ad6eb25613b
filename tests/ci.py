"""Tests that cannot run without root, a tool or network namespaces skip on a developer's machine, saying why;
under ``CI=true`` they fail instead, because CI runs as root on a machine that has all of them, and a skip
there would hide a check that silently stopped running."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason`` here, fail with it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI has root, the tools and namespaces, so this must run there)")
    pytest.skip(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip``, except under CI, where a missing module fails the test."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        cannot_run(f"{reason} ({exc})")
