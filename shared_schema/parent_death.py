"""Children that do not outlive their parent: the supervisor's processes and the gateway's workers.

A parent killed with SIGKILL runs no cleanup, so each child asks Linux itself
to be sent SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and
nothing is left holding ports.  Elsewhere there is no such call and the hook
is None.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that SIGTERMs the child when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec
