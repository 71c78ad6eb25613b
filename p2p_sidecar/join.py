"""``python -m p2p_sidecar join``: print what another node needs to join this node's network.

A node's network is closed by default (a secret made on first start in
``SIDECAR_DATA_DIR/network.secret``, unless one is configured), so a second
node needs two things: the secret, and an address of this node to bootstrap
from.  This command prints both as environment assignments for the other
node (the way a private IPFS network hands out its swarm key), reading the
same settings the sidecar reads.  Run before the first start, it makes the
node key and the secret itself, exactly as that start would.

The output holds the secret: hand it over the way you would a password.
"""

from __future__ import annotations

import sys
from typing import TextIO

from p2p_sidecar.node.addresses import advertised_addrs
from p2p_sidecar.node.host import NodeStartupError, network_secret
from p2p_sidecar.node.identity import IdentityError, load_or_create
from p2p_sidecar.node.libp2p_host import peer_id_of
from p2p_sidecar.settings import SidecarSettings

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+/=:@%")


def join_lines(settings: SidecarSettings) -> list[str]:
    """The lines to print; raises ``NodeStartupError`` / ``IdentityError`` if the data directory is unusable."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pair, _ = load_or_create(settings.data_dir)
    peer_id = peer_id_of(key_pair)
    secret, source, _ = network_secret(settings)
    addrs = settings.announce_addrs or advertised_addrs(settings.listen_addrs)
    public = [addr for addr in addrs if not addr.startswith(("/ip4/127.", "/ip6/::1/"))] or addrs
    bootstrap = ",".join(f"{addr}/p2p/{peer_id}" for addr in public)
    lines = [f"# To join the libp2p network of node {peer_id}, start the other node with:"]
    printable = secret is not None and all(chr(byte) in _TOKEN_CHARS for byte in secret)
    if secret is not None and printable:
        lines.append(f"SIDECAR_NETWORK_SECRET={secret.decode()}")
    elif secret is not None:
        lines.append(f"# SIDECAR_NETWORK_SECRET_FILE=<a copy of {source}> (the secret is not printable text)")
    lines.append(f"SIDECAR_BOOTSTRAP_PEERS={bootstrap}")
    if secret is not None:
        lines.append(f"# (the secret is this node's {source}; keep it as private as a password)")
    elif settings.network_open:
        lines.append("# (this network is open: SIDECAR_NETWORK_OPEN=true here, so the other node needs the same)")
    if settings.peer_allowlist:
        lines.append("# and add the other node's peer id to this node's SIDECAR_PEER_ALLOWLIST")
    if not settings.announce_addrs:
        lines.append("# (addresses from SIDECAR_LISTEN_ADDRS; set SIDECAR_ANNOUNCE_ADDRS if others reach it elsewhere)")
    return lines


def main(settings: SidecarSettings, out: TextIO = sys.stdout) -> int:
    try:
        lines = join_lines(settings)
    except (NodeStartupError, IdentityError, OSError) as exc:
        print(f"sidecar join: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines), file=out)
    return 0
