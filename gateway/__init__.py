"""The FastAPI gateway: MCP at /mcp, the seed's REST face, local tools, and the bridge to the sidecar.

"The seed" is the plan this project comes from: ipfs_datasets_py's MCP server (its tools in
``tools/<category>/<tool>.py``) gaining P2P capabilities. Its users' tools, tool names, arguments and REST paths are
the surface this project stays compatible with.
"""

__version__ = "0.1.0"
