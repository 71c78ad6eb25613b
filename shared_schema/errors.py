"""The error vocabulary shared by both sides of the bridge.

An error that crosses a process boundary is data (``ErrorInfo``), never a
pickled exception: the receiving side maps the code to its own answer (an
HTTP status, a JSON-RPC error, an MCP tool error) in exactly one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Why a call did not produce a result.  Values are stable wire strings."""

    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    TOOL_ERROR = "tool_error"
    TIMEOUT = "timeout"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    VERSION_MISMATCH = "version_mismatch"
    BAD_FRAME = "bad_frame"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    TOOL_UNAVAILABLE = "tool_unavailable"
    """The tool is listed but cannot run here: its module failed to load, or no sidecar serves it."""
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    """Too many calls in flight from one client; retry shortly (HTTP 429)."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as it travels: a code, a sentence for humans, optional detail."""

    code: ErrorCode
    message: str
    data: Any = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.data is not None:
            wire["data"] = self.data
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> ErrorInfo:
        """Rebuild from a decoded map; an unknown code degrades to INTERNAL, it never raises."""
        if not isinstance(raw, dict):
            return cls(ErrorCode.INTERNAL, f"malformed error payload: {raw!r:.200}")
        try:
            code = ErrorCode(str(raw.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL
        message = raw.get("message")
        return cls(code, message if isinstance(message, str) else str(message), raw.get("data"))


@dataclass(eq=False)
class BridgeError(Exception):
    """The one exception root for failures that have an ``ErrorInfo`` form.

    Raised by tools (or by the machinery around them) on either side; the
    boundary that owns the caller turns it into that caller's error shape.
    """

    code: ErrorCode
    message: str
    data: Any = field(default=None)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.value}: {self.message}")

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(self.code, self.message, self.data)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> BridgeError:
        return cls(info.code, info.message, info.data)
