"""Who belongs to this node's network, and what outsiders may still do.

Noise already tells the node *who* is on the other end of a connection (the
peer id is the hash of the key that completed the handshake); this module
decides whether that peer is a **member**.  Two settings close the network,
alone or together:

* ``SIDECAR_PEER_ALLOWLIST``: peer ids that may be members;
* ``SIDECAR_NETWORK_SECRET_FILE``: a secret every member holds.  A peer
  proves it in the ``hello`` exchange with an HMAC-SHA256 over a fixed label,
  both peer ids and fresh nonces, so the secret itself never travels and a
  proof is worth nothing on any other connection (Noise binds the ids).

With both set, a member must be on the list *and* prove the secret.  A node
is closed by default: with neither setting, it uses a secret of its own,
made on first start in ``SIDECAR_DATA_DIR/network.secret`` (the way a private
IPFS network shares a swarm key; ``python -m p2p_sidecar join`` prints what
another node needs to join).  Only ``SIDECAR_NETWORK_OPEN=true`` opens it:
then every peer that completes a handshake is a member, and start-up warns.

Only ``hello`` (which carries the proof) and ``ping`` (liveness) are open to
non-members.  Every other op, including ops other subsystems register later,
is refused with ``forbidden``: deny by default, so a new op cannot be exposed
by forgetting to protect it.

The decisions are synchronous and free of I/O (the secret is read, or made,
by the caller at start-up with the two file functions here); the proofs are
pure functions, so both ends compute the same bytes.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OPEN_OPS = frozenset({"hello", "ping"})
"""Ops a peer may use before (or without) being a member."""
LABEL = b"mcp-p2p network membership v1"
NONCE_BYTES = 16
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
MAX_REMEMBERED_FAILURES = 4096
"""Why a peer's last proof failed, kept for the refusal message; bounded (peer ids are free to make)."""

SECRET_FILE = "network.secret"
"""The secret a node makes for itself on first start, in SIDECAR_DATA_DIR, when none is configured."""

NOT_ON_ALLOWLIST = "not_on_allowlist"
NO_PROOF = "no_secret_proof"
BAD_PROOF = "bad_secret_proof"


class SecretFileError(ValueError):
    """The network secret file is unusable; the message names the file, never its content."""


def read_secret(path: Path) -> bytes:
    """The secret in ``path``: its bytes without surrounding whitespace, 16 to 4096 of them."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror}") from None
    secret = raw.strip()
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretFileError(f"{path} is larger than {MAX_SECRET_BYTES} bytes; a secret is a short random string")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(
            f"{path} holds {len(secret)} bytes; a network secret needs at least {MIN_SECRET_BYTES} "
            "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return secret


def load_or_create_secret(data_dir: Path) -> tuple[bytes, bool]:
    """This node's own network secret in ``data_dir``, made (64 hex characters, mode 0600) if absent.

    Returns the secret and whether it was made just now.  Made atomically (a temporary file opened with
    ``O_EXCL``, then renamed without replacing), so two processes starting at once agree on one secret.
    """
    path = data_dir / SECRET_FILE
    if path.exists():
        return read_secret(path), False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # fails if another process made one first: theirs wins
            created = True
        except FileExistsError:
            created = False
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise SecretFileError(f"cannot write {path}: {exc.strerror}") from None
    return read_secret(path), created


def _mac(secret: bytes, *parts: str) -> str:
    message = b"\x00".join([LABEL, *(part.encode() for part in parts)])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def hello_proof(secret: bytes, prover: str, verifier: str, nonce: str) -> str:
    """What the side sending a ``hello`` request attaches: it knows the secret, on a connection prover -> verifier."""
    return _mac(secret, "hello", prover, verifier, nonce)


def reply_proof(secret: bytes, prover: str, verifier: str, request_nonce: str, nonce: str) -> str:
    """What the answering side attaches: it knows the secret and saw this request's nonce (a fresh challenge)."""
    return _mac(secret, "reply", prover, verifier, request_nonce, nonce)


@dataclass(frozen=True, slots=True)
class Offer:
    """The auth part of one outgoing hello request, kept to check the reply against."""

    nonce: str
    wire: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    message: str


class Membership:
    def __init__(
        self,
        own_id: str,
        *,
        allowlist: Iterable[str] = (),
        secret: bytes | None = None,
        secret_source: str = "SIDECAR_NETWORK_SECRET_FILE",
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._own_id = own_id
        self.secret_source = secret_source
        """Where the secret came from, for people: a setting's name, or the file this node made."""
        self._allowlist = frozenset(allowlist)
        self._secret = secret
        self._on_refused = on_refused
        self._proven: set[str] = set()
        self._failures: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._logged: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    # -- configuration ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return bool(self._allowlist) or self._secret is not None

    @property
    def uses_secret(self) -> bool:
        return self._secret is not None

    def describe(self) -> str:
        """One line for the start-up log (names the settings, never the secret)."""
        if not self.closed:
            return (
                "libp2p network is OPEN (SIDECAR_NETWORK_OPEN=true): any peer that connects may claim this node's "
                "tasks, send it work and call its allowed tools"
            )
        rules = []
        if self._allowlist:
            rules.append(f"on SIDECAR_PEER_ALLOWLIST ({len(self._allowlist)} peer ids)")
        if self._secret is not None:
            rules.append(f"proving the network secret ({self.secret_source}) in hello")
        return f"libp2p network is closed: only peers {' and '.join(rules)} may use ops other than hello and ping"

    # -- the hello exchange -----------------------------------------------------------------------
    def offer(self, remote: str) -> Offer | None:
        """The auth to attach to a hello request sent to ``remote`` (None without a secret)."""
        if self._secret is None:
            return None
        nonce = secrets.token_hex(NONCE_BYTES)
        proof = hello_proof(self._secret, self._own_id, remote, nonce)
        return Offer(nonce, {"nonce": nonce, "proof": proof})

    def check_request(self, remote: str, auth: Any) -> dict[str, Any] | None:
        """Check the auth of a hello request from ``remote``; returns the auth for our reply (None: send none).

        A reply proof is only given to a peer that proved the secret itself, so a
        non-member learns nothing it could use.
        """
        if self._secret is None:
            return None
        nonce = auth.get("nonce") if isinstance(auth, dict) else None
        if not _well_formed(auth):
            self._fail(remote, NO_PROOF if auth is None else BAD_PROOF)
            return None
        if not hmac.compare_digest(auth["proof"], hello_proof(self._secret, remote, self._own_id, auth["nonce"])):
            self._fail(remote, BAD_PROOF)
            return None
        self._prove(remote)
        ours = secrets.token_hex(NONCE_BYTES)
        return {"nonce": ours, "proof": reply_proof(self._secret, self._own_id, remote, str(nonce), ours)}

    def check_reply(self, remote: str, auth: Any, offer: Offer | None) -> bool:
        """Check the auth of ``remote``'s answer to our hello; returns whether it proved the secret."""
        if self._secret is None or offer is None:
            return True
        if not _well_formed(auth):
            self._fail(remote, NO_PROOF if auth is None else BAD_PROOF)
            return False
        expected = reply_proof(self._secret, remote, self._own_id, offer.nonce, auth["nonce"])
        if not hmac.compare_digest(auth["proof"], expected):
            self._fail(remote, BAD_PROOF)
            return False
        self._prove(remote)
        return True

    def _prove(self, peer_id: str) -> None:
        if peer_id not in self._proven:
            self._proven.add(peer_id)
            if peer_id in self._allowlist or not self._allowlist:
                log.info("peer %s proved the network secret: member", peer_id)
        self._failures.pop(peer_id, None)

    def _fail(self, peer_id: str, reason: str) -> None:
        was_member = peer_id in self._proven
        self._proven.discard(peer_id)
        self._failures[peer_id] = reason
        self._failures.move_to_end(peer_id)
        while len(self._failures) > MAX_REMEMBERED_FAILURES:
            self._failures.popitem(last=False)
        what = "sent no proof of" if reason == NO_PROOF else "sent a wrong proof of"
        if was_member:
            log.warning("peer %s %s the network secret: no longer a member", peer_id, what)
        else:
            self._log_once(peer_id, reason, f"peer %s {what} the network secret: not a member", peer_id)

    # -- decisions --------------------------------------------------------------------------------------
    def admits(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is a member now."""
        if self._allowlist and peer_id not in self._allowlist:
            return False
        return self._secret is None or peer_id in self._proven

    def refusal(self, peer_id: str, op: str) -> Refusal | None:
        """None if ``peer_id`` may use ``op``; otherwise why not (counted and logged once per peer and reason)."""
        if op in OPEN_OPS or not self.closed:
            return None
        if self._allowlist and peer_id not in self._allowlist:
            refusal = Refusal(
                NOT_ON_ALLOWLIST,
                f"node {self._own_id} refuses {op!r}: peer {peer_id} is not on its SIDECAR_PEER_ALLOWLIST",
            )
        elif self._secret is not None and peer_id not in self._proven:
            reason = self._failures.get(peer_id, NO_PROOF)
            detail = (
                "its hello carried a proof made with another secret"
                if reason == BAD_PROOF
                else "no hello from it carried a proof"
            )
            refusal = Refusal(
                reason,
                f"node {self._own_id} refuses {op!r}: peer {peer_id} has not proven this network's secret "
                f"({self.secret_source}): {detail}",
            )
        else:
            return None
        self._on_refused(refusal.reason)
        self._log_once(peer_id, refusal.reason, "refused %s from peer %s: %s", op, peer_id, refusal.reason)
        return refusal

    def _log_once(self, peer_id: str, reason: str, message: str, *args: Any) -> None:
        """Warn the first time a peer is refused for a reason; later refusals are only counted (a metric)."""
        key = (peer_id, reason)
        if key in self._logged:
            return
        self._logged[key] = None
        while len(self._logged) > MAX_REMEMBERED_FAILURES:
            self._logged.popitem(last=False)
        log.warning(message, *args)


def _well_formed(auth: Any) -> bool:
    return (
        isinstance(auth, dict)
        and isinstance(auth.get("nonce"), str)
        and 0 < len(auth["nonce"]) <= 128
        and isinstance(auth.get("proof"), str)
        and len(auth["proof"]) == 64
        and all(char in _HEX for char in auth["proof"])
    )


_HEX = frozenset("0123456789abcdef")
