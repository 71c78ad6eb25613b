"""The sidecar's libp2p node: one long-lived host and the services around it.

``Node.run`` (started with ``await nursery.start(node.run)``) opens the peer
database, starts the py-libp2p host on ``SIDECAR_LISTEN_ADDRS``, serves our
protocol (``/mcp-p2p/rpc/1.0.0``) on it and runs, in its own nursery,
liveness, the connection manager, peer exchange and (if enabled) mDNS
discovery.  It reports started once it listens; dialling bootstrap peers
happens afterwards, so start-up never waits for the network.  When cancelled
it saves peer state and closes the host.

Built-in ops of our protocol: ``hello`` (who are you: addresses, version,
capabilities), ``ping``, ``peers`` (peer exchange) and ``call_tool`` (remote
tool calls, see ``remote_tools.py``).  Other subsystems add their own with
``node.rpc.register(op, handler)`` and call peers with ``node.call(...)``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import __version__ as libp2p_version
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2p_sidecar import __version__
from p2p_sidecar.errors import StartupError
from p2p_sidecar.node import identity, libp2p_host, peer_exchange
from p2p_sidecar.node.addresses import PeerAddr, parse_multiaddr, parse_peer_addr, parse_peer_list
from p2p_sidecar.node.capabilities import Capabilities
from p2p_sidecar.node.connections import Backoff, ConnectionManager
from p2p_sidecar.node.liveness import LivenessPolicy, LivenessService
from p2p_sidecar.node.membership import Membership, Offer, SecretFileError, read_secret
from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.node.peer_store import PeerStore, PeerStoreError
from p2p_sidecar.node.peers import LIVE_STATES, PeerRecord, PeerState, PeerTable
from p2p_sidecar.node.remote_tools import RemoteToolServer
from p2p_sidecar.node.rpc_client import RpcClient
from p2p_sidecar.node.rpc_server import RpcContext, RpcServer
from p2p_sidecar.node.wire import PROTOCOL_ID, WIRE_VERSION
from p2p_sidecar.settings import SidecarSettings
from shared_schema import BridgeError, ErrorCode

log = logging.getLogger(__name__)

FLUSH_EVERY = 5.0
MDNS_SCAN_EVERY = 2.0
ADDRESS_REFRESH_SECONDS = 30.0
"""How long ``advertised_addrs`` reuses its answer.  The addresses change with the listeners, and with a
wildcard bind also with this host's interfaces (a hostname lookup per refresh); building them costs about
100 µs of multiaddr parsing, which status probes would otherwise pay on every call."""
MAX_BOOTSTRAP_FILE_BYTES = 1024 * 1024

GatewayCall = Callable[[str, dict[str, Any], float], Awaitable[Any]]


NodeStartupError = StartupError
"""The node cannot start (key, listen address, bootstrap file); the message says which and why."""


class Node:
    def __init__(
        self,
        settings: SidecarSettings,
        metrics: NodeMetrics,
        *,
        gateway_tools: Callable[[], Iterable[str]],
        gateway_connected: Callable[[], bool],
        call_gateway: GatewayCall,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        try:
            self.key_pair, self.created_identity = identity.load_or_create(settings.data_dir)
        except identity.IdentityError as exc:
            raise NodeStartupError(str(exc)) from None
        self.peer_id = libp2p_host.peer_id_of(self.key_pair)
        secret = None
        if settings.network_secret_file is not None:
            try:
                secret = read_secret(settings.network_secret_file)
            except SecretFileError as exc:
                raise NodeStartupError(f"SIDECAR_NETWORK_SECRET_FILE: {exc}") from None
        self.membership = Membership(
            self.peer_id,
            allowlist=settings.peer_allowlist,
            secret=secret,
            on_refused=lambda reason: metrics.refused.labels(reason).inc(),
        )
        self.table = PeerTable(self.peer_id, settings.max_known_peers)
        metrics.bind_table(self.table)
        self.capabilities = Capabilities(settings.remote_tools_allow, gateway_tools)
        self.policy = LivenessPolicy(settings.peer_ping_interval, settings.peer_gone_timeout)
        self.rpc = RpcServer(
            max_bytes=settings.p2p_max_message_bytes,
            max_in_flight=settings.p2p_max_inbound_requests,
            max_streams_per_peer=settings.p2p_max_inbound_streams_per_peer,
            metrics=metrics,
            on_request=self._on_inbound_request,
            gate=self.membership.refusal,
        )
        self.client = RpcClient(
            self._open_stream,
            max_bytes=settings.p2p_max_message_bytes,
            streams_per_peer=settings.p2p_streams_per_peer,
            metrics=metrics,
        )
        self.remote_tools = RemoteToolServer(
            self.peer_id, self.capabilities, gateway_connected=gateway_connected, call_gateway=call_gateway
        )
        self.exchange = peer_exchange.PeerExchange(
            self.table,
            self._request_live,
            interval=settings.peer_exchange_interval,
            timeout=settings.p2p_request_timeout,
            on_learned=self._wake_connections,
        )
        self.connections = ConnectionManager(
            self.table,
            self._dial_record,
            target=settings.target_connections,
            backoff=Backoff(maximum=settings.redial_max_backoff),
            tick=min(1.0, settings.peer_ping_interval),
        )
        self.liveness = LivenessService(self.table, self.policy, self.ping_once, self._peer_gone)
        self.rpc.register("hello", self._op_hello)
        self.rpc.register("ping", self._op_ping)
        self.rpc.register(peer_exchange.OP, self.exchange.handle)
        self.rpc.register(RemoteToolServer.OP, self.remote_tools.handle)
        self.bootstrap: dict[str, tuple[PeerAddr, str]] = {}
        """Bootstrap peers by id: their address and where they came from (env, file, tool)."""
        self.host: BasicHost | None = None
        self.listen_addrs: list[str] = []
        self.started_at: float | None = None
        self._advertised: tuple[list[str], float, list[str]] | None = None
        """(listen_addrs, monotonic time, advertised addresses) of the last ``advertised_addrs``."""
        self._store: PeerStore | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.host is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        bootstrap = self._configured_bootstrap()
        libp2p_host.remove_connect_delay()
        libp2p_host.batch_window_updates()
        try:
            store = PeerStore.open(self.settings.data_dir)
        except PeerStoreError as exc:
            raise NodeStartupError(str(exc)) from None
        self._store = store
        try:
            for record in store.load():
                self.table.add(record)
            for peer, origin in bootstrap:
                self.add_bootstrap(peer, origin)
            host = libp2p_host.build_host(
                self.key_pair,
                announce=self.settings.announce_addrs,
                enable_mdns=self.settings.mdns,
                handshake_timeout=self.settings.p2p_handshake_timeout,
                max_connections=self.settings.p2p_max_connections,
            )
            listen = [multiaddr.Multiaddr(addr) for addr in self.settings.listen_addrs]
            async with host.run(listen):
                await self._serve(host, task_status)
        finally:
            self.host = None
            self._save()
            store.close()
            self._store = None

    async def _serve(self, host: BasicHost, task_status: trio.TaskStatus[None]) -> None:
        bound = [str(addr) for addr in host.get_transport_addrs()]
        if len(bound) < len(self.settings.listen_addrs):
            wanted = ", ".join(self.settings.listen_addrs)
            raise NodeStartupError(f"libp2p cannot listen on {wanted} (SIDECAR_LISTEN_ADDRS; address in use?)")
        await libp2p_host.stop_auto_connector(host)
        host.set_stream_handler(TProtocol(PROTOCOL_ID), self.rpc.handle_stream)
        self.host = host
        self.listen_addrs = bound
        self.started_at = time.time()
        log.info("libp2p node %s listening on %s", self.peer_id, ", ".join(bound))
        log.log(logging.INFO if self.membership.closed else logging.WARNING, "%s", self.membership.describe())
        async with trio.open_nursery() as nursery:
            await nursery.start(self.liveness.run)
            await nursery.start(self.exchange.run)
            await nursery.start(self.connections.run)
            nursery.start_soon(self._flush_loop)
            if self.settings.mdns:
                nursery.start_soon(self._mdns_loop, host)
            task_status.started()

    def stop_accepting(self) -> None:
        self.rpc.stop_accepting()

    def _configured_bootstrap(self) -> list[tuple[PeerAddr, str]]:
        peers = [(parse_peer_addr(addr), "env") for addr in self.settings.bootstrap_peers]
        path = self.settings.bootstrap_file
        if path is not None:
            good, bad = read_bootstrap_file(path)
            if bad:
                lines = ", ".join(map(str, bad[:10]))
                raise NodeStartupError(f"SIDECAR_BOOTSTRAP_FILE {path}: line(s) {lines} are not peer multiaddrs")
            peers.extend((peer, "file") for peer in good)
        return peers

    def add_bootstrap(self, peer: PeerAddr, origin: str) -> PeerRecord | None:
        """Remember a bootstrap peer: it is dialled now and re-dialled with backoff whenever it drops."""
        if peer.peer_id == self.peer_id:
            return None
        self.bootstrap[peer.peer_id] = (peer, origin)
        record = self.table.ensure(peer.peer_id, now=time.time(), source="bootstrap", addrs=[peer.addr])
        if record is not None and record.state is PeerState.DISCONNECTED:
            record.state = PeerState.KNOWN
        self._wake_connections()
        return record

    # -- persistence ------------------------------------------------------------------------
    def _save(self) -> None:
        """Write peer state; a failing disk is logged and retried at the next flush (it is a cache), never fatal."""
        if self._store is not None:
            evicted, self.table.evicted = self.table.evicted, []
            try:
                for peer_id in evicted:
                    self._store.forget(peer_id)
                self._store.save(self.table)
            except sqlite3.Error as exc:
                self.table.evicted.extend(evicted)
                log.warning("saving peer state to %s failed (kept in memory, retried): %s", self._store.path, exc)

    async def _flush_loop(self) -> None:
        assert self._store is not None
        try:
            self._store.prune()
        except sqlite3.Error as exc:
            log.warning("pruning old latency samples failed: %s", exc)
        while True:
            await trio.sleep(FLUSH_EVERY)
            self._save()

    def history(self, peer_id: str, hours: float) -> list[tuple[float, float]]:
        if self._store is None:
            return []
        return self._store.history(peer_id, time.time() - hours * 3600)

    # -- talking to peers -----------------------------------------------------------------------
    def _require_host(self) -> BasicHost:
        if self.host is None:
            raise BridgeError(ErrorCode.UNAVAILABLE, "the libp2p node is not running")
        return self.host

    async def _open_stream(self, peer_id: str) -> INetStream:
        host = self._require_host()
        try:
            return await host.new_stream(ID.from_base58(peer_id), [TProtocol(PROTOCOL_ID)])
        except trio.Cancelled:
            raise
        except Exception as exc:  # boundary: py-libp2p's dial and negotiation raise many unrelated types
            raise BridgeError(ErrorCode.UNAVAILABLE, f"cannot open a stream to {peer_id}: {_describe(exc)}") from exc

    async def call(self, peer_id: str, op: str, args: dict[str, Any], *, timeout: float) -> Any:
        """Send ``op`` to a peer (dialling it first if it is known but not connected); raises ``BridgeError``."""
        if peer_id == self.peer_id:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "that is this node's own peer id")
        record = self.table.get(peer_id)
        deadline = trio.current_time() + timeout
        if record is None or record.state not in LIVE_STATES:
            if record is None or not record.addrs:
                raise BridgeError(ErrorCode.UNAVAILABLE, f"peer {peer_id} is not known to this node (connect first)")
            await self.dial(record, timeout=timeout)
        return await self._request_live(peer_id, op, args, max(0.001, deadline - trio.current_time()))

    async def _request_live(self, peer_id: str, op: str, args: dict[str, Any], timeout: float) -> Any:
        result = await self.client.request(peer_id, op, args, timeout=timeout, idempotent=op in _IDEMPOTENT)
        record = self.table.get(peer_id)
        if record is not None:
            record.requests_out += 1
            self.policy.contact(record, trio.current_time(), time.time())
        return result

    async def ping_once(self, peer_id: str, timeout: float) -> float:
        """One round trip on our protocol (through the peer's event loop), in milliseconds."""
        deadline = trio.current_time() + timeout
        try:
            started = time.perf_counter()
            reply = await self.client.request(peer_id, "ping", {}, timeout=timeout, idempotent=True)
        except BridgeError as exc:
            if not (isinstance(exc.data, dict) and exc.data.get("hello_required")):
                raise
            # The peer does not count us as connected (it restarted, or hung up on us): introduce ourselves again.
            await self._hello(peer_id, max(0.001, deadline - trio.current_time()))
            started = time.perf_counter()
            reply = await self.client.request(
                peer_id, "ping", {}, timeout=max(0.001, deadline - trio.current_time()), idempotent=True
            )
        rtt_ms = (time.perf_counter() - started) * 1000
        record = self.table.get(peer_id)
        revision = reply.get("capabilities_revision") if isinstance(reply, dict) else None
        if record is not None and revision != record.capabilities_revision:
            await self._hello(peer_id, max(0.001, deadline - trio.current_time()))  # its capabilities changed
        return rtt_ms

    async def ping(self, peer_id: str, *, count: int, timeout: float) -> list[float]:
        """``count`` pings (dialling first if needed), all within ``timeout`` seconds; round trips in ms."""
        rtts: list[float] = []
        with trio.move_on_after(timeout) as scope:
            record = self.table.get(peer_id)
            if record is None or record.state not in LIVE_STATES:
                await self.call(peer_id, "ping", {}, timeout=timeout)  # dials a known peer that is not connected
            for _ in range(count):
                rtt = await self.ping_once(peer_id, max(0.001, scope.deadline - trio.current_time()))
                rtts.append(rtt)
                record = self.table.get(peer_id)
                if record is not None:
                    self.policy.pinged(record, trio.current_time(), time.time(), rtt)
        if not rtts:
            raise BridgeError(ErrorCode.TIMEOUT, f"peer {peer_id} did not answer a ping within {timeout:.3g}s")
        return rtts

    # -- dialling -------------------------------------------------------------------------------
    async def dial(self, record: PeerRecord, *, timeout: float | None = None) -> None:
        """Connect to a peer and exchange hellos, within ``timeout``; raises ``BridgeError``."""
        host = self._require_host()
        timeout = timeout or self.settings.p2p_request_timeout
        peer = ID.from_base58(record.peer_id)
        addrs = [parse_multiaddr(addr) for addr in record.addrs]
        outcome = "ok"
        try:
            with trio.move_on_after(timeout) as scope:
                host.get_peerstore().add_addrs(peer, addrs, int(max(3600, 4 * self.settings.peer_gone_timeout)))
                host.get_network().unblock_peer(peer)  # py-libp2p blocks re-dials for 60 s after a failure
                try:
                    await host.connect(PeerInfo(peer, addrs))
                except trio.Cancelled:
                    raise
                except Exception as exc:  # boundary: py-libp2p's dial path raises many unrelated types
                    raise BridgeError(
                        ErrorCode.UNAVAILABLE, f"cannot connect to {record.peer_id}: {_describe(exc)}"
                    ) from exc
                await self._hello(record.peer_id, max(0.001, scope.deadline - trio.current_time()))
            if scope.cancelled_caught:
                raise BridgeError(ErrorCode.TIMEOUT, f"connecting to {record.peer_id} took longer than {timeout:.3g}s")
        except BridgeError as exc:
            outcome = exc.code.value
            raise
        finally:
            self.metrics.dials.labels(outcome).inc()

    async def _dial_record(self, record: PeerRecord) -> None:
        await self.dial(record)

    def _wake_connections(self) -> None:
        self.connections.wake()

    # -- hello ------------------------------------------------------------------------------------
    def hello_body(self, *, member: bool = True) -> dict[str, Any]:
        """Who this node is; a peer outside a closed network is not told what it serves."""
        capabilities = self.capabilities.snapshot() if member else {"tools": [], "task_types": []}
        return {
            "version": __version__,
            "wire_version": WIRE_VERSION,
            "addrs": self.advertised_addrs(),
            "capabilities": capabilities,
            "capabilities_revision": self.capabilities.revision,
        }

    async def _hello(self, peer_id: str, timeout: float) -> None:
        offer: Offer | None = self.membership.offer(peer_id)
        body = self.hello_body()
        if offer is not None:
            body["auth"] = offer.wire
        reply = await self.client.request(peer_id, "hello", body, timeout=timeout, idempotent=True)
        self.membership.check_reply(peer_id, reply.get("auth") if isinstance(reply, dict) else None, offer)
        self._apply_hello(peer_id, reply, source="dialled")

    async def _op_hello(self, context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
        answer = self.membership.check_request(context.peer_id, args.get("auth"))
        self._apply_hello(context.peer_id, args, source="inbound")
        body = self.hello_body(member=self.membership.admits(context.peer_id))
        if answer is not None:
            body["auth"] = answer
        return body

    def _apply_hello(self, peer_id: str, body: Any, *, source: str) -> None:
        if not isinstance(body, dict):
            raise BridgeError(ErrorCode.BAD_FRAME, "hello must be a map")
        addrs = []
        for raw in body.get("addrs", [])[:16] if isinstance(body.get("addrs"), list) else []:
            if isinstance(raw, str):
                try:
                    addrs.append(parse_peer_addr(raw, peer_id=peer_id).addr)
                except ValueError:
                    continue
        record = self.table.ensure(peer_id, now=time.time(), source=source)
        if record is None:
            return
        if addrs:
            record.addrs = addrs
        capabilities = body.get("capabilities")
        if isinstance(capabilities, dict):
            record.capabilities = {
                key: [str(item) for item in value[:256]]
                for key, value in capabilities.items()
                if key in ("tools", "task_types") and isinstance(value, list)
            }
        revision = body.get("capabilities_revision")
        record.capabilities_revision = revision if isinstance(revision, str) else None
        version = body.get("version")
        record.version = version if isinstance(version, str) else None
        if self.policy.connected(record, trio.current_time(), time.time()):
            log.info("peer %s connected (%s, %s)", peer_id, source, ", ".join(record.addrs) or "no addresses")
            self.exchange.exchange_soon(peer_id)

    async def _op_ping(self, context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
        record = self.table.get(context.peer_id)
        if record is None or record.state not in LIVE_STATES:
            # Pings keep a connection we know about alive; one we do not (we restarted, or hung up) must
            # start with a hello so both sides agree it exists.
            raise BridgeError(ErrorCode.UNAVAILABLE, "say hello first", {"hello_required": True})
        return {"capabilities_revision": self.capabilities.revision}

    def _on_inbound_request(self, peer_id: str) -> None:
        record = self.table.get(peer_id)
        if record is not None:
            record.requests_in += 1
            self.policy.contact(record, trio.current_time(), time.time())

    # -- hanging up -------------------------------------------------------------------------------
    async def _peer_gone(self, record: PeerRecord) -> None:
        await self._close_connections(record.peer_id)
        self._wake_connections()

    async def _close_connections(self, peer_id: str) -> None:
        await self.client.drop(peer_id)
        if self.host is None:
            return
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except trio.Cancelled:
            raise
        except Exception as exc:  # boundary: closing a dead connection may raise anything; it is closed either way
            log.debug("closing the connection to %s: %s", peer_id, _describe(exc), exc_info=exc)

    async def disconnect(self, peer_id: str) -> PeerRecord:
        record = self.table.get(peer_id)
        if record is None:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, f"peer {peer_id} is not known to this node")
        record.state = PeerState.DISCONNECTED
        record.connected_since = None
        await self._close_connections(peer_id)
        return record

    # -- reporting --------------------------------------------------------------------------------
    def advertised_addrs(self) -> list[str]:
        if self.host is None:
            return []
        now = time.monotonic()
        cached = self._advertised
        if cached is None or cached[0] != self.listen_addrs or now - cached[1] > ADDRESS_REFRESH_SECONDS:
            suffix = f"/p2p/{self.peer_id}"
            addrs = [str(addr).removesuffix(suffix) for addr in self.host.get_addrs()]
            cached = self._advertised = (list(self.listen_addrs), now, addrs)
        return list(cached[2])

    def protocols(self) -> list[str]:
        if self.host is None:
            return []
        return sorted(str(protocol) for protocol in self.host.get_mux().get_protocols() if protocol)

    def info(self) -> dict[str, Any]:
        announce = self.advertised_addrs()
        return {
            "peer_id": self.peer_id,
            "running": self.running,
            "listen_addrs": list(self.listen_addrs),
            "announce_addrs": announce,
            "multiaddrs": [f"{addr}/p2p/{self.peer_id}" for addr in announce],
            "protocols": self.protocols(),
            "ops": self.rpc.ops,
            "version": __version__,
            "wire_protocol": PROTOCOL_ID,
            "libp2p_version": libp2p_version,
            "capabilities": self.capabilities.snapshot(),
            "peers": {state.value: self.table.count(state) for state in PeerState},
            "target_connections": self.settings.target_connections,
            "mdns": self.settings.mdns,
            "started_at": self.started_at,
            "membership": {
                "closed": self.membership.closed,
                "allowlist": len(self.settings.peer_allowlist),
                "network_secret": self.membership.uses_secret,
                "members_connected": sum(
                    self.membership.admits(record.peer_id) for record in self.table.in_state(PeerState.CONNECTED)
                ),
            },
        }

    def summary(self) -> dict[str, Any]:
        """The short form for /health and the bridge catalog."""
        return {
            "peer_id": self.peer_id,
            "running": self.running,
            "listen_addrs": list(self.listen_addrs),
            "connected_peers": self.table.count(PeerState.CONNECTED),
        }

    # -- mDNS ---------------------------------------------------------------------------------------
    async def _mdns_loop(self, host: BasicHost) -> None:
        """py-libp2p's mDNS only fills its own peerstore; adopt the peers it finds as KNOWN."""
        peerstore = host.get_peerstore()
        while True:
            await trio.sleep(MDNS_SCAN_EVERY)
            for peer in peerstore.peers_with_addrs():
                peer_id = str(peer)
                if peer_id == self.peer_id or self.table.get(peer_id) is not None:
                    continue
                addrs = [str(addr) for addr in peerstore.addrs(peer) if "/tcp/" in str(addr)]
                if addrs and self.table.ensure(peer_id, now=time.time(), source="mdns", addrs=addrs):
                    log.info("mDNS found peer %s", peer_id)
                    self._wake_connections()


_IDEMPOTENT = frozenset({"hello", "ping", peer_exchange.OP})


def read_bootstrap_file(path: Path) -> tuple[list[PeerAddr], list[int]]:
    """Peer multiaddrs from a file (one per line, ``#`` comments); raises ``NodeStartupError`` if unreadable."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BOOTSTRAP_FILE_BYTES + 1)
    except OSError as exc:
        raise NodeStartupError(f"cannot read bootstrap file {path}: {exc.strerror}") from None
    if len(raw) > MAX_BOOTSTRAP_FILE_BYTES:
        raise NodeStartupError(f"bootstrap file {path} is larger than {MAX_BOOTSTRAP_FILE_BYTES} bytes")
    return parse_peer_list(raw.decode("utf-8", errors="replace").splitlines())


def _describe(exc: BaseException) -> str:
    """A one-line reason from py-libp2p's nested exceptions (the useful part is often the cause)."""
    parts = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = str(current).strip()
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__
    return "; ".join(parts)[:300] or type(exc).__name__
