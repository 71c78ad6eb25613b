"""What the dashboard shows, read from the sidecar's parts: one JSON-able snapshot, built at most once a tick.

Everything here only reads: the node's peer table and membership, the
bridge's gateways, the queue's store, owner and workers, the workflow
engine.  Lists are bounded (the page must stay small whatever the network
holds), and the snapshot is cached for a fraction of the update interval, so
any number of open pages costs one build per tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio

from p2p_sidecar import __version__
from p2p_sidecar.bridge_server import BridgeServer
from p2p_sidecar.node.host import Node
from p2p_sidecar.settings import SidecarSettings
from p2p_sidecar.taskqueue import QueueService
from p2p_sidecar.taskqueue.model import TaskStatus
from p2p_sidecar.taskqueue.records import TaskRecord
from p2p_sidecar.taskqueue.views import describe_task
from p2p_sidecar.tools import ToolCatalog
from p2p_sidecar.workflows import WorkflowEngine

MAX_PEERS = 200
MAX_RUNNING = 50
MAX_RECENT = 12
MAX_FAILURES = 10
MAX_WORKFLOWS = 6
MAX_STEPS = 120
"""Steps drawn per workflow; a larger DAG is drawn up to here and says how many more it has."""
CHART_WINDOW_S = 300
SLOW_READS_EVERY_S = 5.0
"""Counts that scan the tasks table are refreshed this often, not every tick."""


class SidecarParts(Protocol):
    """What the dashboard reads (``p2p_sidecar.main.Sidecar`` has all of it)."""

    settings: SidecarSettings
    node: Node
    bridge: BridgeServer
    catalog: ToolCatalog
    queue: QueueService | None
    workflows: WorkflowEngine | None
    started_at: float
    ready: bool


T = TypeVar("T")


@dataclass
class _Cached(Generic[T]):
    at: float
    value: T


class DashboardData:
    def __init__(self, sidecar: SidecarParts, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._sidecar = sidecar
        self._clock = clock
        self._snapshot: _Cached[dict[str, Any]] | None = None
        self._completed_by_peer: _Cached[dict[str | None, int]] | None = None

    def snapshot(self, max_age: float = 0.25) -> dict[str, Any]:
        now = self._clock()
        if self._snapshot is None or now - self._snapshot.at > max_age:
            self._snapshot = _Cached(now, self._build())
        return self._snapshot.value

    # -- the parts -------------------------------------------------------------------------------------
    def _build(self) -> dict[str, Any]:
        return {
            "at": time.time(),
            "node": self._node(),
            "peers": self._peers(),
            "queue": self._queue(),
            "workflows": self._workflows(),
        }

    def _node(self) -> dict[str, Any]:
        sidecar = self._sidecar
        node, bridge = sidecar.node, sidecar.bridge
        link = bridge.pick_gateway()
        gateway: dict[str, Any] = {"connected": link is not None, "count": len(bridge.gateways)}
        if link is not None:
            gateway.update(
                pid=link.info.get("pid"),
                version=link.info.get("version"),
                local_tools=len(link.local_tools),
                last_seen_s=round(max(0.0, trio.current_time() - link.last_seen), 3),
            )
        return {
            "peer_id": node.peer_id,
            "addresses": [f"{addr}/p2p/{node.peer_id}" for addr in node.advertised_addrs()],
            "listen_addrs": list(node.listen_addrs),
            "version": __version__,
            "started_at": sidecar.started_at,
            "uptime_s": round(time.time() - sidecar.started_at, 1),
            "ready": sidecar.ready,
            "bridge": {
                "endpoint": sidecar.settings.bridge_endpoint,
                "in_flight": bridge.in_flight,
                "handled_calls": bridge.handled_calls,
            },
            "gateway": gateway,
            "membership": {"closed": node.membership.closed, "network_secret": node.membership.uses_secret},
            "tools": len(sidecar.catalog),
        }

    def _peers(self) -> list[dict[str, Any]]:
        node = self._sidecar.node
        completed = self._completed()
        running: dict[str, int] = {}
        queue = self._sidecar.queue
        if queue is not None:
            for peer in {record.peer_id for record in node.table}:
                held = queue.store.leases_held_by(peer)
                if held:
                    running[peer] = held
        peers = []
        for record in node.table.select(sort_by="last_seen")[:MAX_PEERS]:
            peers.append(
                {
                    "peer_id": record.peer_id,
                    "state": record.state.value,
                    "latency_ms": None if record.latency_ms is None else round(record.latency_ms, 2),
                    "addrs": record.addrs[:4],
                    "last_seen": record.last_seen,
                    "version": record.version,
                    "member": node.membership.admits(record.peer_id),
                    "tools": sorted(record.capabilities.get("tools", []))[:50],
                    "task_types": sorted(record.capabilities.get("task_types", []))[:50],
                    "completed_tasks": completed.get(record.peer_id, 0),
                    "running_tasks": running.get(record.peer_id, 0),
                    "sources": sorted(record.sources),
                }
            )
        return peers

    def _completed(self) -> dict[str | None, int]:
        queue = self._sidecar.queue
        if queue is None:
            return {}
        now = self._clock()
        cached = self._completed_by_peer
        if cached is None or now - cached.at > SLOW_READS_EVERY_S:
            cached = self._completed_by_peer = _Cached(now, queue.store.completed_by_peer())
        return cached.value

    def _queue(self) -> dict[str, Any] | None:
        queue = self._sidecar.queue
        if queue is None:
            return None
        store, owner, pool = queue.store, queue.owner, queue.pool
        local = queue.local_peer
        running = [self._task(record) for record in store.list(statuses=[TaskStatus.RUNNING], limit=MAX_RUNNING)]
        failures = [self._task(record) for record in store.list(statuses=[TaskStatus.FAILED], limit=MAX_FAILURES)]
        recent = [self._task(record) for record in store.list(limit=MAX_RECENT)]
        for_others = [
            {
                "task_id": run.lease.task_id,
                "task_type": run.lease.task_type,
                "owner": run.source.owner,
                "worker": worker.worker_id,
                "started_at": run.started_at,
                "progress": None if run.progress is None else run.progress.to_dict(),
            }
            for worker in pool.workers.values()
            for run in worker.running
            if run.source.owner is not None
        ][:MAX_RUNNING]
        return {
            "counts": store.counts(),
            "paused": owner.paused_reason is not None,
            "paused_reason": owner.paused_reason,
            "draining": owner.draining,
            "workers": len(pool.workers),
            "slots": pool.slots,
            "running_here": queue.running_here,
            "task_types": queue.executors.types,
            "per_s_60s": owner.completions.per_second(),
            "completions": owner.completions.series(CHART_WINDOW_S),
            "window_s": CHART_WINDOW_S,
            "completed_here": self._completed().get(None, 0),
            "running": running,
            "running_for_others": for_others,
            "failures": failures,
            "recent": recent,
            "node": local,
        }

    def _task(self, record: TaskRecord) -> dict[str, Any]:
        queue = self._sidecar.queue
        assert queue is not None
        view = describe_task(record, now=queue.clock(), local_peer=queue.local_peer)
        keep = (
            "task_id",
            "task_type",
            "status",
            "attempt",
            "executed_by",
            "worker",
            "created_at",
            "started_at",
            "finished_at",
            "progress",
            "error",
            "last_error",
            "workflow_id",
            "step_id",
        )
        return {key: view[key] for key in keep if key in view}

    def _workflows(self) -> list[dict[str, Any]]:
        engine = self._sidecar.workflows
        if engine is None:
            return []
        shown = []
        for summary in engine.list(limit=MAX_WORKFLOWS):
            workflow_id = summary["workflow_id"]
            described = engine.describe(workflow_id, include_steps=True)
            steps = described.pop("steps")
            kept = {step["step_id"] for step in steps[:MAX_STEPS]}
            described["steps"] = [
                {
                    "step_id": step["step_id"],
                    "task_type": step["task_type"],
                    "status": step["status"],
                    "depends_on": [dep for dep in step["depends_on"] if dep in kept],
                    "executed_by": step.get("executed_by"),
                    "error": step.get("error"),
                }
                for step in steps[:MAX_STEPS]
            ]
            described["levels"] = levels_of(described["steps"])
            described["steps_hidden"] = max(0, len(steps) - MAX_STEPS)
            shown.append(described)
        return shown


def levels_of(steps: list[dict[str, Any]]) -> list[list[str]]:
    """Steps by depth (a step sits one level right of its deepest dependency), in the order given per level.

    From the steps already read, so drawing a DAG costs no second read of the workflow.
    """
    depends = {step["step_id"]: step["depends_on"] for step in steps}
    depth: dict[str, int] = {}
    for step_id in depends:
        pending = [step_id]
        while pending:  # iterative depth-first walk: a 1000-step chain must not hit the recursion limit
            current = pending[-1]
            if current in depth:
                pending.pop()
                continue
            missing = [dep for dep in depends[current] if dep in depends and dep not in depth]
            if missing:
                pending.extend(missing)
                continue
            depth[current] = 1 + max((depth[dep] for dep in depends[current] if dep in depends), default=-1)
            pending.pop()
    levels: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for step_id in depends:
        levels[depth[step_id]].append(step_id)
    return levels
