"""The gateway's own local tools: useful alone, and the local side of local-vs-P2P comparisons."""

from gateway.tools.builtin import register_builtin_tools
from gateway.tools.meta import register_meta_tools

__all__ = ["register_builtin_tools", "register_meta_tools"]
