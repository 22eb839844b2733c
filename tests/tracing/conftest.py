"""Fixtures for the tracing tests: a tracer provider whose spans stay in memory, and no ambient
tracing or orchestrator configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from durable_core.tracing import RUN_OUTCOME, STEP_ID


@dataclasses.dataclass
class Spans:
    """A tracer provider for one test, and the spans it finished."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def steps(self, step_id: str | None = None) -> list[ReadableSpan]:
        """The step attempt spans (of `step_id`), in the order they ended."""
        found = [s for s in self.all() if s.attributes and STEP_ID in s.attributes]
        return [s for s in found if step_id is None or s.attributes[STEP_ID] == step_id]  # type: ignore[index]

    def runs(self) -> list[ReadableSpan]:
        return [s for s in self.all() if s.attributes and RUN_OUTCOME in s.attributes]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]


@pytest.fixture
def spans() -> Iterator[Spans]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Spans(provider, exporter)
    provider.shutdown()


@pytest.fixture(autouse=True)
def tracing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DURABLE_TRACING",
        "DURABLE_ORCHESTRATOR_URL",
        "DURABLE_SIGNING_KEY",
        "DURABLE_EVENT_KEY",
        "DURABLE_DEV",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_PYTHON_TRACER_PROVIDER",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DURABLE_FAST_RETRIES", "1")
