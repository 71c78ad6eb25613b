"""W3C trace context across the processes, OpenTelemetry spans, and the trace id and call id on log lines.

One trace follows a call from the HTTP request into the gateway, over the
bridge (the envelope's ``traceparent``), over the peer protocol (the request's
``tp``) and into the remote gateway.  The pieces here are shared by both
processes:

* ``configure`` installs OpenTelemetry's SDK with an OTLP/HTTP exporter when
  the process's ``*_OTLP_ENDPOINT`` is set.  Unset (the default), nothing is
  installed: the API stays a no-op, ``enabled()`` is False and the call paths
  skip span creation entirely, so tracing costs a branch (docs/benchmarks.md).
  A ``traceparent`` that arrives is still passed on unchanged, so a process
  with export off does not cut the trace of its neighbours, and its log lines
  carry that trace's id.
* ``parent_from`` / ``traceparent_of_current`` turn the one string that
  crosses a process boundary into an OpenTelemetry ``Context`` and back, with
  the library's own W3C propagator.
* ``LogContext`` puts ``trace_id`` and ``call_id`` on every log record.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared_schema.envelope import MAX_TRACEPARENT

EXPORT_DELAY_MS = 1000
"""How long finished spans wait to leave in a batch: the collector sees a call about a second after it ends."""

CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("mcp_p2p_call_id", default=None)
"""The id under which this process knows the call being served (the bridge envelope's id, a peer request's)."""

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP_TRACER: Tracer = trace.NoOpTracer()


class _State:
    enabled = False
    tracer: Tracer = _NOOP_TRACER


def enabled() -> bool:
    """Whether this process records and exports spans (its OTLP endpoint is set)."""
    return _State.enabled


def tracer() -> Tracer:
    return _State.tracer


def configure(
    service_name: str, endpoint: str | None, *, instance_id: str, sample_ratio: float = 1.0
) -> Callable[[], None]:
    """Install the SDK and its OTLP/HTTP exporter if ``endpoint`` is set; returns what flushes it at exit.

    The SDK is imported only here, so a process with export off never loads it.  ``sample_ratio`` is the
    share of the traces this process starts that it records; a call that arrives inside a trace follows
    the caller's decision (the ``traceparent``'s sampled flag), so a trace is recorded whole or not at all.
    """
    if not endpoint:
        return lambda: None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": service_name, "service.instance.id": instance_id})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=EXPORT_DELAY_MS)
    )
    trace.set_tracer_provider(provider)
    _State.tracer = provider.get_tracer("mcp-p2p")
    _State.enabled = True
    logging.getLogger(__name__).info("exporting traces over OTLP to %s as %s", endpoint, service_name)

    def shutdown() -> None:
        _State.enabled = False
        _State.tracer = _NOOP_TRACER
        provider.shutdown()  # flushes what is still batched

    return shutdown


# -- the string that crosses a boundary ------------------------------------------------------------------------
def parent_from(traceparent: Any) -> Context | None:
    """The remote parent a ``traceparent`` names, or None when it is absent or not a valid one."""
    if not isinstance(traceparent, str) or not traceparent or len(traceparent) > MAX_TRACEPARENT:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def traceparent_of_current() -> str | None:
    """The current span as a ``traceparent`` (None outside any trace): what a call out of this process carries."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def clean_traceparent(value: Any) -> str | None:
    """A received ``traceparent`` field as it may be kept and passed on: a short string, or None."""
    return value if isinstance(value, str) and 0 < len(value) <= MAX_TRACEPARENT else None


class served:  # lower case: used like contextlib's context managers
    """Serve one call that arrived with ``traceparent``: a span when enabled, else just its context.

    With export off and no traceparent this only sets the call id; with a
    traceparent it attaches the remote context, so log lines and calls made
    from here carry the caller's trace.  A class rather than a generator: it
    runs on every call, and with export off it must cost next to nothing.
    """

    __slots__ = ("_attributes", "_call_id", "_call_token", "_inner", "_kind", "_name", "_token", "_traceparent")

    def __init__(
        self,
        name: str,
        *,
        traceparent: str | None,
        call_id: str | None,
        kind: SpanKind = SpanKind.SERVER,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self._name = name
        self._traceparent = traceparent
        self._call_id = call_id
        self._kind = kind
        self._attributes = attributes
        self._inner: Any = None
        self._token: Any = None

    def __enter__(self) -> Span | None:
        self._call_token = CALL_ID.set(self._call_id)
        parent = parent_from(self._traceparent) if self._traceparent is not None else None
        if _State.enabled:
            self._inner = _State.tracer.start_as_current_span(
                self._name, context=parent, kind=self._kind, attributes=self._attributes
            )
            span: Span = self._inner.__enter__()
            return span
        if parent is not None:
            self._token = otel_context.attach(parent)
        return None

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._inner is not None:
                self._inner.__exit__(*exc)
            elif self._token is not None:
                otel_context.detach(self._token)
        finally:
            CALL_ID.reset(self._call_token)


@contextmanager
def outgoing(name: str, *, attributes: dict[str, Any] | None = None) -> Iterator[str | None]:
    """A call leaving this process inside a trace: a CLIENT span when enabled; yields the traceparent to send.

    Outside any trace (a heartbeat, a peer ping, a queue claim) it records
    nothing and yields None: background traffic does not start traces.
    """
    if _State.enabled and trace.get_current_span().get_span_context().is_valid:
        with _State.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
            yield traceparent_of_current()
    else:
        yield traceparent_of_current()


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


# -- log lines -----------------------------------------------------------------------------------------------
LOG_FORMAT = "%(asctime)s %(levelname)s {role} %(name)s [trace=%(trace_id)s call=%(call_id)s]: %(message)s"


class LogContext(logging.Filter):
    """Adds ``trace_id`` and ``call_id`` (``-`` when there is none) to every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id() or "-"
        record.call_id = CALL_ID.get() or "-"
        return True


def install_log_context(role: str, level: str) -> None:
    """``logging.basicConfig`` with the trace id and call id on every line of this process."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT.format(role=role))
    for handler in logging.getLogger().handlers:
        handler.addFilter(LogContext())
