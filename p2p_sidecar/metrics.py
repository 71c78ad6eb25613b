"""Prometheus metrics of the sidecar, served on its admin port."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from p2p_sidecar.taskqueue import QueueService
from p2p_sidecar.taskqueue.model import TaskStatus
from p2p_sidecar.taskqueue.records import Ended

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "sidecar_tool_calls_total", "P2P tool calls served, by outcome.", ["outcome"], registry=self.registry
        )
        self.call_latency = Histogram(
            "sidecar_tool_call_seconds",
            "P2P tool call latency in the sidecar.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frames_dropped = Counter(
            "sidecar_bridge_frames_dropped_total",
            "Bridge frames dropped (garbage, oversize, wrong version, expired deadline...).",
            ["reason"],
            registry=self.registry,
        )
        self.gateways = Gauge("sidecar_bridge_gateways", "Gateways connected over the bridge.", registry=self.registry)
        self.in_flight = Gauge("sidecar_bridge_in_flight", "Calls from gateways running now.", registry=self.registry)
        self.outbound_calls = Counter(
            "sidecar_gateway_calls_total",
            "Calls this sidecar made into its gateway's tools, by outcome.",
            ["outcome"],
            registry=self.registry,
        )

        self.auth_denied = Counter(
            "sidecar_bridge_auth_denied_total",
            "Bridge handshakes refused by CURVE authentication (key not allowed).",
            registry=self.registry,
        )
        self.limit_rejections = Counter(
            "sidecar_limit_rejections_total",
            "Bridge calls refused, and peers' task claims cut short, because they passed a configured limit, by limit.",
            ["limit"],
            registry=self.registry,
        )

        self.queue_tasks = Gauge(
            "sidecar_queue_tasks", "Tasks in this node's queue, by status.", ["status"], registry=self.registry
        )
        self.queue_ended = Counter(
            "sidecar_queue_tasks_ended_total",
            "Tasks of this node's queue that reached a final status, by status.",
            ["status"],
            registry=self.registry,
        )
        self.queue_running_here = Gauge(
            "sidecar_queue_running_here",
            "Task attempts this node's workers run now (any owner's).",
            registry=self.registry,
        )
        self.queue_slots = Gauge("sidecar_queue_slots", "Slots of this node's workers.", registry=self.registry)
        self.queue_paused = Gauge(
            "sidecar_queue_paused", "1 while this node's queue is paused.", registry=self.registry
        )

    def bind_queue(self, queue: QueueService) -> None:
        """Read the queue's own counts at scrape time, and count tasks as they end (``LeaseOwner.on_task_end``)."""
        for status in TaskStatus:
            self.queue_tasks.labels(status.value).set_function(partial(_count_of, queue, status.value))
            self.queue_ended.labels(status.value)  # every status shows from the start, at 0
        self.queue_running_here.set_function(lambda: queue.running_here)
        self.queue_slots.set_function(lambda: queue.pool.slots)
        self.queue_paused.set_function(lambda: 1 if queue.owner.paused_reason is not None else 0)

        def ended(tasks: list[Ended]) -> None:
            for task in tasks:
                self.queue_ended.labels(task.status.value).inc()

        queue.owner.on_task_end(ended)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _count_of(queue: QueueService, status: str) -> int:
    return queue.store.counts().get(status, 0)
