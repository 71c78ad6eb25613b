"""The task queue's exceptions, and how each one reads at the bridge.

Everything the queue refuses is a ``QueueError`` carrying the ``ErrorCode`` a
caller sees; the tool layer (``tools.py``) is the one boundary that turns them
into ``BridgeError``.  ``SourceUnavailable`` is what a worker meets when the
queue it pulls from cannot answer now (a peer gone, a disk full): it retries,
whatever the cause.  Executors signal their own failures with ``TaskFailed``,
which is not an error of the queue: it becomes a failed attempt.
"""

from __future__ import annotations

from typing import Any

from p2p_sidecar.errors import SidecarError
from shared_schema import BridgeError, ErrorCode


class QueueError(SidecarError):
    """Root of every refusal by the task queue or the workflow engine."""

    code: ErrorCode = ErrorCode.INVALID_ARGUMENTS

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_bridge(self) -> BridgeError:
        return BridgeError(self.code, self.message, self.data)


class InvalidRequest(QueueError):
    """Arguments the queue cannot accept (unknown task type, bad retry policy, bad filter...)."""


class NotFound(QueueError):
    code = ErrorCode.NOT_FOUND


class Conflict(QueueError):
    """The request is valid but not in the task's current state (retrying a running task...)."""

    code = ErrorCode.CONFLICT


class QueueFull(QueueError):
    code = ErrorCode.BUSY


class StorageError(QueueError):
    """The queue's SQLite database refused a read or write (disk full, I/O error, locked by another process).

    Nothing was changed (the transaction rolled back) and the sidecar stays up:
    callers get ``unavailable`` and may retry once the operator has fixed the disk.
    """

    code = ErrorCode.UNAVAILABLE


class NoNetwork(QueueError):
    """A placement that needs other peers, on a node without a P2P network."""

    code = ErrorCode.UNAVAILABLE


class SourceUnavailable(SidecarError):
    """The queue a worker pulls from cannot answer right now (a peer unreachable, its database refusing writes).

    The worker treats every cause alike: it keeps its attempt, and retries the
    claim, heartbeat or report later; the lease rules decide what happens if it
    never gets through.
    """


class TaskFailed(Exception):
    """Raised by an executor: this attempt failed, with a message for the task's record.

    ``retryable=False`` fails the task at once, whatever its retry policy says
    (bad payload, result too large: trying again cannot help).
    """

    def __init__(self, message: str, *, retryable: bool = True, code: str = "task_error") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code
