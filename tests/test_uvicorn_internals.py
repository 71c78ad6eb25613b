"""The gateway builds on uvicorn internals (gateway/uvicorn_internals.py): an upgrade must stop it, loudly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import uvicorn

from gateway.uvicorn_internals import CHECKED_VERSION, UvicornMismatch, check_uvicorn
from tests.procs import ROOT, base_env


def test_the_installed_uvicorn_is_the_one_the_internals_were_checked_against() -> None:
    assert uvicorn.__version__ == CHECKED_VERSION, "re-check gateway/uvicorn_internals.py, then CHECKED_VERSION"
    check_uvicorn()


def test_another_version_is_refused_with_what_to_recheck() -> None:
    with pytest.raises(UvicornMismatch, match=r"uvicorn 9\.9\.9 is installed.*gateway/http_limits\.py"):
        check_uvicorn("9.9.9")


def test_the_gateway_does_not_start_on_another_uvicorn() -> None:
    script = "import uvicorn; uvicorn.__version__ = '9.9.9'; from gateway.__main__ import main; main(['--no-bridge'])"
    done = subprocess.run(
        [sys.executable, "-c", script], env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("gateway cannot start: uvicorn 9.9.9 is installed")
