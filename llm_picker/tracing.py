"""OTLP export of the picker's decision spans (tracing.enabled) for `llm-picker serve` / `epp`.

The core records spans through OpenTelemetry's API (picker.observe.tracing); a host decides
where they go. This command installs the SDK's TracerProvider with a batching OTLP/gRPC
exporter configured, as GIE's endpoint picker is, by OpenTelemetry's environment variables
(the inferencepool chart sets them): OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT),
OTEL_EXPORTER_OTLP_INSECURE, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK's default:
parentbased_always_on, so a sampled caller's trace is always continued), OTEL_SERVICE_NAME.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from picker.config import PickerConfig
from picker.errors import extra_needed

__all__ = ["export_traces"]

_SERVICE = "llm-picker"


def export_traces(config: PickerConfig) -> Callable[[], None] | None:
    """Install the OTLP exporter when tracing.enabled; returns what flushes and stops it at
    exit (None when tracing is off)."""
    if not config.tracing.enabled:
        return None
    with extra_needed("tracing.enabled", "tracing", "the OpenTelemetry SDK and OTLP exporter"):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", _SERVICE)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown
