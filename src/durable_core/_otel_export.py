"""The tracer provider an app sets up when an OTLP endpoint is configured and the application
set none: OTLP over HTTP behind a batch processor (`OTEL_EXPORTER_OTLP_*` configure the
exporter as usual). Imported only then; needs `durable-core[otel]`."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def global_otlp_provider(app_id: str) -> trace.TracerProvider:
    """Set the global tracer provider to one exporting over OTLP/HTTP, and return the global
    provider (another thread may have set its own first)."""
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: app_id}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()
