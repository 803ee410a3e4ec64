"""Tracing with the OpenTelemetry SDK, configured by the standard OTEL_* environment variables.

Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true.
Off, every hook below is one module-level boolean check: no SDK objects, no
context work (bench/results/observability_overhead.md measures it). On, spans
go over OTLP/HTTP (protobuf) through a batching processor; the sampler,
resource attributes, batch sizes and exporter headers/timeouts are the SDK's
own `OTEL_*` variables (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
`OTEL_TRACES_SAMPLER_ARG=0.1`, `OTEL_RESOURCE_ATTRIBUTES`, ...).

Head sampling comes first: a request or job the sampler drops gets no SDK
span. A dropped request that started a new trace (no `traceparent` came in)
costs a random draw, a comparison and one context variable: its trace id is
kept, and only a job it enqueues gets its W3C context (trace id, a new span
id, flags 00) made for it (`inject_current`). A dropped request or job
continuing a caller's trace gets that context made current, so its jobs,
logs and any downstream call carry the trace id. At 1 % sampling the first
kind is nearly every request (bench/results/observability_overhead.md
measures what is left).

A sampled request's span, and the client spans under it, are made when they
end, whole: the SDK's `ReadableSpan` handed to the batch processor, with the
attribute limits the SDK would apply, rather than an SDK `Span` made and
updated under its lock. The exporter is the SDK's OTLP/HTTP one with a direct
protobuf encoder (service.otlp); both were most of the cost of tracing every
request (bench/results/observability_overhead_profile.md).

Spans: one per HTTP request (opened by service.middleware's RequestContext,
probes excluded), one per PostgreSQL
statement (from asyncpg's query logger, with the real start and end), one
per Redis call, and one per job attempt in the worker, continuing the trace
of the request that enqueued the job (its `traceparent` is stored on the job
row). Sampled request spans put their trace id on the latency histogram as an
exemplar and on every log line.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from service.config import ConfigurationError

# The SDK's tracer once configure() ran (a no-op proxy before): called directly, not through the proxy.
TRACER: trace.Tracer = trace.get_tracer("catalog-service")
# Read on every request: a plain module global, so "off" costs one check.
enabled = False
_provider: object | None = None
# What a span made by this module (not through the SDK's tracer) needs: the batch processor it is handed
# to, the provider's resource and limits, and the scope the SDK's tracer would give it.
_processor: BatchSpanProcessor | None = None
_resource: Resource | None = None
# The provider's span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT; None: none).
_count_limit = 0
_value_length_limit: int | None = None
_scope: InstrumentationScope | None = None
_readable_span: Callable[..., ReadableSpan] | None = None  # the SDK's class (readable_span_maker), set by configure()
_sampler: Sampler | None = None  # the provider's own (OTEL_TRACES_SAMPLER), asked before any span is made
# When that sampler is the SDK's ParentBased with its default delegates and a TraceIdRatioBased root
# (the usual production choice: OTEL_TRACES_SAMPLER=parentbased_traceidratio) or an AlwaysOn/AlwaysOff
# root (parentbased_always_on, the SDK's default, and parentbased_always_off), its decision is arithmetic
# that `_start` does itself: a root is sampled when the low 64 bits of its trace id are below this
# bound (TraceIdRatioBased.get_bound_for_rate; 2**64 for AlwaysOn, 0 for AlwaysOff), a child when its
# parent was, and either keeps its parent's trace state. Deciding here took tracing's own frames on a
# cache hit at 1 % sampling from 10 to 8 us a request (bench/results/observability_overhead_profile.md,
# side by side). None: ask the sampler.
_ratio_bound: int | None = None
_TRACE_ID_LOW_BITS: Final = (1 << 64) - 1
_PARENT_BASED_RATIO = re.compile(
    r"ParentBased\{root:(?:TraceIdRatioBased\{(?P<rate>[0-9.e+-]+)\}|(?P<static>AlwaysOnSampler|AlwaysOffSampler)),"
    r"remoteParentSampled:AlwaysOnSampler,"
    r"remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
    r"localParentNotSampled:AlwaysOffSampler\}"
)
# A root's trace id drawn before the SDK makes the span (ratio samplers decide on it, so the span must
# have the id the decision was taken on): the provider's id generator hands it back.
_drawn_trace_id: ContextVar[int] = ContextVar("drawn_trace_id", default=0)
# The running request's or job's span context if it is sampled (None: dropped, or no trace). Set and reset
# with the OTel context by _start and end_*_span; the hooks called many times per request (client spans,
# exemplar, log lines) read this one variable instead of looking the current span up in the OTel context.
# A ContextVar like OTel's own context, so tasks started inside a request see it alike.
_sampled: ContextVar[SpanContext | None] = ContextVar("sampled_span", default=None)
# A dropped request that began a new trace: its trace id (0: none). Nothing else of it is made unless a
# job is enqueued (inject_current). `_DROPPED` is what start_request_span returns as its span.
_dropped_root: ContextVar[int] = ContextVar("dropped_root_trace_id", default=0)
_DROPPED: Final = INVALID_SPAN
# An unsampled root's flags, as the SDK sets them: not sampled, trace id random (W3C level 2).
_UNSAMPLED_ROOT: Final = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_SAMPLED_ROOT: Final = TraceFlags(TraceFlags.RANDOM_TRACE_ID | TraceFlags.SAMPLED)
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
    global enabled, _provider, _sampler, _ratio_bound, TRACER  # noqa: PLW0603 - process-wide, like the SDK's provider
    global _processor, _resource, _scope, _readable_span, _count_limit, _value_length_limit  # noqa: PLW0603
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
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: PLC0415
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

    from service.otlp import DirectOTLPSpanExporter  # noqa: PLC0415

    class DrawnTraceIds(RandomIdGenerator):
        """Random ids, except a trace id drawn before the SDK was asked for the span (`_start`)."""

        def generate_trace_id(self) -> int:
            return _drawn_trace_id.get() or super().generate_trace_id()

    # OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) wins over SERVICE_NAME.
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    limits = SpanLimits()  # the OTEL_*ATTRIBUTE*_LIMIT variables
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": service_name}),
        id_generator=DrawnTraceIds(),
        span_limits=limits,
    )
    processor = BatchSpanProcessor(DirectOTLPSpanExporter())
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _provider, _sampler, _processor, _resource = provider, provider.sampler, processor, provider.resource
    _ratio_bound = ratio_bound(provider.sampler)
    _count_limit, _value_length_limit = limits.max_span_attributes or 0, limits.max_span_attribute_length
    TRACER = provider.get_tracer("catalog-service")
    _scope = InstrumentationScope("catalog-service")  # what get_tracer gave TRACER
    _readable_span = readable_span_maker(ReadableSpan)
    enabled = True
    return True


# ReadableSpan.__init__'s parameters, in order, in the SDK this was written against (1.45): _finish passes
# them by position, a tenth cheaper per span than by keyword. readable_span_maker checks the order.
READABLE_SPAN_PARAMETERS: Final = (
    *("name", "context", "parent", "resource", "attributes", "events", "links", "kind"),
    *("instrumentation_info", "status", "start_time", "end_time", "instrumentation_scope"),
)


def readable_span_maker(readable_span: type[ReadableSpan]) -> Callable[..., ReadableSpan]:
    """`readable_span` itself when its parameters are READABLE_SPAN_PARAMETERS in that order, else a
    function that passes the same arguments by name (an SDK release that reorders them stays correct)."""
    import inspect  # noqa: PLC0415

    if tuple(inspect.signature(readable_span).parameters) == READABLE_SPAN_PARAMETERS:
        return readable_span
    return lambda *values: readable_span(**dict(zip(READABLE_SPAN_PARAMETERS, values, strict=True)))


def shutdown() -> None:
    """Flush and stop the exporter (at process exit)."""
    global enabled  # noqa: PLW0603
    enabled = False
    if _provider is not None:
        _provider.shutdown()  # type: ignore[attr-defined]


def recording_parent() -> bool:
    """Whether a span made now would be kept: tracing is on and the current span is sampled.

    (The sampled flag, not `is_recording()`: a sampled request's own span is made when it ends.)
    """
    return enabled and _sampled.get() is not None


def record_client_span(
    name: str, elapsed_seconds: float, attributes: Mapping[str, str], error: BaseException | None = None
) -> None:
    """A child span of the running sampled request or job, for a call that just ended after
    `elapsed_seconds` (its real start and end). Call only when `recording_parent()`."""
    parent = _sampled.get()
    if parent is None:
        return
    end = time.time_ns()
    context = SpanContext(parent.trace_id, random.getrandbits(64) or 1, False, parent.trace_flags, parent.trace_state)
    status = _UNSET if error is None else Status(StatusCode.ERROR, type(error).__name__)
    _finish(name, context, parent, SpanKind.CLIENT, attributes, end - int(elapsed_seconds * 1e9), end, status)


_UNSET: Final = Status(StatusCode.UNSET)
_ERROR: Final = Status(StatusCode.ERROR)


def _finish(  # noqa: PLR0917 - a span's fields, positional on the hot path
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    kind: SpanKind,
    attributes: Mapping[str, str | int],
    start: int,
    end: int,
    status: Status,
) -> None:
    """Hand a whole, ended span to the batch processor: what the SDK's `Span.end()` hands it, made at once.

    The attributes get the limits the SDK's span would apply (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`,
    `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`, through its own BoundedAttributes) when they could bite.
    """
    assert _processor is not None  # (configure() ran: `enabled`)
    assert _readable_span is not None
    if _value_length_limit is not None or len(attributes) > _count_limit:
        from opentelemetry.attributes import BoundedAttributes  # noqa: PLC0415

        attributes = BoundedAttributes(  # type: ignore[assignment]  # (a Mapping, as ReadableSpan takes)
            _count_limit, attributes, immutable=True, max_value_len=_value_length_limit
        )
    # ReadableSpan(name, context, parent, resource, attributes, events, links, kind, instrumentation_info,
    # status, start_time, end_time, instrumentation_scope): positional, cheaper than by keyword on this path.
    _processor.on_end(
        _readable_span(name, context, parent, _resource, attributes, (), (), kind, None, status, start, end, _scope)
    )


def trace_id(span: Span | None = None) -> str | None:
    """The hex trace id of `span` (default: the running request's or job's) if it is sampled."""
    context = _sampled.get() if span is None else span.get_span_context()
    return format(context.trace_id, "032x") if context is not None and context.trace_flags.sampled else None


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span if it is sampled, for log lines.

    An unsampled trace has nothing to look up in the tracing backend, and its ids on every
    line would cost each dropped request two hex formats and the bytes (the job it enqueues
    still carries its `traceparent`).
    """
    context = _sampled.get()
    if context is None:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def inject_current() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`), to store with a job.

    In a dropped request that began a new trace, that is its trace id with a new span id and the
    sampled flag clear: the context the SDK would have made current for it.
    """
    carrier: dict[str, str] = {}
    dropped = _dropped_root.get()
    if dropped and not trace.get_current_span().get_span_context().is_valid:
        span = NonRecordingSpan(SpanContext(dropped, random.getrandbits(64) or 1, False, _UNSAMPLED_ROOT))
        propagate.inject(carrier, trace.set_span_in_context(span))
    else:
        propagate.inject(carrier)
    return carrier


class _Deferred(NonRecordingSpan):
    """A sampled request's span until the request ends: its context is current, the span is made at the end.

    The route, the status and the name are only known at the end; the span made then
    (`_finish`) gets them all at once, with the real start time and the span id its
    children and jobs already name as their parent (updating a live SDK span attribute
    by attribute, under its lock, cost more than making it).
    """

    def __init__(self, context: SpanContext, parent: SpanContext, method: str) -> None:
        self._context = context  # (all NonRecordingSpan.__init__ does, without the call)
        self.parent = parent if parent.is_valid else None  # the caller's span, or none (a root)
        self.method = method
        self.started = time.time_ns()


def start_request_span(headers: list[tuple[bytes, bytes]], method: str) -> tuple[Span, object]:
    """The server span of one request, continuing the caller's `traceparent`; made current.

    `headers` are the ASGI scope's. A request the sampler drops gets a non-recording
    span (no SDK span, no attributes): only its context is made current. A sampled one's
    SDK span is made when it ends (`end_request_span`). A dropped new trace (no `traceparent`,
    the ratio sampler) makes nothing current but its trace id (`_dropped_root`).
    """
    carrier = None
    for name, value in headers:
        if name in _TRACE_HEADERS:
            carrier = carrier or {}
            carrier[name.decode()] = value.decode("latin-1")
    if (
        carrier is None
        and _ratio_bound is not None
        # No span is current: the OTel context is empty (as it is but under an outer instrumentation), or
        # holds no span. The first check is half the cost of the second, which is exact.
        and (not otel_context.get_current() or trace.get_current_span() is INVALID_SPAN)
    ):
        # A new trace, decided as decide() would: dropped, or a _Deferred root (what _start would make).
        trace_id = random.getrandbits(128) or 1  # (0 is the invalid id)
        if trace_id & _TRACE_ID_LOW_BITS >= _ratio_bound:
            return _DROPPED, _dropped_root.set(trace_id)
        context = SpanContext(trace_id, random.getrandbits(64) or 1, False, _SAMPLED_ROOT)
        span = _Deferred(context, INVALID_SPAN_CONTEXT, method)
        return span, (otel_context.attach(trace.set_span_in_context(span)), _sampled.set(context))
    return _start(method, SpanKind.SERVER, carrier, None, defer=True)


def ratio_bound(sampler: Sampler) -> int | None:
    """The trace-id bound of `sampler` when it is ParentBased with the default delegates and a
    TraceIdRatioBased, AlwaysOn or AlwaysOff root (recognised by the SDK's own description of it),
    else None."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased  # noqa: PLC0415 - the SDK is loaded by now

    match = _PARENT_BASED_RATIO.fullmatch(sampler.get_description())
    if match is None:
        return None
    if match["static"] is not None:
        return 1 << 64 if match["static"] == "AlwaysOnSampler" else 0
    return TraceIdRatioBased.get_bound_for_rate(float(match["rate"]))


def decide(
    context: otel_context.Context | None, parent: SpanContext, trace_id: int, name: str, kind: SpanKind
) -> tuple[bool, bool, TraceState | None]:
    """The sampler's decision for a span of `trace_id` under `parent` (the span context of `context`):
    (record it, set the sampled flag, the trace state to carry). Arithmetic for the SDK's
    ParentBased(TraceIdRatioBased) (see _ratio_bound), the provider's sampler otherwise."""
    if _ratio_bound is not None:
        if parent.is_valid:
            return parent.trace_flags.sampled, parent.trace_flags.sampled, parent.trace_state
        sampled = trace_id & _TRACE_ID_LOW_BITS < _ratio_bound
        return sampled, sampled, None
    assert _sampler is not None  # (configure() ran: `enabled`)
    sampling = _sampler.should_sample(context, trace_id, name, kind)
    recording = sampling.decision.is_recording()  # type: ignore[no-untyped-call]  # (unannotated in the SDK)
    return recording, sampling.decision.is_sampled(), sampling.trace_state  # type: ignore[no-untyped-call]


def _start(
    name: str,
    kind: SpanKind,
    carrier: Mapping[str, str] | None,
    attributes: Callable[[], Attributes] | None,
    *,
    defer: bool = False,
) -> tuple[Span, object]:
    """Ask the sampler first; make a span only for a sampled trace. The span (either kind) is made current.

    `attributes` is called only for a span the sampler records. A dropped root gets a fresh trace id
    and a dropped child its parent's trace id and state, each with a new span id and the
    sampled flag clear: exactly the context the SDK would make, without the span. `defer`: a
    sampled span is a `_Deferred` (its SDK span made by `end_request_span`).
    """
    context = propagate.extract(carrier) if carrier else None  # None: the current context is the parent's
    parent = trace.get_current_span(context).get_span_context()
    if parent.is_valid:
        trace_id, flags = parent.trace_id, TraceFlags(parent.trace_flags & TraceFlags.RANDOM_TRACE_ID)
    else:
        trace_id, flags = random.getrandbits(128) or 1, _UNSAMPLED_ROOT  # (0 is the invalid id)
    recording, is_sampled, trace_state = decide(context, parent, trace_id, name, kind)
    if not recording:
        span_context = SpanContext(trace_id, random.getrandbits(64) or 1, False, flags, trace_state)
        span: Span = NonRecordingSpan(span_context)
    elif defer and is_sampled:
        sampled = TraceFlags(flags | TraceFlags.SAMPLED)
        span_context = SpanContext(trace_id, random.getrandbits(64) or 1, False, sampled, trace_state)
        span = _Deferred(span_context, parent, name)
    else:
        drawn = None if parent.is_valid else _drawn_trace_id.set(trace_id)
        try:
            span = TRACER.start_span(name, context, kind, attributes() if attributes else None)
        finally:
            if drawn is not None:
                _drawn_trace_id.reset(drawn)
    made = span.get_span_context()
    marked = _sampled.set(made if made.trace_flags.sampled else None)
    return span, (otel_context.attach(trace.set_span_in_context(span, context)), marked)


def _detach(token: object) -> None:
    """Undo what _start made current (the token it returned)."""
    attached, sampled = cast("tuple[object, Token[SpanContext | None]]", token)
    otel_context.detach(attached)  # type: ignore[arg-type]
    _sampled.reset(sampled)


def end_request_span(span: Span, token: object, route: str, status: int, path: str) -> None:
    """End the request's span: a sampled one is made now, whole, with its route and status."""
    if span is _DROPPED:
        _dropped_root.reset(cast("Token[int]", token))
        return
    _detach(token)
    if not isinstance(span, _Deferred):
        return
    _finish(
        f"{span.method} {route}",
        span.get_span_context(),
        span.parent,
        SpanKind.SERVER,
        {
            "http.request.method": span.method,
            "http.route": route,
            "url.path": path,
            "http.response.status_code": status,
        },
        span.started,
        time.time_ns(),
        _ERROR if status >= 500 else _UNSET,
    )


def start_job_span(kind: str, job_id: str, attempt: int, headers: Mapping[str, str]) -> tuple[Span, object]:
    """The span of one job attempt, continuing the trace of the request that enqueued it; made current."""
    return _start(
        f"job {kind}",
        SpanKind.CONSUMER,
        headers or None,
        lambda: {"job.id": job_id, "job.kind": kind, "job.attempt": attempt},
    )


def end_job_span(span: Span, token: object, outcome: str | None) -> None:
    span.set_attribute("job.outcome", outcome or "abandoned")
    if outcome != "succeeded":
        span.set_status(Status(StatusCode.ERROR, outcome or "abandoned"))
    span.end()
    _detach(token)
