"""The bridge envelope: one immutable message type for every frame.

The bridge is symmetric.  The gateway calls P2P tools in the sidecar and the
sidecar calls the gateway's local tools on behalf of remote peers, so a CALL
can travel either way and is answered by a RESULT or an ERROR carrying the
same ``id``, with any number of PROGRESS updates before it.  Control kinds
(HELLO, CATALOG, PING, PONG, CANCEL) keep the two processes in step.

``deadline`` is absolute wall-clock time (``time.time()`` seconds).  Both
processes share a host or a pod, so their clocks agree; an absolute deadline
survives time spent queued in ZeroMQ, which a relative timeout would not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared_schema.errors import ErrorInfo

ENVELOPE_VERSION = 1
"""Bumped on any incompatible change to the wire form in ``codec.py``."""

MAX_TRACEPARENT = 256
"""A W3C ``traceparent`` is 55 characters; a longer field is not one and is dropped on receipt."""


class Kind(StrEnum):
    HELLO = "hello"
    """Sent by the gateway when its connection comes up; ``body`` describes it."""
    CATALOG = "catalog"
    """Sent by the sidecar in answer to HELLO and whenever its tools change."""
    CALL = "call"
    """Run ``tool`` with ``arguments`` before ``deadline``; answered under the same ``id``."""
    RESULT = "result"
    ERROR = "error"
    PING = "ping"
    """Application-level heartbeat: answered through the peer's event loop, so a blocked loop shows."""
    PONG = "pong"
    CANCEL = "cancel"
    """The caller gave up on ``id``; the callee may stop working on it."""
    PROGRESS = "progress"
    """The callee's tool reported progress on call ``id``; ``body`` is a ``Progress`` in wire form."""


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    id: str = ""
    deadline: float | None = None
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    result: Any = None
    error: ErrorInfo | None = None
    trace_id: str | None = None
    body: dict[str, Any] | None = None
    version: int = ENVELOPE_VERSION
    traceparent: str | None = None
    """W3C trace context of a CALL (``00-<trace id>-<parent span id>-<flags>``), so both processes' spans and
    log lines belong to the caller's trace.  Optional: a peer that sends none, or does not know the field,
    is served as before."""

    def reply(self, result: Any) -> Envelope:
        """The RESULT that answers this CALL."""
        return Envelope(Kind.RESULT, id=self.id, result=result, trace_id=self.trace_id)

    def fail(self, error: ErrorInfo) -> Envelope:
        """The ERROR that answers this CALL (or this undecodable request)."""
        return Envelope(Kind.ERROR, id=self.id, error=error, trace_id=self.trace_id)

    @property
    def outcome(self) -> str:
        """A reply's metrics label: ``ok``, or its error's code."""
        return "ok" if self.error is None else self.error.code.value
