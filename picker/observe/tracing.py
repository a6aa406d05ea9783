"""Decision spans (tracing.enabled): one OpenTelemetry span per routed request.

The caller's W3C trace context - `traceparent` and `tracestate`, which Envoy passes on from the
client unless it traces itself - is the span's parent. The span's own context goes to the
engine in the headers the lease sets (the ext_proc header mutation overwrites the client's
`traceparent`), so an engine that traces (vLLM's --otlp-traces-endpoint: otlp_traces_endpoint
in vllm/config/observability.py:36) records its spans as children of the picker's, in the
client's trace. Propagation format: W3C Trace Context, through OpenTelemetry's own propagator
(opentelemetry-api, trace/propagation/tracecontext.py).

The span starts when routing starts (admission queue included), carries what was decided -
policy, worker, prefix match, queue wait, model name - and ends with the lease, carrying its
outcome. Never the prompt, the body or any header value but the trace context.

Spans go to the TracerProvider the host installed (OpenTelemetry's global one): `llm-picker
serve` installs an OTLP exporter (llm_picker/tracing.py); inside LiteLLM, LiteLLM's own.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from picker.routing.leases import Lease
from picker.routing.outcome import Outcome
from picker.routing.request import RoutingRequest

__all__ = ["SPAN_NAME", "DecisionTracer"]

SPAN_NAME = "llm_picker.route"
# Outcomes that are the engine's failure, marked as span errors.
_FAILED = frozenset({Outcome.UPSTREAM_ERROR, Outcome.TIMEOUT})


class DecisionTracer:
    """Starts a span for each lease the routing service opens, and ends it with the lease."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        """`provider`: where spans go; None, OpenTelemetry's global provider at each span (so
        a host that installs its provider after building the picker is still followed)."""
        self._provider = provider
        self._propagator = TraceContextTextMapPropagator()

    def trace(self, lease: Lease, request: RoutingRequest, started_ns: int,
              queue_wait_secs: float) -> None:
        """Open the span of `lease`'s decision (begun at `started_ns`, epoch nanoseconds) and
        hand its context to the lease's headers; it ends when the lease is released."""
        choice = lease.choice
        attributes: dict[str, str | float | int] = {
            "llm_picker.policy": choice.policy,
            "llm_picker.worker": choice.worker.id,
            "llm_picker.worker.address": choice.worker.host_port,
            "llm_picker.queue_wait_ms": round(queue_wait_secs * 1e3, 3),
            "gen_ai.request.model": request.model,
        }
        if choice.match is not None:
            attributes["llm_picker.prefix_match"] = choice.match
        if lease.prefill is not None:
            attributes["llm_picker.prefill_worker"] = lease.prefill.id
        tracer = trace.get_tracer("llm_picker", tracer_provider=self._provider)
        span = tracer.start_span(SPAN_NAME, context=self._propagator.extract(request.headers),
                                 kind=SpanKind.INTERNAL, attributes=attributes,
                                 start_time=started_ns)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        lease.trace_as(tuple(carrier.items()), lambda _, outcome, __: _end(span, outcome))


def _end(span: Span, outcome: Outcome) -> None:
    span.set_attribute("llm_picker.outcome", outcome.value)
    if outcome in _FAILED:
        span.set_status(StatusCode.ERROR, outcome.value)
    span.end()
