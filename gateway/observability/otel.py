"""Optional OpenTelemetry tracing (`tracing.opentelemetry = true`, the `otel` extra): a server span
for each request and a client span for each call to the new API and the legacy service, exported
over OTLP/HTTP.

Everything is per app, nothing process-wide: the app's own TracerProvider, its server span
(opened by the http package's `tracing_span` middleware) and the client instrumentation's trace
config on this app's client sessions. The aiohttp *server* instrumentation is not used: it works
only by replacing aiohttp's Application class for the whole process, and it would name spans and
attributes by the raw path (a session GUID) rather than the route template.
Without the extra, or with the switch off, nothing here is imported and the gateway only passes
W3C trace context on (gateway/observability/trace.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping

import aiohttp

from gateway import __version__
from gateway.config import ConfigError, TracingConfig
from gateway.observability.trace import TraceContext

# The packages of the `otel` extra (pyproject.toml), by import name.
REQUIRED = (
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.instrumentation.aiohttp_client",
)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def require(config: TracingConfig) -> None:
    """With tracing on, the extra must be installed: a start that would silently trace nothing is
    refused with one line, as a bad key is."""
    if not config.opentelemetry:
        return
    missing = [name for name in REQUIRED if not _importable(name)]
    if missing:
        raise ConfigError(
            "config error: tracing.opentelemetry = true needs the otel extra "
            f"(pip install 'visit-gateway[otel]'; missing {missing[0]})"
        )


class Tracing:
    """One app's tracer provider, its server spans and its client trace config."""

    def __init__(self, config: TracingConfig) -> None:
        require(config)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint or None)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("visit-gateway", __version__)

    @contextlib.contextmanager
    def server_span(self, method: str, route: str, headers: Mapping[str, str]) -> Iterator[Callable[[int], None]]:
        """A server span current while a request is handled, continuing the caller's W3C trace
        (or a new one); yields the function that records the answer's status."""
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier=headers)
        attributes = {"http.request.method": method, "http.route": route}
        with self._tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:

            def answered(status: int) -> None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))

            yield answered

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For a client session: a client span per call, whose context it sends as traceparent."""
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        return [create_trace_config(tracer_provider=self.provider)]

    def current(self) -> TraceContext | None:
        """The current server span as the gateway's hop, so that logs and headers name the trace
        OpenTelemetry records (it continued the caller's trace, or started one)."""
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return TraceContext(
            f"{context.trace_id:032x}",
            f"{context.span_id:016x}",
            f"{int(context.trace_flags) & 0x01:02x}",
            context.trace_state.to_header(),
        )

    def close(self) -> None:
        # Exports what is still buffered (bounded by the SDK's export timeout).
        self.provider.shutdown()
