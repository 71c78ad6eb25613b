"""The Trio P2P sidecar: libp2p node, task queue and workflows, served to gateways over the bridge."""

__version__ = "0.1.0"
