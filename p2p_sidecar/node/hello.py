"""The ``hello`` body: what one node tells another about itself, checked field by field.

A hello comes from the network, so it is read like any input from a stranger:
every field has a type and a bound (docs/p2p-protocol.md, "hello"), a body
that breaks one is refused with ``invalid_arguments`` naming the field, and
``wire_version`` must be the one this node speaks (``version_mismatch``
otherwise), so two implementations that cannot understand each other find out
at once instead of on their first real request.  Fields this node does not
know are ignored, so a later version may add some.

Addresses are the exception to strictness: a peer may advertise transports
this node cannot dial (QUIC, WebSockets, circuit addresses of a js-libp2p
node); those entries are skipped, not refused.  What is kept is a dialable
TCP address.

Synchronous and free of I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from p2p_sidecar.node.addresses import parse_peer_addr
from p2p_sidecar.node.wire import WIRE_VERSION
from shared_schema import BridgeError, ErrorCode

MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
MAX_CAPABILITIES = 256
"""Entries in each capability list (tools, task_types)."""
MAX_NAME_CHARS = 128
MAX_VERSION_CHARS = 64
CAPABILITY_KEYS = ("tools", "task_types")


@dataclass(frozen=True, slots=True)
class Hello:
    wire_version: int
    version: str | None = None
    addrs: list[str] = field(default_factory=list)
    """Dialable TCP addresses, without ``/p2p/<id>``; others the peer listed are left out."""
    capabilities: dict[str, list[str]] = field(default_factory=dict)
    capabilities_revision: str | None = None
    auth: Any = None


def _refuse(what: str) -> BridgeError:
    return BridgeError(ErrorCode.INVALID_ARGUMENTS, f"hello: {what}", {"field": what.split(" ", 1)[0]})


def _short_string(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _refuse(f"{key} must be a string of at most {limit} characters")
    return value


def parse_hello(body: Any, peer_id: str) -> Hello:
    """Check a hello body from ``peer_id``; raises ``BridgeError`` (invalid_arguments or version_mismatch)."""
    if not isinstance(body, dict):
        raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "hello: the body must be a map")
    wire_version = body.get("wire_version")
    if isinstance(wire_version, bool) or not isinstance(wire_version, int):
        raise _refuse("wire_version is required: an integer (this node speaks 1)")
    if wire_version != WIRE_VERSION:
        raise BridgeError(
            ErrorCode.VERSION_MISMATCH,
            f"hello: wire_version {wire_version} is not {WIRE_VERSION}, the only one this node speaks",
            {"wire_version": WIRE_VERSION},
        )
    return Hello(
        wire_version=wire_version,
        version=_short_string(body, "version", MAX_VERSION_CHARS),
        addrs=_addrs(body.get("addrs"), peer_id),
        capabilities=_capabilities(body.get("capabilities")),
        capabilities_revision=_short_string(body, "capabilities_revision", MAX_VERSION_CHARS),
        auth=body.get("auth"),
    )


def _addrs(raw: Any, peer_id: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_ADDRS:
        raise _refuse(f"addrs must be a list of at most {MAX_ADDRS} multiaddrs")
    kept: list[str] = []
    for entry in raw:
        if not isinstance(entry, str) or len(entry) > MAX_ADDR_CHARS:
            raise _refuse(f"addrs entries must be strings of at most {MAX_ADDR_CHARS} characters")
        try:
            addr = parse_peer_addr(entry, peer_id=peer_id).addr
        except ValueError:
            continue  # another transport, or an address naming another peer: not one to dial this peer at
        if dialable(addr) and addr not in kept:
            kept.append(addr)
    return kept


def dialable(addr: str) -> bool:
    """Whether a TCP address can be dialled at all (not a wildcard, not port 0, not multicast)."""
    parts = addr.strip("/").split("/")
    if len(parts) != 4 or parts[3] == "0":
        return False
    if parts[0] in ("ip4", "ip6"):
        try:
            ip = ipaddress.ip_address(parts[1])
        except ValueError:
            return False
        return not (ip.is_unspecified or ip.is_multicast)
    return True


def _capabilities(raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {key: [] for key in CAPABILITY_KEYS}
    if not isinstance(raw, dict):
        raise _refuse("capabilities must be a map")
    result: dict[str, list[str]] = {}
    for key in CAPABILITY_KEYS:
        value = raw.get(key, [])
        if not isinstance(value, list) or len(value) > MAX_CAPABILITIES:
            raise _refuse(f"capabilities.{key} must be a list of at most {MAX_CAPABILITIES} names")
        if not all(isinstance(item, str) and 0 < len(item) <= MAX_NAME_CHARS for item in value):
            raise _refuse(f"capabilities.{key} entries must be names of 1 to {MAX_NAME_CHARS} characters")
        result[key] = list(dict.fromkeys(value))
    return result
