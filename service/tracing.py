"""Tracing with the OpenTelemetry SDK, configured by the standard OTEL_* environment variables.

Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true.
Off, every hook below is one module-level boolean check: no SDK objects, no
context work (bench/results/observability_overhead.md measures it). On, spans
go over OTLP/HTTP (protobuf) through a batching processor; the sampler,
resource attributes, batch sizes and exporter headers/timeouts are the SDK's
own `OTEL_*` variables (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
`OTEL_TRACES_SAMPLER_ARG=0.1`, `OTEL_RESOURCE_ATTRIBUTES`, ...).

Spans: one per HTTP request (opened by service.middleware's RequestContext,
probes excluded; unsampled requests cost little), one per PostgreSQL
statement (from asyncpg's query logger, with the real start and end), one
per Redis call, and one per job attempt in the worker, continuing the trace
of the request that enqueued the job (its `traceparent` is stored on the job
row). Sampled request spans put their trace id on the latency histogram as an
exemplar and on every log line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from service.config import ConfigurationError

TRACER: Final = trace.get_tracer("catalog-service")
# Read on every request: a plain module global, so "off" costs one check.
enabled = False
_provider: object | None = None
_TRUE = frozenset({"true", "1", "yes", "on"})
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# FastAPI's native OpenTelemetry support stays off: its per-request wrapper cost about a
# quarter of our throughput even at 1 % sampling (bench/results/observability_overhead.md);
# our request middleware opens the server span instead, for a fraction of that.
FASTAPI_TELEMETRY_OFF: Final = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def configure(service_name: str) -> bool:
    """Install the SDK if the environment asks for it; return whether tracing is on.

    Call in the process that serves (the gunicorn worker's lifespan, the job
    worker's start), never before a fork: the batch processor owns a thread.
    """
    global enabled, _provider  # noqa: PLW0603 - process-wide, like the SDK's own global provider
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return False
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    )
    if protocol != "http/protobuf":
        raise ConfigurationError(
            f"configuration error: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; "
            "this service exports OTLP over HTTP (http/protobuf)"
        )
    # Imported here: a process without an endpoint never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) wins over SERVICE_NAME.
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    enabled = True
    return True


def shutdown() -> None:
    """Flush and stop the exporter (at process exit)."""
    global enabled  # noqa: PLW0603
    enabled = False
    if _provider is not None:
        _provider.shutdown()  # type: ignore[attr-defined]


def recording_parent() -> bool:
    """Whether a span made now would be kept: tracing is on and the current span is sampled."""
    return enabled and trace.get_current_span().is_recording()


def record_client_span(
    name: str, elapsed_seconds: float, attributes: Mapping[str, str], error: BaseException | None = None
) -> None:
    """A child span for a call that just ended after `elapsed_seconds` (its real start and end)."""
    end = time.time_ns()
    span = TRACER.start_span(
        name, kind=SpanKind.CLIENT, start_time=end - int(elapsed_seconds * 1e9), attributes=dict(attributes)
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_time=end)


def trace_id(span: Span | None = None) -> str | None:
    """The hex trace id of `span` (default: the current one) if it is sampled."""
    context = (span or trace.get_current_span()).get_span_context()
    return format(context.trace_id, "032x") if context.trace_flags.sampled else None


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current valid span, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def inject_current() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`), to store with a job."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def start_request_span(headers: list[tuple[bytes, bytes]], method: str) -> tuple[Span, object]:
    """The server span of one request, continuing the caller's `traceparent`; made current."""
    carrier = {name.decode(): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
    span = TRACER.start_span(method, context=propagate.extract(carrier) if carrier else None, kind=SpanKind.SERVER)
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_request_span(span: Span, token: object, route: str, status: int, path: str) -> None:
    if span.is_recording():
        span.update_name(f"{span.name} {route}")  # type: ignore[attr-defined]
        span.set_attributes(
            {
                "http.request.method": span.name.split(" ", 1)[0],  # type: ignore[attr-defined]
                "http.route": route,
                "url.path": path,
                "http.response.status_code": status,
            }
        )
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


def start_job_span(kind: str, job_id: str, attempt: int, headers: Mapping[str, str]) -> tuple[Span, object]:
    """The span of one job attempt, continuing the trace of the request that enqueued it; made current."""
    span = TRACER.start_span(
        f"job {kind}",
        context=propagate.extract(headers) if headers else None,
        kind=SpanKind.CONSUMER,
        attributes={"job.id": job_id, "job.kind": kind, "job.attempt": attempt},
    )
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_job_span(span: Span, token: object, outcome: str | None) -> None:
    span.set_attribute("job.outcome", outcome or "abandoned")
    if outcome != "succeeded":
        span.set_status(Status(StatusCode.ERROR, outcome or "abandoned"))
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]
