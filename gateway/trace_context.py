"""The caller's ``traceparent`` header, honoured when this gateway does not export traces itself.

With export on, FastAPI's native OpenTelemetry makes the request's span from
the header.  With export off nothing is recorded, but a caller's trace must
not be cut here: this middleware attaches the header's context for the
request, so the call carries it over the bridge and every log line about it
shows its trace id.  Without the header it costs one scan of the headers.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from starlette.types import ASGIApp, Receive, Scope, Send

from shared_schema import tracing


class TraceContextPassThrough:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"traceparent":
                    parent = tracing.parent_from(value.decode("latin-1"))
                    if parent is not None:
                        token = otel_context.attach(parent)
                        try:
                            await self.app(scope, receive, send)
                        finally:
                            otel_context.detach(token)
                        return
                    break
        await self.app(scope, receive, send)
