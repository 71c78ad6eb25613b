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

Not every libp2p peer serves our protocol: a plain libp2p node answers ``na``
to it, and a client-only implementation opens streams of it without serving
any.  Such a peer is kept as what it is (``PeerRecord.serves_rpc`` False,
``rpc`` "client" or "none" in ``peer_list``): connected while its libp2p
connection lives (checked with libp2p's own ping), never sent our requests,
never dialled for the protocol, and hung up on by the connection manager when
it is neither wanted nor using us (see ``connections.py``).
"""

from __future__ import annotations

import logging
import random
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
from p2p_sidecar.node.addresses import PeerAddr, parse_bootstrap_entry, parse_multiaddr, parse_peer_list
from p2p_sidecar.node.budget import PartialFrameBudget
from p2p_sidecar.node.capabilities import Capabilities
from p2p_sidecar.node.connections import Backoff, ConnectionManager, Retention
from p2p_sidecar.node.hello import Hello, parse_hello
from p2p_sidecar.node.liveness import LivenessPolicy, LivenessService
from p2p_sidecar.node.membership import (
    SECRET_FILE,
    Membership,
    Offer,
    SecretFileError,
    load_or_create_secret,
    read_secret,
)
from p2p_sidecar.node.memory import HeapTrimmer
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
HELLO_GRACE = 2.0
"""Seconds a peer that connected to us has to say hello before we greet it (and so learn what it is)."""

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
        secret, source, self.created_secret = network_secret(settings)
        self.membership = Membership(
            self.peer_id,
            allowlist=settings.peer_allowlist,
            secret=secret,
            secret_source=source,
            on_refused=lambda reason: metrics.refused.labels(reason).inc(),
        )
        self.table = PeerTable(self.peer_id, settings.max_known_peers)
        metrics.bind_table(self.table)
        self.capabilities = Capabilities(settings.remote_tools_allow, gateway_tools)
        self.policy = LivenessPolicy(settings.peer_ping_interval, settings.peer_gone_timeout)
        self.budget = PartialFrameBudget(
            per_peer=settings.p2p_max_partial_bytes_per_peer, total=settings.p2p_max_partial_bytes
        )
        metrics.bind_budget(self.budget)
        self.trimmer = HeapTrimmer(self.budget)
        self.rpc = RpcServer(
            max_bytes=settings.p2p_max_message_bytes,
            max_in_flight=settings.p2p_max_inbound_requests,
            max_streams_per_peer=settings.p2p_max_inbound_streams_per_peer,
            metrics=metrics,
            on_request=self._on_inbound_request,
            gate=self.membership.refusal,
            budget=self.budget,
            frame_timeout=settings.p2p_frame_timeout,
            introduced=self._introduced,
        )
        metrics.bind_streams(lambda: self.rpc.open_streams)
        self.client = RpcClient(
            self._open_stream,
            max_bytes=settings.p2p_max_message_bytes,
            streams_per_peer=settings.p2p_streams_per_peer,
            metrics=metrics,
            budget=self.budget,
            frame_timeout=settings.p2p_frame_timeout,
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
            retention=Retention(
                forget_after_failures=settings.peer_forget_after_failures,
                max_age=settings.peer_max_age,
                idle_timeout=settings.peer_idle_timeout,
            ),
            hang_up=self._hang_up,
        )
        self.liveness = LivenessService(self.table, self.policy, self.ping_once, self._peer_gone)
        self.rpc.register("hello", self._op_hello)
        self.rpc.register("ping", self._op_ping)
        self.rpc.register(peer_exchange.OP, self.exchange.handle)
        self.rpc.register(RemoteToolServer.OP, self.remote_tools.handle)
        self.bootstrap: dict[str, tuple[PeerAddr, str]] = {}
        """Bootstrap peers by id: their address and where they came from (env, file, tool)."""
        self.unresolved_bootstrap: dict[str, str] = {}
        """Bootstrap addresses given without a peer id, not dialled yet: address -> where it came from."""
        self.host: BasicHost | None = None
        self.listen_addrs: list[str] = []
        self.started_at: float | None = None
        self._advertised: tuple[list[str], float, list[str]] | None = None
        """(listen_addrs, monotonic time, advertised addresses) of the last ``advertised_addrs``."""
        self._store: PeerStore | None = None
        self._nursery: trio.Nursery | None = None
        self._no_libp2p_ping: set[str] = set()
        """Peers that refused libp2p's ping too: alive while their connection is open."""

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
        host.get_network().register_notifee(
            libp2p_host.ConnectionEvents(self._on_connection_opened, self._on_connection_closed)
        )
        self.host = host
        self.listen_addrs = bound
        self.started_at = time.time()
        log.info("libp2p node %s listening on %s", self.peer_id, ", ".join(bound))
        log.log(logging.INFO if self.membership.closed else logging.WARNING, "%s", self.membership.describe())
        if self.created_secret:
            log.info(
                "made a network secret for this node in %s; `python -m p2p_sidecar join` prints what another node "
                "needs to join",
                self.membership.secret_source,
            )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.liveness.run)
            await nursery.start(self.exchange.run)
            await nursery.start(self.connections.run)
            nursery.start_soon(self._flush_loop)
            await nursery.start(self.trimmer.run)
            if self.unresolved_bootstrap:
                nursery.start_soon(self._resolve_bootstrap, host)
            if self.settings.mdns:
                nursery.start_soon(self._mdns_loop, host)
            task_status.started()

    def stop_accepting(self) -> None:
        self.rpc.stop_accepting()

    def _configured_bootstrap(self) -> list[tuple[PeerAddr, str]]:
        peers: list[tuple[PeerAddr, str]] = []
        for text in self.settings.bootstrap_peers:
            entry = parse_bootstrap_entry(text)
            if isinstance(entry, PeerAddr):
                peers.append((entry, "env"))
            else:
                self.unresolved_bootstrap[entry] = "env"
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

    async def _resolve_bootstrap(self, host: BasicHost) -> None:
        """Learn the peer id at each bootstrap address given without one, then treat it as any bootstrap peer."""
        backoff = Backoff(maximum=self.settings.redial_max_backoff)
        failures: dict[str, int] = {}
        next_try: dict[str, float] = {}
        while self.unresolved_bootstrap:
            for addr, origin in list(self.unresolved_bootstrap.items()):
                if next_try.get(addr, 0.0) > trio.current_time():
                    continue
                try:
                    with trio.fail_after(self.settings.p2p_handshake_timeout):
                        peer_id = await libp2p_host.learn_peer_id(host, parse_multiaddr(addr))
                except trio.TooSlowError:
                    reason = f"no handshake within {self.settings.p2p_handshake_timeout:.3g}s"
                except Exception as exc:  # boundary: py-libp2p's dial and handshake raise many unrelated types
                    reason = _describe(exc)
                    log.debug("learning the peer id at %s: %s", addr, reason, exc_info=exc)
                else:
                    del self.unresolved_bootstrap[addr]
                    if peer_id == self.peer_id:
                        log.info("bootstrap address %s is this node itself: skipped", addr)
                    else:
                        log.info("bootstrap address %s is peer %s", addr, peer_id)
                        self.add_bootstrap(PeerAddr(peer_id, addr), origin)
                    continue
                failures[addr] = failures.get(addr, 0) + 1
                delay = backoff.delay(failures[addr], random.random())
                next_try[addr] = trio.current_time() + delay
                if failures[addr] == 1 or failures[addr] % 10 == 0:
                    log.info(
                        "bootstrap address %s: cannot learn its peer id yet (%d tries, next in %.1fs): %s",
                        addr,
                        failures[addr],
                        delay,
                        reason,
                    )
            await trio.sleep(0.2)

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
            if libp2p_host.protocol_refused(exc):
                self._not_serving(peer_id)
                raise BridgeError(
                    ErrorCode.UNAVAILABLE, f"peer {peer_id} does not serve {PROTOCOL_ID}", {"serves_rpc": False}
                ) from None
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
        if record.serves_rpc is False:
            role = "a client-only peer" if record.requests_in else "a libp2p peer without it"
            raise BridgeError(
                ErrorCode.UNAVAILABLE,
                f"peer {peer_id} does not serve {PROTOCOL_ID} ({role}): it cannot be sent {op!r}",
                {"serves_rpc": False},
            )
        return await self._request_live(peer_id, op, args, max(0.001, deadline - trio.current_time()))

    async def _request_live(self, peer_id: str, op: str, args: dict[str, Any], timeout: float) -> Any:
        result = await self._request_introduced(peer_id, op, args, timeout)
        record = self.table.get(peer_id)
        if record is not None:
            record.requests_out += 1
            self.policy.contact(record, trio.current_time(), time.time())
        return result

    async def _request_introduced(self, peer_id: str, op: str, args: dict[str, Any], timeout: float) -> Any:
        """A request; if the peer wants a hello first (it restarted, or hung up on us), one hello and one retry.

        The retry is safe for every op: a peer asking for a hello did not run the request.
        """
        deadline = trio.current_time() + timeout
        idempotent = op in _IDEMPOTENT
        try:
            result = await self.client.request(peer_id, op, args, timeout=timeout, idempotent=idempotent)
        except BridgeError as exc:
            if not (isinstance(exc.data, dict) and exc.data.get("hello_required")) or op == "hello":
                raise
            await self._hello(peer_id, max(0.001, deadline - trio.current_time()))
            result = await self.client.request(
                peer_id, op, args, timeout=max(0.001, deadline - trio.current_time()), idempotent=idempotent
            )
        record = self.table.get(peer_id)
        if record is not None and not record.serves_rpc:
            record.serves_rpc = True  # it answered a request of ours
        return result

    async def ping_once(self, peer_id: str, timeout: float) -> float | None:
        """One round trip on our protocol (through the peer's event loop), in milliseconds.

        A peer that does not serve our protocol gets libp2p's own ping instead; one that
        refuses that too counts as alive while its connection is open (None: no round trip).
        """
        record = self.table.get(peer_id)
        if record is not None and record.serves_rpc is False:
            return await self._ping_without_rpc(peer_id, timeout)
        deadline = trio.current_time() + timeout
        started = time.perf_counter()
        reply = await self._request_introduced(peer_id, "ping", {}, timeout)
        rtt_ms = (time.perf_counter() - started) * 1000
        record = self.table.get(peer_id)
        revision = reply.get("capabilities_revision") if isinstance(reply, dict) else None
        if record is not None and revision != record.capabilities_revision:
            await self._hello(peer_id, max(0.001, deadline - trio.current_time()))  # its capabilities changed
        return rtt_ms

    async def _ping_without_rpc(self, peer_id: str, timeout: float) -> float | None:
        host = self._require_host()
        if not libp2p_host.connected(host, peer_id):
            raise BridgeError(ErrorCode.UNAVAILABLE, f"no libp2p connection to {peer_id}")
        if peer_id in self._no_libp2p_ping:
            return None
        with trio.move_on_after(timeout):
            try:
                return await libp2p_host.libp2p_ping(host, peer_id)
            except trio.Cancelled:
                raise
            except Exception as exc:  # boundary: py-libp2p's stream and negotiation errors
                if libp2p_host.protocol_refused(exc):
                    self._no_libp2p_ping.add(peer_id)
                    return None
                raise BridgeError(ErrorCode.UNAVAILABLE, f"libp2p ping to {peer_id}: {_describe(exc)}") from exc
        raise BridgeError(ErrorCode.TIMEOUT, f"peer {peer_id} did not answer libp2p's ping within {timeout:.3g}s")

    async def ping(self, peer_id: str, *, count: int, timeout: float) -> list[float]:
        """``count`` pings (dialling first if needed), all within ``timeout`` seconds; round trips in ms."""
        rtts: list[float] = []
        with trio.move_on_after(timeout) as scope:
            record = self.table.get(peer_id)
            if record is None or record.state not in LIVE_STATES:
                await self.call(peer_id, "ping", {}, timeout=timeout)  # dials a known peer that is not connected
            for _ in range(count):
                rtt = await self.ping_once(peer_id, max(0.001, scope.deadline - trio.current_time()))
                record = self.table.get(peer_id)
                if record is not None:
                    self.policy.pinged(record, trio.current_time(), time.time(), rtt)
                if rtt is None:  # alive, but it answers no ping we speak: there is no round trip to time
                    raise BridgeError(
                        ErrorCode.UNAVAILABLE,
                        f"peer {peer_id} is connected but answers neither our protocol nor libp2p's ping",
                    )
                rtts.append(rtt)
        if not rtts:
            raise BridgeError(ErrorCode.TIMEOUT, f"peer {peer_id} did not answer a ping within {timeout:.3g}s")
        return rtts

    # -- dialling -------------------------------------------------------------------------------
    async def dial(self, record: PeerRecord, *, timeout: float | None = None) -> None:
        """Connect to a peer and exchange hellos, within ``timeout``; raises ``BridgeError``."""
        host = self._require_host()
        timeout = timeout or self.settings.p2p_request_timeout
        peer = ID.from_base58(record.peer_id)
        configured = self.bootstrap.get(record.peer_id)
        # a bootstrap peer's configured address stays worth trying (it may be a name that outlives the IP it told us)
        texts = list(dict.fromkeys([*record.addrs, *([configured[0].addr] if configured else [])]))
        outcome = "ok"
        try:
            with trio.move_on_after(timeout) as scope:
                addrs = await libp2p_host.resolve_names([parse_multiaddr(addr) for addr in texts])
                if not addrs:
                    raise BridgeError(
                        ErrorCode.UNAVAILABLE, f"cannot connect to {record.peer_id}: none of its addresses resolves"
                    )
                host.get_peerstore().add_addrs(peer, addrs, int(max(3600, 4 * self.settings.peer_gone_timeout)))
                libp2p_host.unblock_peer(host, peer)
                try:
                    await host.connect(PeerInfo(peer, addrs))
                except trio.Cancelled:
                    raise
                except Exception as exc:  # boundary: py-libp2p's dial path raises many unrelated types
                    raise BridgeError(
                        ErrorCode.UNAVAILABLE, f"cannot connect to {record.peer_id}: {_describe(exc)}"
                    ) from exc
                try:
                    await self._hello(record.peer_id, max(0.001, scope.deadline - trio.current_time()))
                except BridgeError as exc:
                    if not (isinstance(exc.data, dict) and exc.data.get("serves_rpc") is False):
                        raise
                    self._connected_without_rpc(record.peer_id, "dialled")  # a libp2p peer all the same
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
        try:
            hello = parse_hello(reply, peer_id)
        except BridgeError as exc:
            code = exc.code if exc.code is ErrorCode.VERSION_MISMATCH else ErrorCode.BAD_FRAME
            raise BridgeError(
                code, f"peer {peer_id} answered hello with a body this node refuses: {exc.message}"
            ) from None
        self.membership.check_reply(peer_id, hello.auth, offer)
        self._apply_hello(peer_id, hello, source="dialled")

    async def _op_hello(self, context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
        hello = parse_hello(args, context.peer_id)  # refused with invalid_arguments / version_mismatch
        answer = self.membership.check_request(context.peer_id, hello.auth)
        self._apply_hello(context.peer_id, hello, source="inbound")
        body = self.hello_body(member=self.membership.admits(context.peer_id))
        if answer is not None:
            body["auth"] = answer
        return body

    def _apply_hello(self, peer_id: str, hello: Hello, *, source: str) -> None:
        record = self.table.ensure(peer_id, now=time.time(), source=source)
        if record is None:
            return
        if hello.addrs:
            record.addrs = list(hello.addrs)
        record.capabilities = hello.capabilities
        record.capabilities_revision = hello.capabilities_revision
        record.version = hello.version
        if source == "dialled":
            record.serves_rpc = True  # it answered our hello
        if self.policy.connected(record, trio.current_time(), time.time()):
            log.info("peer %s connected (%s, %s)", peer_id, source, ", ".join(record.addrs) or "no addresses")
            if record.serves_rpc is not False:
                self.exchange.exchange_soon(peer_id)  # also finds out whether an inbound peer serves our protocol

    async def _op_ping(self, context: RpcContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"capabilities_revision": self.capabilities.revision}

    def _introduced(self, peer_id: str) -> bool:
        """Whether the two nodes exchanged a hello (either way) and this one still counts the peer as connected."""
        record = self.table.get(peer_id)
        return record is not None and record.state in LIVE_STATES

    def _on_inbound_request(self, peer_id: str) -> None:
        record = self.table.get(peer_id)
        if record is not None:
            record.requests_in += 1
            record.last_used_mono = trio.current_time()
            self.policy.contact(record, trio.current_time(), time.time())

    # -- peers that do not serve our protocol ------------------------------------------------------
    def _not_serving(self, peer_id: str) -> None:
        record = self.table.get(peer_id)
        if record is not None and record.serves_rpc is not False:
            record.serves_rpc = False
            role = "a client-only peer: it uses the protocol" if record.requests_in else "a plain libp2p peer"
            log.info("peer %s does not serve %s (%s); none of our requests go to it", peer_id, PROTOCOL_ID, role)

    def _connected_without_rpc(self, peer_id: str, source: str) -> None:
        record = self.table.ensure(peer_id, now=time.time(), source=source)
        if record is None:
            return
        record.serves_rpc = False
        if self.policy.connected(record, trio.current_time(), time.time()):
            log.info("peer %s connected (%s): a libp2p peer that does not serve %s", peer_id, source, PROTOCOL_ID)

    async def _on_connection_opened(self, peer_id: str, inbound: bool) -> None:
        if inbound and self._nursery is not None and peer_id != self.peer_id:
            self._nursery.start_soon(self._greet_later, peer_id)

    async def _greet_later(self, peer_id: str) -> None:
        """A peer connected to us: if it has not said hello after a grace period, we do (and so learn what it is)."""
        await trio.sleep(HELLO_GRACE)
        record = self.table.get(peer_id)
        if record is not None and record.state in LIVE_STATES:
            return
        if self.host is None or not libp2p_host.connected(self.host, peer_id):
            return
        try:
            await self._hello(peer_id, self.settings.p2p_request_timeout)
        except BridgeError as exc:
            if isinstance(exc.data, dict) and exc.data.get("serves_rpc") is False:
                self._connected_without_rpc(peer_id, "inbound")
            else:
                log.debug("greeting peer %s that connected to us: %s", peer_id, exc.message)

    async def _on_connection_closed(self, peer_id: str, inbound: bool) -> None:
        record = self.table.get(peer_id)
        if record is None or record.serves_rpc is not False or record.state not in LIVE_STATES:
            return  # a peer of our protocol is judged by liveness (py-libp2p's own view lags)
        if self.host is not None and libp2p_host.connected(self.host, peer_id):
            return
        record.state = PeerState.GONE
        record.connected_since = None
        record.last_error = "its libp2p connection closed"
        self._no_libp2p_ping.discard(peer_id)
        role = "client-only" if record.requests_in else "without"
        log.info("peer %s disconnected (a libp2p peer %s %s)", peer_id, role, PROTOCOL_ID)
        self._wake_connections()

    async def _hang_up(self, record: PeerRecord) -> None:
        await self._close_connections(record.peer_id)

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
            "partial_frames": {"held_bytes": self.budget.held, "peers": self.budget.peers},
            "membership": {
                "closed": self.membership.closed,
                "allowlist": len(self.settings.peer_allowlist),
                "network_secret": self.membership.uses_secret,
                "secret_source": self.membership.secret_source or None,
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
        """py-libp2p's mDNS only fills its own peerstore; adopt the peers it finds as KNOWN.

        That peerstore also holds what identify told us about peers connected to us (their listen addresses,
        whatever their hello said): a peer with a connection is not an mDNS find, and is left alone.
        """
        peerstore = host.get_peerstore()
        while True:
            await trio.sleep(MDNS_SCAN_EVERY)
            for peer in peerstore.peers_with_addrs():
                peer_id = str(peer)
                if peer_id == self.peer_id or self.table.get(peer_id) is not None:
                    continue
                if libp2p_host.connected(host, peer_id):
                    continue
                addrs = [str(addr) for addr in peerstore.addrs(peer) if "/tcp/" in str(addr)]
                if addrs and self.table.ensure(peer_id, now=time.time(), source="mdns", addrs=addrs):
                    log.info("mDNS found peer %s", peer_id)
                    self._wake_connections()


_IDEMPOTENT = frozenset({"hello", "ping", peer_exchange.OP})


def network_secret(settings: SidecarSettings) -> tuple[bytes | None, str, bool]:
    """The network secret, where it comes from, and whether it was made just now.

    Closed unless opened: with no secret configured and no allowlist, the node uses (or
    makes, on first start) ``network.secret`` in its data directory.
    """
    if settings.network_open:
        return None, "", False
    if settings.network_secret_file is not None:
        try:
            return read_secret(settings.network_secret_file), "SIDECAR_NETWORK_SECRET_FILE", False
        except SecretFileError as exc:
            raise NodeStartupError(f"SIDECAR_NETWORK_SECRET_FILE: {exc}") from None
    if settings.network_secret is not None:
        return settings.network_secret.get_secret_value().strip().encode(), "SIDECAR_NETWORK_SECRET", False
    if settings.peer_allowlist:
        return None, "", False  # closed by the allowlist alone, as configured
    try:
        secret, created = load_or_create_secret(settings.data_dir)
    except SecretFileError as exc:
        raise NodeStartupError(f"the network secret of SIDECAR_DATA_DIR: {exc}") from None
    return secret, str(settings.data_dir / SECRET_FILE), created


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
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = str(current).strip()
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__
    return "; ".join(parts)[:300] or type(exc).__name__
