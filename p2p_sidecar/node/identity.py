"""The node's Ed25519 identity, kept in ``SIDECAR_DATA_DIR`` so the peer id survives restarts.

The key file holds the private key in libp2p's own protobuf serialisation
(the form every libp2p implementation reads), readable by this user only.
It is created once, atomically (written to a temporary file opened with
``O_EXCL`` and mode 0600, then renamed), so a crash mid-write never leaves a
half key that would silently become a new identity.  A key file that exists
but cannot be read is a start-up error, never a reason to generate a new
key: a node that quietly changes its peer id is lost to its peers.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from google.protobuf.message import DecodeError
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

log = logging.getLogger(__name__)

KEY_FILE = "node.key"


class IdentityError(RuntimeError):
    """The key file exists but is unusable; the message says which file and why."""


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def load_or_create(data_dir: Path) -> tuple[KeyPair, bool]:
    """Return the node's key pair and whether it was created just now."""
    path = key_path(data_dir)
    if path.exists():
        return _load(path), False
    key_pair = create_new_key_pair()
    _write_new(path, key_pair.private_key.serialize())
    log.info("created node identity %s in %s", ID.from_pubkey(key_pair.public_key), path)
    return key_pair, True


def _load(path: Path) -> KeyPair:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("node key %s had mode %o; tightening it to 600", path, mode)
            path.chmod(0o600)
        raw = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read the node key {path}: {exc.strerror}") from None
    try:
        private_key = deserialize_private_key(raw)
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise IdentityError(f"{path} is not a libp2p private key ({type(exc).__name__}); move it away") from None
    if private_key.get_type() is not KeyType.Ed25519:
        raise IdentityError(f"{path} holds a {private_key.get_type().name} key; this node uses Ed25519")
    return KeyPair(private_key, private_key.get_public_key())


def _write_new(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise IdentityError(f"cannot write the node key {path}: {exc.strerror}") from None
