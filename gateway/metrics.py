"""Prometheus metrics of one gateway instance.

Each app gets its own ``CollectorRegistry`` (not the process-global one) so
that several apps in one process, as in tests, never collide.  A gateway of
several worker processes answers ``/metrics`` with all of theirs, each sample
labelled ``worker`` (``merge_worker_metrics``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tool_calls = Counter(
            "gateway_tool_calls_total",
            "Tool calls by runtime and outcome (ok or an error code).",
            ["runtime", "outcome"],
            registry=self.registry,
        )
        self.tool_latency = Histogram(
            "gateway_tool_call_seconds",
            "Tool call latency seen by the gateway, by runtime.",
            ["runtime"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bridge_up = Gauge(
            "gateway_bridge_up", "1 while a sidecar is connected and answering heartbeats.", registry=self.registry
        )
        self.bridge_in_flight = Gauge(
            "gateway_bridge_in_flight", "P2P calls waiting for the sidecar.", registry=self.registry
        )
        self.bridge_frames_dropped = Counter(
            "gateway_bridge_frames_dropped_total",
            "Bridge frames dropped because they could not be decoded or were unexpected.",
            ["reason"],
            registry=self.registry,
        )
        self.bridge_connects = Counter(
            "gateway_bridge_connects_total",
            "Times the bridge connection to the sidecar came up.",
            registry=self.registry,
        )
        self.bridge_handshake_failures = Counter(
            "gateway_bridge_handshake_failures_total",
            "Bridge handshakes that failed (CURVE keys refused or mismatched).",
            registry=self.registry,
        )
        self.inbound_calls = Counter(
            "gateway_inbound_calls_total",
            "Calls the sidecar made into this gateway's local tools, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.catalog_tools = Gauge(
            "gateway_catalog_tools", "Tools known to the gateway, by runtime.", ["runtime"], registry=self.registry
        )

        self.relayed_requests = Counter(
            "gateway_relayed_requests_total",
            "MCP requests for a session another gateway worker holds, relayed there, by outcome "
            "(answered, unreachable, cut_short).",
            ["outcome"],
            registry=self.registry,
        )
        self.limit_rejections = Counter(
            "gateway_limit_rejections_total",
            "Requests, connections and calls refused because they passed a configured limit, by limit.",
            ["limit"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Families:
    """A registry-shaped holder of ready-made metric families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge_worker_metrics(texts: dict[int, str | None]) -> bytes:
    """One exposition for the workers of a gateway: every sample labelled ``worker``, families merged.

    ``texts`` maps each worker's index to its own exposition, or None when it did
    not answer; ``gateway_workers`` says how many there are and how many answered,
    so a sum across workers can be read for what it is.
    """
    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "worker": str(index)}) for sample in family.samples
            )
    workers = Metric(
        "gateway_workers", "Gateway worker processes, by whether this scrape includes their metrics.", "gauge"
    )
    answered = sum(text is not None for text in texts.values())
    workers.add_sample("gateway_workers", {"reported": "yes"}, answered)
    workers.add_sample("gateway_workers", {"reported": "no"}, len(texts) - answered)
    return generate_latest(_Families([*families.values(), workers]))
