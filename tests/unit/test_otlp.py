"""service/otlp.py writes the bytes the SDK's OTLP encoder would: held to it field by field.

Each case parses our bytes with opentelemetry-proto's own message class and compares
the result with the SDK's `encode_spans` of the same spans (protobuf message equality:
every field, presence included). Spans the direct encoder leaves to the SDK (events,
links, an integer outside int64) come out as the same spans, in requests that merge.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from service.otlp import DirectOTLPSpanExporter, Unencodable, encode_request, encode_span

RESOURCE = Resource.create({"service.name": "catalog-api", "deployment.environment.name": "test"})
SCOPE = InstrumentationScope("catalog-service")
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


def _span(
    name: str = "GET /v1/items/{item_id}",
    *,
    attributes: Mapping[str, Any] | None = None,
    parent: SpanContext | None = None,
    kind: SpanKind = SpanKind.SERVER,
    status: Status | None = None,
    trace_state: TraceState | None = None,
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    span_id: int = 0x00F067AA0BA902B7,
    events: tuple[Event, ...] = (),
    links: tuple[Link, ...] = (),
) -> ReadableSpan:
    return ReadableSpan(
        name,
        SpanContext(TRACE_ID, span_id, False, SAMPLED, trace_state),
        parent,
        resource,
        {"http.request.method": "GET", "http.response.status_code": 200} if attributes is None else attributes,
        events,
        links,
        kind,
        status=status or Status(StatusCode.UNSET),
        start_time=1_765_000_000_123_456_789,
        end_time=1_765_000_000_125_000_001,
        instrumentation_scope=scope,
    )


def _parsed(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def _decoded(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return _parsed(encode_request(spans))


ATTRIBUTE_VALUES: dict[str, Any] = {
    "text": "café ✓",
    "empty text": "",
    "long text": "x" * 300,  # a length that needs a two-byte varint
    "true": True,
    "false": False,
    "zero": 0,
    "int": 200,
    "negative": -5,
    "int64 max": (1 << 63) - 1,
    "int64 min": -(1 << 63),
    "float": 1.5,
    "float zero": 0.0,
    "negative float": -2.25e-10,
    "infinity": math.inf,
    "bytes": b"\x00\xff",
    "strings": ("a", "b"),
    "bools": [True, False],
    "ints": (1, -1, 1 << 40),
    "floats": (0.5,),
    "empty sequence": (),
    "mapping": {"nested": "yes", "n": 2},
}


@pytest.mark.parametrize("key", sorted(ATTRIBUTE_VALUES))
def test_each_attribute_type_encodes_as_the_sdk_does(key: str) -> None:
    spans = [_span(attributes={key: ATTRIBUTE_VALUES[key]})]
    assert _decoded(spans) == encode_spans(spans)


def _variety() -> Iterator[ReadableSpan]:
    yield _span(attributes=ATTRIBUTE_VALUES)  # all of them at once
    yield _span(attributes={})
    yield _span(name="")
    yield _span(name="SELECT ünïcode")
    for kind in SpanKind:
        yield _span(kind=kind)
    local_parent = SpanContext(TRACE_ID, 0x1111, False, SAMPLED)
    remote_parent = SpanContext(TRACE_ID, 0x2222, True, SAMPLED)
    yield _span(parent=local_parent)
    yield _span(parent=remote_parent)
    yield _span(trace_state=TraceState([("vendor", "value"), ("other", "x")]))
    yield _span(status=Status(StatusCode.ERROR))
    yield _span(status=Status(StatusCode.ERROR, "TimeoutError"))
    yield _span(status=Status(StatusCode.OK))
    yield _span(attributes=BoundedAttributes(2, {"a": "1", "b": "2", "c": "3"}, immutable=True))  # 1 dropped
    yield _span(attributes=BoundedAttributes(10, {"url.path": "/v1/items/123456"}, max_value_len=4))
    yield _span(span_id=1)
    yield _span(span_id=(1 << 64) - 1)
    for same in (1, True, 1.0, "1"):  # equal (or equal-hashing) values of other types: encoded apart
        yield _span(attributes={"v": same})


def test_a_batch_of_every_kind_of_span_encodes_as_the_sdk_does() -> None:
    spans = list(_variety())
    assert _decoded(spans) == encode_spans(spans)


class _SpanOfAnotherClass(ReadableSpan):
    """A class that overrides a property ReadableSpan has: the encoder reads it through the properties."""

    @property
    def name(self) -> str:
        return f"{self._name} (another class)"


def test_a_span_of_another_class_is_read_through_its_properties_and_encodes_as_the_sdk_does() -> None:
    spans: list[ReadableSpan] = [
        _SpanOfAnotherClass(
            span.name,
            span.context,
            span.parent,
            span.resource,
            span.attributes,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
        for span in _variety()
    ]
    bounded = BoundedAttributes(2, {"a": "1", "b": "2", "c": "3"}, immutable=True)  # one dropped
    spans.append(_SpanOfAnotherClass("bounded", _span().context, None, RESOURCE, bounded, start_time=1, end_time=2))
    assert _decoded(spans) == encode_spans(spans)
    decoded = [span for scope in _decoded(spans).resource_spans[0].scope_spans for span in scope.spans]
    assert [span.dropped_attributes_count for span in decoded if span.name.startswith("bounded")] == [1]
    assert all(span.name.endswith("(another class)") for span in decoded)


def test_spans_the_sdks_tracer_made_encode_as_the_sdk_does() -> None:
    """The SDK's own `Span` class (a job's span is one), ended: its fields are read as a ReadableSpan's."""
    tracer = TracerProvider(resource=RESOURCE).get_tracer("catalog-service")
    parent = tracer.start_span("job cpu.burn", kind=SpanKind.CONSUMER, attributes={"job.attempt": 2})
    parent.set_attribute("job.outcome", "failed")
    parent.set_status(Status(StatusCode.ERROR, "failed"))
    parent.end()
    child = tracer.start_span("redis SET", context=set_span_in_context(parent), kind=SpanKind.CLIENT)
    child.end()
    spans = [cast("ReadableSpan", parent), cast("ReadableSpan", child)]
    assert type(spans[0]).__name__ != "ReadableSpan"  # (the SDK's Span, a subclass)
    assert _decoded(spans) == encode_spans(spans)


def test_spans_of_several_resources_and_scopes_are_grouped_as_the_sdk_groups_them() -> None:
    worker = Resource.create({"service.name": "catalog-worker"}, schema_url="https://opentelemetry.io/schemas/1.0")
    versioned = InstrumentationScope("other", "1.2.3", "https://opentelemetry.io/schemas/1.1", {"scope.attr": 1})
    spans = [
        _span(span_id=1),
        _span(span_id=2, resource=worker),
        _span(span_id=3, scope=versioned),
        _span(span_id=4),
        _span(span_id=5, resource=worker, scope=None),
        _span(span_id=6, resource=worker),
    ]
    decoded = _decoded(spans)
    assert decoded == encode_spans(spans)
    assert len(decoded.resource_spans) == 2
    assert [len(group.scope_spans) for group in decoded.resource_spans] == [2, 2]


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode_request([]) == b""
    assert _decoded([]) == encode_spans([])


def _flattened(request: ExportTraceServiceRequest) -> list[tuple[bytes, bytes, bytes, ProtoSpan]]:
    return sorted(
        (
            group.resource.SerializeToString(deterministic=True),
            scoped.scope.SerializeToString(deterministic=True),
            span.span_id,
            span,
        )
        for group in request.resource_spans
        for scoped in group.scope_spans
        for span in scoped.spans
    )


def test_what_the_direct_encoder_cannot_write_is_left_to_the_sdks_and_merges() -> None:
    event = Event("retry", {"attempt": 2}, timestamp=1_765_000_000_124_000_000)
    link = Link(SpanContext(0xABC, 0xDEF, True, SAMPLED), {"link.kind": "follows"})
    odd = [
        _span(span_id=2, events=(event,)),
        _span(span_id=3, links=(link,)),
        _span(span_id=4, attributes={"too big": 1 << 70, "kept": "yes"}),  # the SDK drops the bad attribute
    ]
    spans = [_span(span_id=1), *odd, _span(span_id=5)]
    for span in odd:
        with pytest.raises(Unencodable, match=r"events or links|int64"):
            encode_span(span)
    decoded = _decoded(spans)
    assert _flattened(decoded) == _flattened(encode_spans(spans))
    [too_big] = [span for _, _, _, span in _flattened(decoded) if span.span_id == (4).to_bytes(8, "big")]
    assert [attribute.key for attribute in too_big.attributes] == ["kept"]


class _Receiver:
    """An OTLP/HTTP endpoint that keeps the bodies it is sent (a collector is outside our system)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                received.headers.append({name.lower(): value for name, value in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    endpoint = _Receiver()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()


def test_the_exporter_sends_the_direct_encoding_with_the_sdks_headers(
    receiver: _Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=catalog")
    exporter = DirectOTLPSpanExporter(endpoint=receiver.url)
    spans = list(_variety())
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]  # (unannotated in the SDK)
    [body] = receiver.bodies
    assert _parsed(body) == encode_spans(spans)
    assert receiver.headers[0]["content-type"] == "application/x-protobuf"
    assert receiver.headers[0]["x-tenant"] == "catalog"
    assert exporter.export(spans) == SpanExportResult.FAILURE  # after shutdown, as the SDK's


def test_more_distinct_attribute_values_than_are_kept_encoded_still_encode_as_the_sdk_does() -> None:
    spans = [_span(span_id=n + 1, attributes={"url.path": f"/v1/items/{n}", "n": n}) for n in range(5000)]
    assert _decoded(spans) == encode_spans(spans)
