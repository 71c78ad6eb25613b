"""The sidecar's P2P tools and the catalog it announces to gateways."""

from p2p_sidecar.tools.catalog import ToolCatalog

__all__ = ["ToolCatalog"]
