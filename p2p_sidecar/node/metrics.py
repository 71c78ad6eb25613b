"""Prometheus metrics of the libp2p node, registered in the sidecar's registry (served on /metrics)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from p2p_sidecar.node.budget import PartialFrameBudget
from p2p_sidecar.node.peers import PeerState, PeerTable

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "sidecar_p2p_requests_total",
            "Requests on the peer protocol, by direction (in/out), op and outcome.",
            ["direction", "op", "outcome"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "sidecar_p2p_request_seconds",
            "Peer protocol request latency, by direction (out: full round trip; in: handling).",
            ["direction"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.protocol_errors = Counter(
            "sidecar_p2p_protocol_errors_total",
            "Bad input on the peer protocol (garbage, oversize, bad fields, too_slow and over_budget unfinished "
            "messages...); the stream is reset or answered.",
            ["reason"],
            registry=registry,
        )
        self.refused = Counter(
            "sidecar_p2p_refused_total",
            "Requests from peers outside this node's network (allowlist / network secret), refused 'forbidden', "
            "by reason.",
            ["reason"],
            registry=registry,
        )
        self.dials = Counter(
            "sidecar_p2p_dials_total", "Dials to peers (connect + hello), by outcome.", ["outcome"], registry=registry
        )
        self.streams_opened = Counter(
            "sidecar_p2p_streams_opened_total",
            "Outbound streams of our protocol opened (requests reuse pooled streams; this grows slowly).",
            registry=registry,
        )
        self.peers = Gauge("sidecar_p2p_peers", "Peers known to this node, by state.", ["state"], registry=registry)
        self.inbound_streams = Gauge(
            "sidecar_p2p_inbound_streams",
            "Inbound streams of our protocol open now, all peers (each bounded by "
            "SIDECAR_P2P_MAX_INBOUND_STREAMS_PER_PEER).",
            registry=registry,
        )
        self.partial_bytes = Gauge(
            "sidecar_p2p_partial_frame_bytes",
            "Bytes of unfinished peer-protocol messages held now (bounded by SIDECAR_P2P_MAX_PARTIAL_BYTES).",
            registry=registry,
        )

    def bind_streams(self, open_streams: Callable[[], int]) -> None:
        self.inbound_streams.set_function(open_streams)

    def bind_budget(self, budget: PartialFrameBudget) -> None:
        self.partial_bytes.set_function(lambda: budget.held)

    def bind_table(self, table: PeerTable) -> None:
        for state in PeerState:
            self.peers.labels(state.value).set_function(partial(table.count, state))
