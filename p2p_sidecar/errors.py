"""The sidecar's exception root, and its one start-up error.

Every refusal a subsystem raises on purpose derives from ``SidecarError``, so
a boundary that must not let a subsystem's failure escape (a tool call, a
peer's request) can name one type.  ``StartupError`` is what stops the process
at start with one line naming what is wrong (a setting, a file, a port): the
entry point prints its message and exits 2, whichever subsystem raised it.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Root of the exceptions the sidecar's own code raises on purpose."""


class StartupError(SidecarError):
    """Something the sidecar needs at start-up is missing or unusable; the message says what and where."""
