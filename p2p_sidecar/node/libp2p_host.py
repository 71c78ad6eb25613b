"""Building the py-libp2p host: its connection limits, and the two workarounds it needs in 0.8.1.

The node uses exactly one host for its whole life: TCP transport, Noise
security (the only one offered: no plaintext, no secio), Yamux
multiplexing, identify and ping on (py-libp2p registers both by default).
Everything py-libp2p-specific that the rest of the node should not know
about lives here.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

import multiaddr
import trio
from libp2p import __version__ as libp2p_version
from libp2p import new_swarm
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.network.config import LOW_WATERMARK, ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.rcmgr import new_resource_manager
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2p_sidecar.node.addresses import advertised_addrs

log = logging.getLogger(__name__)

PATCHED_VERSION = "0.8.1"


def remove_connect_delay() -> None:
    """Drop py-libp2p 0.8.1's fixed 250 ms wait from every dial.

    ``Swarm.dial_peer`` starts a dial per selected address and then waits up
    to ``_HAPPY_EYEBALLS_DELAY`` (250 ms) for that dial to *fail* before it
    moves on; a dial that succeeds does not end the wait, so every connect
    took about 250 ms even to a single loopback address (measured: about
    5 ms without it).  The delay only exists to stagger a second address of
    another transport class; this node dials TCP only and ``dial_peer``
    selects at most one address per class, so there is never a second dial
    to stagger.  Applied only to the version it was measured on; another
    version is left alone (and logged) so an upgrade is a conscious decision.
    """
    from libp2p.network import swarm

    if libp2p_version != PATCHED_VERSION or not hasattr(swarm, "_HAPPY_EYEBALLS_DELAY"):
        log.warning("libp2p %s: connect-delay workaround not applied (written for %s)", libp2p_version, PATCHED_VERSION)
        return
    swarm._HAPPY_EYEBALLS_DELAY = 0.0


def batch_window_updates() -> None:
    """Let Yamux acknowledge received bytes in batches, as go-yamux does, instead of after every read.

    py-libp2p 0.8.1's Yamux sends a WINDOW_UPDATE frame after every read by
    default (``PY_YAMUX_RELEASE_ON_READ=1``): for request/reply traffic that
    doubles the frames on the wire, each one Noise-encrypted and written by
    its own system call, on both ends (measured: about 2 frames and sends per
    request instead of 1).  With it off, credit is returned once half the
    receive window has been consumed, the go-yamux behaviour, so a sender never
    stalls.  The variable is py-libp2p's own documented tuning knob, read at
    call time; an operator's explicit setting wins.
    """
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


def connection_config(*, handshake_timeout: float, max_connections: int) -> ConnectionConfig:
    """py-libp2p's connection limits, from SIDECAR_P2P_HANDSHAKE_TIMEOUT and SIDECAR_P2P_MAX_CONNECTIONS.

    py-libp2p 0.8.1 already bounds what an attacker can hold, but with fixed
    defaults: every inbound connection, from its first byte to its close,
    takes one of ``max_connections - min_connections`` slots (250; past them
    new ones are closed at once), and one that has not finished Noise + Yamux
    within ``inbound_upgrade_timeout`` (10 s) is dropped, as is a stream that
    has not finished its protocol negotiation.  This exposes both as settings.
    ``min_connections`` is a sixth of the total (py-libp2p's own 50 of 300)
    and the watermarks follow, as its configuration requires.
    """
    timeout = float(handshake_timeout)
    return ConnectionConfig(
        max_connections=max_connections,
        min_connections=max_connections // 6,
        low_watermark=min(LOW_WATERMARK, max_connections),
        high_watermark=max_connections,
        inbound_upgrade_timeout=timeout,
        outbound_upgrade_timeout=timeout,
        # py-libp2p truncates this one to whole seconds, and treats 0 as "use the default"
        inbound_stream_protocol_negotiation_timeout=max(1.0, timeout),
    )


def build_host(
    key_pair: KeyPair,
    *,
    announce: Sequence[str],
    enable_mdns: bool,
    handshake_timeout: float = 10.0,
    max_connections: int = 300,
) -> BasicHost:
    """A host that has not started yet; ``host.run(listen_addrs)`` starts it.

    Built from ``new_swarm`` + ``BasicHost`` rather than ``new_host`` for three
    settings ``new_host`` does not pass through: Noise as the only security
    transport, no dial retries inside the swarm (``RetryConfig(0)``: the
    node's connection manager owns retrying, with its own backoff, and a
    peer_connect call states its own retry_count), and the connection limits
    of ``connection_config``.
    """
    resource_manager = new_resource_manager()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    swarm = new_swarm(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        retry_config=RetryConfig(max_retries=0),
        connection_config=connection_config(handshake_timeout=handshake_timeout, max_connections=max_connections),
        resource_manager=resource_manager,
    )
    static = [multiaddr.Multiaddr(addr) for addr in announce]

    def addresses(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        # What identify and our hello advertise: the configured announce addresses, or the real
        # listen addresses with a wildcard bind (0.0.0.0) expanded, since nobody can dial 0.0.0.0.
        if static:
            return list(static)
        return [multiaddr.Multiaddr(addr) for addr in advertised_addrs(str(c) for c in candidates)]

    return BasicHost(
        network=swarm,
        enable_mDNS=enable_mdns,
        resource_manager=resource_manager,
        addrs_factory=addresses,
        disable_identify_address_discovery=True,
    )


async def stop_auto_connector(host: BasicHost) -> None:
    """Stop py-libp2p's own auto-connector: whom to dial is the node's ConnectionManager's decision.

    Left running, it dials whatever is in libp2p's peerstore every 30 s to
    reach a target of 150 connections, and logs its state at INFO each time.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        await connector.stop()


def peer_id_of(key_pair: KeyPair) -> str:
    return str(ID.from_pubkey(key_pair.public_key))


def protocol_refused(exc: BaseException) -> bool:
    """Whether a failed ``new_stream`` means the peer answered ``na``: it does not serve the protocol.

    py-libp2p 0.8.1 wraps the multistream-select refusal in ``StreamFailure``; the
    cause is a ``MultiselectClientError`` whose message says the protocols are not
    supported (as opposed to a timeout or a broken connection).
    """
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return False
        if isinstance(current, MultiselectClientError) and str(current).startswith("protocols not supported"):
            return True
        current = current.__cause__ or current.__context__
    return False


def swarm_of(host: BasicHost) -> Swarm:
    """The host's network as the class ``new_swarm`` builds: ``INetworkService`` declares neither its transport
    manager, its upgrader nor ``unblock_peer``, which the node needs."""
    network = host.get_network()
    if not isinstance(network, Swarm):
        raise TypeError(f"py-libp2p host built on {type(network).__name__}, not the Swarm this node expects")
    return network


def unblock_peer(host: BasicHost, peer: ID) -> None:
    """Allow dialling ``peer`` now: py-libp2p blocks re-dials for 60 s after a failure."""
    swarm_of(host).unblock_peer(peer)


def connected(host: BasicHost, peer_id: str) -> bool:
    """Whether py-libp2p has an open connection to the peer (it may list a dead one for a while)."""
    try:
        return bool(host.get_network().get_connections(ID.from_base58(peer_id)))
    except ValueError:
        return False


async def libp2p_ping(host: BasicHost, peer_id: str) -> float:
    """One round trip of libp2p's own ping protocol (``/ipfs/ping/1.0.0``), in milliseconds.

    For peers that do not serve our protocol: most libp2p implementations serve this
    one.  Raises what ``new_stream`` and the stream raise; the caller translates.
    """
    stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(str(PING_PROTOCOL))])
    try:
        payload = secrets.token_bytes(PING_LENGTH)
        started = time.perf_counter()
        await stream.write(payload)
        echoed = b""
        while len(echoed) < PING_LENGTH:
            chunk = await stream.read(PING_LENGTH - len(echoed))
            if not chunk:
                raise EOFError("the peer closed the ping stream")
            echoed += chunk
        if echoed != payload:
            raise ValueError("the peer answered the ping with other bytes")
        return (time.perf_counter() - started) * 1000
    finally:
        with trio.CancelScope(shield=True):
            try:
                await stream.close()
            except Exception as exc:  # boundary: closing a stream of a dead connection may raise anything
                log.debug("closing a ping stream to %s: %s", peer_id, type(exc).__name__, exc_info=exc)


ConnectionEvent = Callable[[str, bool], Awaitable[None]]
"""``event(peer_id, inbound)`` for a connection that opened; for one that closed, ``inbound`` is ignored."""


class ConnectionEvents(INotifee):
    """py-libp2p's notifications of connections opening and closing, as two callbacks by peer id.

    The node learns here of peers that connect but never open our protocol (a plain
    libp2p node), and of connections that end, which it would otherwise notice
    only at the next ping.
    """

    def __init__(self, on_connected: ConnectionEvent, on_disconnected: ConnectionEvent) -> None:
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        muxed = conn.muxed_conn
        initiator = getattr(muxed, "is_initiator_value", getattr(muxed, "is_initiator", False))
        await self._on_connected(str(muxed.peer_id), not initiator)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        await self._on_disconnected(str(conn.muxed_conn.peer_id), False)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


async def learn_peer_id(host: BasicHost, addr: multiaddr.Multiaddr) -> str:
    """The peer id of whoever listens at ``addr``: dial it, run the Noise handshake, hang up.

    For bootstrap addresses given without ``/p2p/<id>``: py-libp2p dials only peers it
    knows by id, but its Noise handshake authenticates the responder's key whether or not
    the initiator expected one (``remote_peer=None``), so the id it returns is the key
    that completed the handshake, not a claim.  The connection is closed at once; the
    node then dials that peer the ordinary way.
    """
    swarm = swarm_of(host)
    resolved = await resolve_names([addr])
    if not resolved:
        raise OSError(f"{addr}: the name does not resolve")
    transport = swarm.transport_manager.transport_for_dialing(resolved[0])
    if transport is None:
        raise ValueError(f"no transport can dial {addr}")
    raw = await transport.dial(resolved[0])
    try:
        # None on purpose (see above): py-libp2p annotates an ID, but its Noise handshake takes None as
        # "whoever answers" and returns the key that completed it
        secured = await swarm.upgrader.security_multistream.secure_outbound(raw, None)  # type: ignore[arg-type]
        try:
            return str(secured.get_remote_peer())
        finally:
            with trio.CancelScope(shield=True):
                await secured.close()
    finally:
        with trio.CancelScope(shield=True):
            await raw.close()


_NAMES = {"dns": 0, "dns4": socket.AF_INET, "dns6": socket.AF_INET6}


async def resolve_names(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Addresses with a DNS name (``/dns4/peer.example/tcp/4001``) resolved by the system's resolver.

    py-libp2p 0.8.1 resolves them itself, through a DNS client that asks the name servers
    only: names in /etc/hosts (``localhost``) or that need the search domains of
    /etc/resolv.conf (a short service name in a pod or a compose network) do not resolve
    there.  ``getaddrinfo`` does what every other program on the host does.  IP addresses
    pass through; a name that does not resolve is left out.
    """
    result: list[multiaddr.Multiaddr] = []
    for addr in addrs:
        parts = str(addr).strip("/").split("/")
        if len(parts) < 4 or parts[0] not in _NAMES or parts[2] != "tcp":
            result.append(addr)
            continue
        try:
            infos = await trio.socket.getaddrinfo(parts[1], int(parts[3]), _NAMES[parts[0]], socket.SOCK_STREAM)
        except OSError as exc:
            log.debug("resolving %s: %s", addr, exc)
            continue
        rest = "/" + "/".join(parts[4:]) if len(parts) > 4 else ""
        for family, _, _, _, sockaddr in infos:
            kind = "ip4" if family == socket.AF_INET else "ip6"
            # typeshed allows a (int, bytes) address for other families; AF_INET/AF_INET6 give (text, port, ...)
            ip, port = str(sockaddr[0]), int(sockaddr[1])
            text = f"/{kind}/{ip}/tcp/{port}{rest}"
            if multiaddr.Multiaddr(text) not in result:
                result.append(multiaddr.Multiaddr(text))
    return result
