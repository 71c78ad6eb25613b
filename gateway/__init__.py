"""The FastAPI gateway: MCP at /mcp, the seed's REST face, local tools, and the bridge to the sidecar."""

__version__ = "0.1.0"
