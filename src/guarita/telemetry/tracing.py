"""OpenTelemetry tracing: a span per request and per pipeline step, GenAI attributes on
model calls, context carried into task workers. The exporter is chosen by settings
(none | console | otlp); with none, nothing is wrapped and the hot path pays nothing."""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

from guarita import __version__
from guarita.settings import TracingSettings


class Tracing:
    def __init__(self, settings: TracingSettings, *, exporter: SpanExporter | None = None) -> None:
        self._provider: TracerProvider | None = None
        if exporter is None and settings.exporter == "none":
            self.tracer: trace.Tracer = trace.NoOpTracer()
            self.enabled = False
            return
        self.enabled = True
        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": settings.service_name, "service.version": __version__}
            )
        )
        if exporter is not None:  # tests hand in an in-memory exporter: export at once
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        self._provider = provider
        self.tracer = provider.get_tracer("guarita", __version__)

    def inject(self) -> dict[str, str]:
        """The current trace context as W3C headers, to carry into a task."""
        carrier: dict[str, str] = {}
        if self.enabled:
            propagate.inject(carrier)
        return carrier

    @staticmethod
    def extract(carrier: dict[str, Any] | None) -> Context | None:
        return propagate.extract(carrier) if carrier else None

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return (
        OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        if settings.otlp_endpoint
        else OTLPSpanExporter()
    )
