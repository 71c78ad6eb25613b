"""Keeping py-libp2p's log about the network, not about every packet a stranger sends.

py-libp2p 0.8.1 logs many ordinary events of a network at ERROR or WARNING,
often with multi-line bodies: a peer that does not serve a protocol (a 7-line
``Failed to open stream`` block), a reset identify push (``Error processing
identify/push ... :`` with an empty reason), a connection a peer closed, a dial
that failed.  Any peer can cause them at will, so they could fill the log and
hide what matters.  The node reports what it makes of such events itself, once
and in one line (``peer X does not serve ...``, ``dial to X failed ...``,
``peer X gone``), so this filter:

* turns the ordinary ones (``ORDINARY``) into DEBUG records: dropped unless
  the process logs at debug level;
* lets any other py-libp2p WARNING or ERROR through at most once per call site
  every ``WINDOW`` seconds, saying how many were held back, and in one line.

Installed on the process's log handlers by ``python -m p2p_sidecar`` (not when
``LIBP2P_DEBUG`` asks for py-libp2p's own logging).
"""

from __future__ import annotations

import logging
import os
import time

WINDOW = 60.0
MAX_SITES = 1024

ORDINARY: tuple[tuple[str, str], ...] = (
    # (module path inside libp2p, start of the message)
    ("host/basic_host.py", "Failed to open stream to peer"),  # the peer refused the protocol, or went away
    ("identity/identify_push/", "Error processing identify/push"),  # a reset push stream
    ("identity/identify_push/", "Error pushing identify"),
    ("identity/identify/", "Error sending identify response"),
    ("identity/identify/", "Failed to parse identify response"),
    ("network/swarm.py", "failed to upgrade security"),  # a failed dial, or a stranger's bad handshake
    ("network/swarm.py", "fail to upgrade mux"),
    ("network/connection/swarm_connection.py", "Error"),  # closing or resetting what a peer already dropped
    ("stream_muxer/yamux/", "Yamux connection closed unexpectedly"),  # a peer hung up
    ("stream_muxer/yamux/", "RawConnError during connection handling"),
    ("stream_muxer/yamux/", "Error in handle_incoming"),
    ("stream_muxer/yamux/", "Incomplete read"),
    ("stream_muxer/yamux/", "Received GO_AWAY"),
    ("protocol_muxer/", "MultiselectClient"),  # a stream whose negotiation a peer cut
)


def _libp2p_path(record: logging.LogRecord) -> str | None:
    """The record's source path inside the libp2p package, or None if it does not come from there."""
    marker = f"{os.sep}libp2p{os.sep}"
    path = record.pathname
    index = path.rfind(marker)
    if index < 0:
        return None
    return path[index + len(marker) :].replace(os.sep, "/")


class Libp2pNoiseFilter(logging.Filter):
    def __init__(self, window: float = WINDOW) -> None:
        super().__init__()
        self._window = window
        self._sites: dict[tuple[str, int], tuple[float, int]] = {}
        """call site -> (when its window started, records held back in it)"""

    def filter(self, record: logging.LogRecord) -> bool:
        inside = _libp2p_path(record)
        if inside is None or record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if any(inside.startswith(path) and message.startswith(start) for path, start in ORDINARY):
            return self._as_debug(record)
        return self._rate_limited(record, inside, message)

    def _as_debug(self, record: logging.LogRecord) -> bool:
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True

    def _rate_limited(self, record: logging.LogRecord, inside: str, message: str) -> bool:
        now = time.monotonic()
        site = (inside, record.lineno)
        started, held = self._sites.get(site, (-self._window, 0))
        if now - started < self._window:
            self._sites[site] = (started, held + 1)
            return False
        if len(self._sites) >= MAX_SITES:
            self._sites.clear()
        self._sites[site] = (now, 0)
        line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
        if held:
            line += f" ({held} more like this in the last {self._window:.0f}s not shown)"
        record.msg, record.args = line, None
        return True
