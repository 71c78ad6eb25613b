"""Per-client bound on tool calls in flight (``GATEWAY_MAX_CALLS_PER_CLIENT``).

One client (an address) must not be able to occupy the whole gateway: the
bridge's own bound (``GATEWAY_BRIDGE_MAX_IN_FLIGHT``) protects the sidecar, but
a single greedy client could still take all of it and leave every other agent
with "busy".  The count is per remote address as the HTTP server sees it; behind
a reverse proxy every caller shares the proxy's address, so raise the limit
there (or let the proxy do per-client limiting).

Synchronous and I/O-free: the router acquires a slot before it dispatches and
releases it when the call ends.
"""

from __future__ import annotations

from shared_schema import BridgeError, ErrorCode


class ClientCallLimiter:
    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self._in_flight: dict[str, int] = {}

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)

    def acquire(self, client: str | None) -> None:
        """Take one of ``client``'s slots, or raise ``rate_limited`` when none is free.

        Calls with no client (the meta-tool dispatching to another tool, inbound
        calls from the sidecar) are not counted: their outer call already is.
        Every successful ``acquire`` is paired with one ``release``.
        """
        if client is None:
            return
        count = self._in_flight.get(client, 0)
        if count >= self.max_per_client:
            raise BridgeError(
                ErrorCode.RATE_LIMITED,
                f"too many calls in flight from this client ({count}, limit {self.max_per_client}); retry shortly",
                {"limit": "max_calls_per_client", "retry_after": 1},
            )
        self._in_flight[client] = count + 1

    def release(self, client: str | None) -> None:
        if client is None:
            return
        remaining = self._in_flight[client] - 1
        if remaining:
            self._in_flight[client] = remaining
        else:
            del self._in_flight[client]
