"""Serving remote tool calls: the ``call_tool`` op of our protocol.

A peer asks this node to run one of its gateway's local tools.  The node
checks, in this order: the request is well formed; the tool is allowed
(``SIDECAR_REMOTE_TOOLS_ALLOW``, empty by default, so nothing is exposed by
accident); a gateway is connected; the gateway announced the tool among its
local tools.  Then it hands the call to its gateway over the bridge
(``BridgeServer.call_gateway``), where ``RuntimeRouter.serve_inbound`` runs
it, and returns the result.  Refusals are ``forbidden`` (not served here) or
``unavailable`` (no gateway right now, worth retrying); the gateway's own
errors (bad arguments, the tool failed, timeout) come back with their codes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from p2p_sidecar.node.capabilities import Capabilities
from p2p_sidecar.node.rpc_server import RpcContext
from shared_schema import BridgeError, ErrorCode

log = logging.getLogger(__name__)

REPLY_MARGIN = 0.05
"""Seconds kept back from the caller's budget so a gateway timeout is reported before the caller gives up."""


class RemoteToolServer:
    OP = "call_tool"

    def __init__(
        self,
        own_id: str,
        capabilities: Capabilities,
        *,
        gateway_connected: Callable[[], bool],
        call_gateway: Callable[[str, dict[str, Any], float], Awaitable[Any]],
    ) -> None:
        self._own_id = own_id
        self._capabilities = capabilities
        self._gateway_connected = gateway_connected
        self._call_gateway = call_gateway
        self.served = 0
        self.refused = 0

    async def handle(self, context: RpcContext, args: dict[str, Any]) -> Any:
        tool = args.get("tool")
        arguments = args.get("args")
        if not isinstance(tool, str) or not tool:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "call_tool needs 'tool', a tool name")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, "call_tool 'args' must be an object")
        self._authorize(context.peer_id, tool)
        timeout = max(0.001, context.timeout - min(REPLY_MARGIN, context.timeout / 10))
        log.debug("peer %s calls gateway tool %s (request %d)", context.peer_id, tool, context.request_id)
        result = await self._call_gateway(tool, arguments, timeout)
        self.served += 1
        return result

    def _authorize(self, peer_id: str, tool: str) -> None:
        if tool not in self._capabilities.allowed_tools:
            self._refuse(
                peer_id,
                tool,
                ErrorCode.FORBIDDEN,
                f"node {self._own_id} does not serve tool {tool!r} to remote peers "
                "(it is not in that node's SIDECAR_REMOTE_TOOLS_ALLOW)",
            )
        if not self._gateway_connected():
            self._refuse(
                peer_id, tool, ErrorCode.UNAVAILABLE, f"node {self._own_id} has no gateway connected to run {tool!r}"
            )
        if not self._capabilities.serves(tool):
            self._refuse(
                peer_id,
                tool,
                ErrorCode.FORBIDDEN,
                f"node {self._own_id} allows {tool!r}, but its gateway has no local tool of that name",
            )

    def _refuse(self, peer_id: str, tool: str, code: ErrorCode, message: str) -> None:
        self.refused += 1
        log.info("refused remote call of %s from peer %s: %s", tool, peer_id, code.value)
        raise BridgeError(code, message, {"served_tools": self._capabilities.served_tools()})
