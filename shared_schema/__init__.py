"""What crosses the bridge between the gateway and the P2P sidecar.

Both processes import this package and neither redefines any of it: the
envelope and its version, the one codec, the tool metadata and catalog
entries, and the error vocabulary.  Keeping the definitions in one place is
what lets the gateway forward a P2P call "unchanged" without knowing what the
tool does.
"""

from shared_schema.codec import DecodeError, decode, encode
from shared_schema.envelope import ENVELOPE_VERSION, Envelope, Kind
from shared_schema.errors import BridgeError, ErrorCode, ErrorInfo
from shared_schema.progress import Progress, report_progress
from shared_schema.signature import ArgumentsInvalid, Signature
from shared_schema.tool_metadata import ToolMetadata, ToolSpec, tool_metadata

__all__ = [
    "ENVELOPE_VERSION",
    "ArgumentsInvalid",
    "BridgeError",
    "DecodeError",
    "Envelope",
    "ErrorCode",
    "ErrorInfo",
    "Kind",
    "Progress",
    "Signature",
    "ToolMetadata",
    "ToolSpec",
    "decode",
    "encode",
    "report_progress",
    "tool_metadata",
]
