"""The sidecar's composition root and its start-up / shutdown order.

The queue's database is opened first (a locked, damaged or newer database
stops the start with one line), then the task queue is built around it, so
that its task types are in the node's capabilities before the node says
hello to anyone.  The subsystems then start nested, each returning from
``nursery.start`` only once ready (Trio's ``task_status``)::

    admin HTTP  ⊃  libp2p node (+ mounted tool collection)  ⊃  bridge  ⊃  task queue (+ workflows)

Shutdown on SIGTERM/SIGINT undoes the nesting from the inside out:

    stop accepting calls and claiming tasks  ->  drain in-flight calls and running tasks (up to the grace
    period)  ->  cancel the queue: attempts still running hand their leases back, to this node's store or
    to remote owners over the still-running node  ->  cancel the bridge  ->  the node  ->  admin  ->  exit 0
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import Any

import trio

from p2p_sidecar import __version__
from p2p_sidecar.admin import AdminServer
from p2p_sidecar.bridge_server import BridgeServer
from p2p_sidecar.dashboard import DashboardData
from p2p_sidecar.errors import StartupError
from p2p_sidecar.metrics import SidecarMetrics
from p2p_sidecar.node.host import Node
from p2p_sidecar.node.metrics import NodeMetrics
from p2p_sidecar.node.peers import PeerState
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.taskqueue import QueueService, TaskStore, register_queue_tools
from p2p_sidecar.taskqueue.peer_rpc import NodePeerRpc
from p2p_sidecar.tools import ToolCatalog
from p2p_sidecar.tools.bootstrap import register_bootstrap_tools
from p2p_sidecar.tools.catalog import CatalogTools
from p2p_sidecar.tools.collection import load_tool_collection
from p2p_sidecar.tools.peers import register_peer_tools
from p2p_sidecar.tools.remote import register_remote_tools
from p2p_sidecar.tools.service import register_service_tools
from p2p_sidecar.workflows import WorkflowEngine, register_workflow_tools
from shared_schema import sd_notify

log = logging.getLogger(__name__)


def prepare_data_dir(settings: SidecarSettings) -> None:
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(f"SIDECAR_DATA_DIR {path} cannot be created: {exc.strerror}") from None
    # A real write, not os.access: access() answers for permissions, but a read-only mount, a full disk or an
    # immutable directory show up only when a file is actually created.
    probe = path / f".write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"SIDECAR_DATA_DIR {path} is not writable: {exc.strerror}") from None


class Sidecar:
    """The subsystems of one sidecar process, and the state its status tools report."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.metrics = SidecarMetrics()
        self.catalog = ToolCatalog()
        self.bridge = BridgeServer(settings, self.catalog, self.metrics, node_info=self.node_summary)
        self.ready = False
        self.queue: QueueService | None = None
        self.workflows: WorkflowEngine | None = None
        self.node = Node(
            settings,
            NodeMetrics(self.metrics.registry),
            gateway_tools=self._gateway_tools,
            gateway_connected=lambda: bool(self.bridge.gateways),
            call_gateway=lambda tool, args, timeout: self.bridge.call_gateway(tool, args, timeout=timeout),
        )
        register_service_tools(self.catalog, status=self.status, peers=self._peers)
        register_peer_tools(self.catalog, self.node)
        register_bootstrap_tools(self.catalog, self.node)
        register_remote_tools(self.catalog, self.node)
        self.dashboard = DashboardData(self)
        self.admin = AdminServer(settings, self.metrics, self.health, self.dashboard.snapshot)

    def _build_queue(self, store: TaskStore) -> QueueService:
        """The queue, its workflows and their tools, around an open store; advertises the task types it runs."""
        queue = QueueService(
            self.settings,
            store,
            rpc=NodePeerRpc(self.node),
            call_gateway=self.bridge.call_gateway,
            local_tools=CatalogTools(self.catalog),
            on_limit=lambda limit: self.metrics.limit_rejections.labels(limit).inc(),
        )
        register_queue_tools(self.catalog, queue)
        self.metrics.bind_queue(queue)
        self.workflows = WorkflowEngine(queue)
        register_workflow_tools(self.catalog, self.workflows)
        return queue

    def _gateway_tools(self) -> list[str]:
        return self.bridge.local_tools()

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
            "queue": self.queue.store.counts() if self.queue is not None else None,
            "p2p": {
                "peer_id": self.node.peer_id,
                "listen_addrs": self.node.listen_addrs,
                "announce_addrs": self.node.advertised_addrs(),
                "peers": {state.value: count for state in PeerState if (count := self.node.table.count(state))},
                "remote_tools_served": self.node.capabilities.served_tools(),
            },
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        body = {"status": "ok" if self.ready else "starting", "uptime_s": round(time.time() - self.started_at, 3)}
        body.update(self.status())
        return self.ready, body

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        with (
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
            TaskStore.open(
                settings.data_dir / "queue.db",
                sync=settings.queue_sync,
                max_result_bytes=settings.task_max_result_bytes,
            ) as store,
        ):
            queue = self.queue = self._build_queue(store)
            async with trio.open_nursery() as admin:
                await admin.start(self.admin.run)
                async with trio.open_nursery() as node:
                    await node.start(self.node.run)
                    await load_tool_collection(self.catalog, settings)
                    async with trio.open_nursery() as bridge:
                        await bridge.start(self.bridge.run)
                        async with trio.open_nursery() as work:
                            await work.start(queue.run)
                            self.ready = True
                            gc.freeze()  # the start-up heap (libp2p, schemas) lives as long as we do
                            log.info(
                                "sidecar ready (bridge %s, dashboard and admin on %s)",
                                settings.bridge_endpoint,
                                ", ".join(f"{url}/" for url in self.admin.bound),
                            )
                            sd_notify.notify("READY=1", f"STATUS=bridge on {settings.bridge_endpoint}")
                            task_status.started()
                            async for signum in signals:
                                log.info("received %s: draining", signal.Signals(signum).name)
                                break
                            await self._drain(queue)
                            work.cancel_scope.cancel()
                        bridge.cancel_scope.cancel()
                    node.cancel_scope.cancel()
                admin.cancel_scope.cancel()
        log.info("sidecar stopped")

    async def _drain(self, queue: QueueService) -> None:
        self.ready = False
        sd_notify.notify("STOPPING=1", "STATUS=draining in-flight work")
        self.bridge.stop_accepting()
        self.node.stop_accepting()
        queue.stop_claiming()  # running tasks may finish; what is left is released to the queue
        grace = self.settings.shutdown_grace_seconds
        with trio.move_on_after(grace) as scope:
            await self.bridge.wait_idle()
            await queue.wait_idle()
        if scope.cancelled_caught:
            log.warning(
                "grace period of %.1fs over: cancelling %d calls and %d tasks",
                grace,
                self.bridge.in_flight,
                queue.running_here,
            )


async def run(settings: SidecarSettings) -> None:
    prepare_data_dir(settings)
    try:
        await Sidecar(settings).serve()
    except* StartupError as group:
        # Trio wraps a child's start-up failure in (nested) exception groups; report the first one plainly.
        raise _first_leaf(group) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
