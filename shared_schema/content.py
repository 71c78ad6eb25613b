"""Content addressing both sides agree on: the same bytes get the same digest and CID.

Used by the gateway's hashing tools, the sidecar's P2P twin of them and the
task queue's ``hash`` executor, so a result computed on one node can be
checked on any other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Literal

from shared_schema.errors import BridgeError, ErrorCode

HashAlgorithm = Literal["sha256", "sha512", "sha3_256", "blake2b"]
PayloadEncoding = Literal["utf-8", "base64"]

_MULTIHASH_SHA256 = b"\x12\x20"
_CID_V1 = b"\x01"
_CODEC_RAW = b"\x55"


def payload_bytes(data: str, encoding: PayloadEncoding = "utf-8") -> bytes:
    """Turn a tool argument into bytes; base64 lets binary payloads travel through JSON."""
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"data is not valid base64: {exc}") from None
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON can carry lone surrogates ("\ud800") that have no UTF-8 form
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"data is not valid text: {exc.reason}") from None


def digest(data: bytes, algorithm: HashAlgorithm = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()


def cid_v1_raw(data: bytes) -> str:
    """CIDv1, raw codec, sha2-256, base32 lower-case: the form IPFS prints for raw leaves (``bafkrei...``)."""
    binary = _CID_V1 + _CODEC_RAW + _MULTIHASH_SHA256 + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(binary).decode("ascii").lower().rstrip("=")


def hash_payload(
    data: str, algorithm: HashAlgorithm = "sha256", encoding: PayloadEncoding = "utf-8"
) -> dict[str, object]:
    """The result both hashing tools return, so local and P2P answers compare equal."""
    raw = payload_bytes(data, encoding)
    return {"algorithm": algorithm, "digest": digest(raw, algorithm), "size": len(raw), "cid": cid_v1_raw(raw)}
