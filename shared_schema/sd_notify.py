"""systemd's readiness protocol (``sd_notify``), for both processes' entry points.

The systemd units in ``deploy/systemd/`` are ``Type=notify``: systemd counts a service as
started only when the process says ``READY=1``, which is what orders the gateway after a sidecar
that really listens.  The protocol is one datagram of ``KEY=VALUE`` lines to the Unix socket
named by ``$NOTIFY_SOCKET``; doing it here avoids a dependency on libsystemd.  Without
``$NOTIFY_SOCKET`` (not under systemd, or ``Type=`` other than notify) every call is a no-op.

It lives beside the bridge schema only because both processes need it; it sends nothing
over the bridge.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    """The notify socket address, or None when there is none this module can use."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if raw.startswith("@"):  # abstract namespace socket
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    if raw:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket; not notifying systemd", raw)
    return None


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to systemd; True if sent.

    A failure is logged and otherwise ignored: readiness reporting must never stop the
    service itself (systemd times the start out on its own if READY=1 never arrives).
    """
    address = _address()
    if address is None:
        return False
    message = "\n".join(fields).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False
    return True
