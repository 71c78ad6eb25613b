"""Who ends the gateway's server-sent-event streams on SIGTERM, and when.

The MCP SDK streams responses with ``sse_starlette``, which by default patches
uvicorn's signal handler and ends every SSE stream the moment SIGTERM arrives.
An MCP ``tools/call`` whose answer travels on such a stream would then lose its
answer although the call itself completes: the opposite of a graceful drain.
So ``python -m gateway`` turns that off (``hold_event_streams``) and the
gateway ends the streams itself once the calls in flight have finished
(``Gateway.drain`` -> ``end_event_streams``).  Long-lived streams (an MCP
client's standalone GET stream, ``subscriptions/listen``) end then too, so
uvicorn's wait for open connections does not run to the grace period.

Process-wide state, hence only touched by the process entry point and by the
drain it triggers.
"""

from __future__ import annotations

from sse_starlette.sse import AppStatus


def hold_event_streams() -> None:
    """Keep SSE streams open across SIGTERM until ``end_event_streams`` is called."""
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]  # sse_starlette leaves it unannotated


def end_event_streams() -> None:
    """Let every SSE stream finish (sse_starlette notices within half a second)."""
    AppStatus.should_exit = True
