"""The sidecar's composition root and its start-up / shutdown order.

Start-up is the nesting order of ``nursery.start`` calls, each returning only
once its subsystem is ready (Trio's ``task_status``): admin HTTP, then the
libp2p node (listening; it dials its peers afterwards), then the task queue
(with its workers and workflows), then the bridge.  Shutdown on SIGTERM/SIGINT
is the same nesting undone:

    stop accepting calls and claiming tasks  ->  drain in-flight calls and
    running tasks (up to the grace period; tasks still running are handed back to the queue)
    ->  cancel the queue (its releases reach remote owners over the live node)
    ->  cancel the root nursery  ->  sockets closed by their owners  ->  exit 0
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sqlite3
import time
from typing import Any

import trio

from p2p_sidecar import __version__
from p2p_sidecar.admin import AdminServer
from p2p_sidecar.bridge_server import BridgeServer, BridgeStartupError
from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.node.host import Node, NodeStartupError
from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.taskqueue import QueueService, register_queue_tools
from p2p_sidecar.taskqueue.peer_rpc import NodePeerRpc
from p2p_sidecar.taskqueue.store import StoreStartupError
from p2p_sidecar.tools import ToolCatalog
from p2p_sidecar.tools.bootstrap import register_bootstrap_tools
from p2p_sidecar.tools.collection import load_tool_collection
from p2p_sidecar.tools.peers import register_peer_tools
from p2p_sidecar.tools.remote import register_remote_tools
from p2p_sidecar.tools.service import register_service_tools
from p2p_sidecar.workflows import WorkflowEngine, register_workflow_tools
from shared_schema import sd_notify

log = logging.getLogger(__name__)


class SidecarStartupError(RuntimeError):
    """Something the sidecar needs at start-up is missing; the message says what."""


def prepare_data_dir(settings: SidecarSettings) -> None:
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SidecarStartupError(f"SIDECAR_DATA_DIR {path} cannot be created: {exc.strerror}") from None
    # A real write, not os.access: access() answers for permissions, but a read-only mount, a full disk or an
    # immutable directory show up only when a file is actually created.
    probe = path / f".write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise SidecarStartupError(f"SIDECAR_DATA_DIR {path} is not writable: {exc.strerror}") from None


class Sidecar:
    """The subsystems of one sidecar process, and the state its status tools report."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.metrics = SidecarMetrics()
        self.catalog = ToolCatalog()
        self.bridge = BridgeServer(settings, self.catalog, self.metrics, node_info=self.node_summary)
        self.admin = AdminServer(settings, self.metrics, self.health)
        self.ready = False
        self._queue_scope = trio.CancelScope()
        self._queue_stopped = trio.Event()
        try:
            self.node = Node(
                settings,
                NodeMetrics(self.metrics.registry),
                gateway_tools=self._gateway_tools,
                gateway_connected=lambda: self.bridge.pick_gateway() is not None,
                call_gateway=lambda tool, args, timeout: self.bridge.call_gateway(tool, args, timeout=timeout),
            )
        except NodeStartupError as exc:
            raise SidecarStartupError(str(exc)) from None
        register_service_tools(self.catalog, status=self.status, peers=self._peers)
        register_peer_tools(self.catalog, self.node)
        register_bootstrap_tools(self.catalog, self.node)
        register_remote_tools(self.catalog, self.node)
        try:
            # The queue serves its queue.* ops on the node and advertises the task types its workers run.
            self.queue = QueueService(
                settings,
                rpc=NodePeerRpc(self.node),
                call_gateway=self.bridge.call_gateway,
                on_limit=lambda limit: self.metrics.limit_rejections.labels(limit).inc(),
            )
        except StoreStartupError as exc:
            raise SidecarStartupError(str(exc)) from None
        try:
            self.workflows = WorkflowEngine(self.queue)
        except sqlite3.Error as exc:
            self.queue.store.close()
            raise SidecarStartupError(f"the task queue database {self.queue.store.path}: {exc}") from None
        register_queue_tools(self.catalog, self.queue)
        register_workflow_tools(self.catalog, self.workflows)

    def _gateway_tools(self) -> list[str]:
        link = self.bridge.pick_gateway()
        return link.local_tools if link is not None else []

    def _peers(self, limit: int) -> list[dict[str, Any]]:
        return [record.summary() for record in self.node.table.select(sort_by="last_seen")[:limit]]

    def node_summary(self) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid(), **self.node.summary()}

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "node": self.node_summary(),
            "bridge": {
                "endpoint": self.settings.bridge_endpoint,
                "gateways": len(self.bridge.gateways),
                "handled_calls": self.bridge.handled_calls,
                "in_flight": self.bridge.in_flight,
            },
            "tools": len(self.catalog),
            "queue": self.queue.store.counts(),
            "p2p": {
                "peer_id": self.node.peer_id,
                "listen_addrs": self.node.listen_addrs,
                "announce_addrs": self.node.advertised_addrs(),
                "peers": {state: count for state, count in self.node.info()["peers"].items() if count},
                "remote_tools_served": self.node.capabilities.served_tools(),
            },
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        body = {"status": "ok" if self.ready else "starting", "uptime_s": round(time.time() - self.started_at, 3)}
        body.update(self.status())
        return self.ready, body

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as root:
                await root.start(self.admin.run)
                await root.start(self.node.run)
                await load_tool_collection(self.catalog, self.settings)
                await root.start(self._run_queue)
                await root.start(self.bridge.run)
                self.ready = True
                gc.freeze()  # the start-up heap (libp2p, schemas) lives as long as we do: out of full collections
                log.info("sidecar ready (bridge %s, admin port %s)", self.settings.bridge_endpoint, self.admin.bound)
                sd_notify.notify("READY=1", f"STATUS=bridge on {self.settings.bridge_endpoint}")
                task_status.started()
                async for signum in signals:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    break
                await self._drain()
                # The queue stops first: attempts still running when the grace period ended hand their leases
                # back to remote owners while the network is still up.
                self._queue_scope.cancel()
                await self._queue_stopped.wait()
                root.cancel_scope.cancel()
        log.info("sidecar stopped")

    async def _run_queue(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._queue_scope:
                await self.queue.run(task_status=task_status)
        finally:
            self._queue_stopped.set()

    async def _drain(self) -> None:
        self.ready = False
        sd_notify.notify("STOPPING=1", "STATUS=draining in-flight work")
        self.bridge.stop_accepting()
        self.node.stop_accepting()
        self.queue.stop_claiming()  # running tasks may finish; what is left is released to the queue
        grace = self.settings.shutdown_grace_seconds
        with trio.move_on_after(grace) as scope:
            await self.bridge.wait_idle()
            await self.queue.wait_idle()
        if scope.cancelled_caught:
            log.warning(
                "grace period of %.1fs over: cancelling %d calls and %d tasks",
                grace,
                self.bridge.in_flight,
                self.queue.running_here,
            )


async def run(settings: SidecarSettings) -> None:
    prepare_data_dir(settings)
    sidecar = Sidecar(settings)
    try:
        await sidecar.serve()
    except* (NodeStartupError, BridgeStartupError, StoreStartupError) as group:
        # Trio wraps a child's start-up failure in (nested) exception groups; report the first one plainly.
        raise SidecarStartupError(str(_first_leaf(group))) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
