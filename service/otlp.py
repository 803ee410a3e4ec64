"""OTLP/HTTP span export with a direct protobuf encoder for the spans this service makes.

Why: with every request sampled, the SDK's encoder (`encode_spans`: one protobuf
object per span, attribute, value and status, then serialised) was the largest
single cost of tracing, about 25 us of a cache hit's 200 us
(bench/results/observability_overhead_profile.md). `encode_request` writes the
same `ExportTraceServiceRequest` wire bytes directly, a few microseconds a span
(bench/otlp_encoding.py measures both side by side).

What it covers: every field the SDK's encoder writes (ids, trace state, parent,
name, kind, times, attributes of every OTel attribute type, dropped counts,
status, flags), grouped by resource and instrumentation scope as the SDK groups
them. A span with events or links, or an attribute value the protobuf cannot
hold (an integer outside int64, a type OTel does not allow), is encoded by the
SDK's own `encode_spans` and its bytes appended: concatenated protobuf messages
merge, so the collector receives one request either way. Field numbers and
types are opentelemetry-proto's (`opentelemetry/proto/trace/v1/trace.proto`,
`common/v1/common.proto`); tests/unit/test_otlp.py holds the bytes to the SDK's
encoder, field by field, for every kind of span and attribute.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

logger = logging.getLogger(__name__)

_SMALL: Final = [bytes((n,)) for n in range(128)]
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
# SpanFlags: the span's record says whether its parent was remote (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
# 0x100), and if so (SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK 0x200), as the SDK's encoder writes them.
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", 0x100)  # field 16, fixed32
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", 0x300)
_pack_double = struct.Struct("<d").pack


class Unencodable(Exception):
    """A value this encoder leaves to the SDK's (its span is encoded there)."""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    length = len(payload)
    return tag + (_SMALL[length] if length < 0x80 else _varint(length)) + payload


def _text(tag: bytes, text: str) -> bytes:
    return _delimited(tag, text.encode())


def _int_value(value: int) -> bytes:  # int_value = 3, int64: two's complement in 10 bytes when negative
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise Unencodable(f"integer outside int64: {value}")
    return b"\x18" + _varint(value if value >= 0 else value + (1 << 64))


_SCALARS: Final[dict[type, Callable[[Any], bytes]]] = {
    str: lambda value: _text(b"\x0a", value),  # string_value = 1
    bool: lambda value: b"\x10\x01" if value else b"\x10\x00",  # bool_value = 2 (in a oneof: false is written)
    int: _int_value,
    float: lambda value: b"\x21" + _pack_double(value),  # double_value = 4
    bytes: lambda value: _delimited(b"\x3a", value),  # bytes_value = 7
    type(None): lambda _: b"",
}


def _any_value(value: Any) -> bytes:
    """An AnyValue message's body (common.proto), for the types the SDK's `_encode_value` takes."""
    encode = _SCALARS.get(type(value))
    if encode is not None:
        return encode(value)
    for kind in (bool, str, int, float, bytes):  # subclasses (an IntEnum, a str enum), in the SDK's order
        if isinstance(value, kind):
            return _SCALARS[kind](value)
    if isinstance(value, Sequence):  # array_value = 5: ArrayValue{values = 1}
        return _delimited(b"\x2a", b"".join(_delimited(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, Mapping):  # kvlist_value = 6: KeyValueList{values = 1}
        return _delimited(b"\x32", b"".join(_delimited(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise Unencodable(f"an attribute of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _text(b"\x0a", key) + _delimited(b"\x12", _any_value(value))  # KeyValue{key = 1, value = 2}


# Encoded attributes by (field tag, key, value type, value), for scalar values: most of a span's attributes
# repeat from span to span (method, route, status, db.system), and a lookup is a fraction of encoding.
# Emptied when full, so a value that never repeats (a URL path) costs one insert and no lasting memory.
_encoded_attributes: dict[tuple[bytes, str, type, object], bytes] = {}
_ENCODED_ATTRIBUTES_LIMIT: Final = 4096
_REPEATABLE: Final = frozenset({str, int, bool, float})


def _cache(cache: dict[Any, bytes], key: Any, encoded: bytes) -> bytes:
    """Keep `encoded` under `key` (emptying a full cache first) and return it."""
    if len(cache) >= _ENCODED_ATTRIBUTES_LIMIT:
        cache.clear()
    cache[key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        kind = type(value)
        if kind not in _REPEATABLE:
            parts.append(_delimited(tag, _key_value(key, value)))
            continue
        cached = (tag, key, kind, value)
        encoded = _encoded_attributes.get(cached)
        parts.append(
            encoded
            if encoded is not None
            else _cache(_encoded_attributes, cached, _delimited(tag, _key_value(key, value)))
        )
    return b"".join(parts)


# A span's fixed-size fields, each packed with its tag in one call: trace_id = 1 and span_id = 2 (bytes, the ids
# big-endian as the SDK writes them), parent_span_id = 4, and kind = 6 (varint) with start_time_unix_nano = 7
# and end_time_unix_nano = 8 (fixed64).
_pack_ids = struct.Struct(">HQQHQ").pack
_pack_parent_id = struct.Struct(">HQ").pack
_pack_kind_and_times = struct.Struct("<BBBQBQ").pack
_LOW_64: Final = (1 << 64) - 1
# Encoded span names and statuses, like _encoded_attributes: a service's spans have a few of each.
_encoded_names: dict[str, bytes] = {}
_encoded_statuses: dict[tuple[int, str | None], bytes] = {}


def _status(code: int, description: str | None) -> bytes:  # Status{message = 2, code = 3}, as field 15
    return _delimited(
        b"\x7a", (_text(b"\x12", description) if description else b"") + (b"\x18" + _SMALL[code] if code else b"")
    )


_READ: Final = (
    *("name", "context", "parent", "kind", "start_time", "end_time"),
    *("attributes", "events", "links", "status"),
)
# Per span class: whether it reads these through ReadableSpan's own properties (the SDK's Span classes do).
_reads_own_fields: dict[type, bool] = {}


def _fields(span: ReadableSpan) -> tuple[Any, ...]:
    """(name, context, parent, kind, start, end, attributes, events, links, status, dropped attributes)
    of `span`.

    Read from ReadableSpan's fields when the span's class keeps ReadableSpan's properties (the
    SDK's ReadableSpan and Span classes): those properties copy the events, links and attributes
    on every read, and reading them was a third of encoding a span (bench/otlp_encoding.py).
    Through the properties for a class that overrides any. tests/unit/test_otlp.py holds both
    ways to the SDK's encoder, so an SDK release that renames a field fails there.
    """
    cls = type(span)
    direct = _reads_own_fields.get(cls)
    if direct is None:
        direct = _reads_own_fields[cls] = isinstance(span, ReadableSpan) and all(
            getattr(cls, name) is getattr(ReadableSpan, name) for name in _READ
        )
    if direct:
        fields = span.__dict__
        attributes = fields["_attributes"]
        return (
            fields["_name"],
            fields["_context"],
            fields["_parent"],
            fields["_kind"],
            fields["_start_time"],
            fields["_end_time"],
            attributes,
            fields["_events"],
            fields["_links"],
            fields["_status"],
            attributes.dropped if isinstance(attributes, BoundedAttributes) else 0,  # (as dropped_attributes)
        )
    return (  # (the order of _READ)
        span.name,
        span.context,
        span.parent,
        span.kind,
        span.start_time,
        span.end_time,
        span.attributes,
        span.events,
        span.links,
        span.status,
        span.dropped_attributes,
    )


def encode_span(span: ReadableSpan) -> bytes:
    """One Span message (trace.proto), raising Unencodable for what the SDK's encoder must do."""
    name, context, parent, kind, start, end, attributes, events, links, status, dropped = _fields(span)
    if events or links:
        raise Unencodable("events or links")
    assert context is not None  # (an ended SDK span always has one)
    # A SpanContext is a tuple (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid): indexed,
    # not read through its properties, on this path.
    trace_id = context[0]
    parts = [_pack_ids(0x0A10, trace_id >> 64, trace_id & _LOW_64, 0x1208, context[1])]
    trace_state = context[4]
    if trace_state:
        parts.append(_text(b"\x1a", ",".join(f"{key}={value}" for key, value in trace_state.items())))
    if parent is not None:
        parts.append(_pack_parent_id(0x2208, parent[1]))
    if name:
        encoded = _encoded_names.get(name)
        parts.append(encoded if encoded is not None else _cache(_encoded_names, name, _text(b"\x2a", name)))
    # SpanKind: the API's INTERNAL..CONSUMER (0-4) are the proto's 1-5 (an enum's `_value_` is its value).
    parts.append(_pack_kind_and_times(0x30, kind._value_ + 1, 0x39, start or 0, 0x41, end or 0))
    if attributes:
        parts.append(_attributes(b"\x4a", attributes))
    if dropped:
        parts += (b"\x50", _varint(dropped))
    key = (status.status_code._value_, status.description)
    encoded = _encoded_statuses.get(key)
    parts += (
        encoded if encoded is not None else _cache(_encoded_statuses, key, _status(*key)),
        _FLAGS_REMOTE if parent is not None and parent[2] else _FLAGS_LOCAL,
    )
    return b"".join(parts)


def _scope(span: ReadableSpan) -> bytes:
    scope = span.instrumentation_scope
    if scope is None:
        return b""
    return (
        (_text(b"\x0a", scope.name) if scope.name else b"")
        + (_text(b"\x12", scope.version) if scope.version else b"")
        + _attributes(b"\x1a", scope.attributes)
    )


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest's wire bytes for `spans`: ResourceSpans per resource, ScopeSpans per
    scope within it, in order of first appearance (as the SDK's encoder groups them; resources and
    scopes are told apart by identity, which for one provider's spans is the same thing)."""
    groups: dict[int, tuple[ReadableSpan, dict[int, tuple[ReadableSpan, list[bytes]]]]] = {}
    left: list[ReadableSpan] = []
    for span in spans:
        try:
            encoded = encode_span(span)
        except Unencodable:
            left.append(span)
            continue
        resource = groups.setdefault(id(span.resource), (span, {}))[1]
        resource.setdefault(id(span.instrumentation_scope), (span, []))[1].append(encoded)
    out = []
    for first, scopes in groups.values():
        body = [_delimited(b"\x0a", _attributes(b"\x0a", first.resource.attributes))]
        for scoped, encoded_spans in scopes.values():
            scope_spans = [_delimited(b"\x0a", _scope(scoped)), *(_delimited(b"\x12", s) for s in encoded_spans)]
            schema = scoped.instrumentation_scope.schema_url if scoped.instrumentation_scope else None
            if schema:
                scope_spans.append(_text(b"\x1a", schema))
            body.append(_delimited(b"\x12", b"".join(scope_spans)))
        if first.resource.schema_url:
            body.append(_text(b"\x1a", first.resource.schema_url))
        out.append(_delimited(b"\x0a", b"".join(body)))  # ExportTraceServiceRequest.resource_spans = 1
    if left:
        out.append(encode_spans(left).SerializePartialToString())
    return b"".join(out)


class DirectOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (endpoint, headers, TLS, compression, timeout and retries from the
    same OTEL_* variables) with `encode_request` as its encoder.

    `export` follows `OTLPSpanExporter.export` (opentelemetry-exporter-otlp-proto-http 1.45): the
    exporter's own metrics, the request size limit and the HTTP client's retries are its.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_request(spans)
            except Exception as error:
                logger.exception("Failed to encode span batch")
                result.error = error
                return SpanExportResult.FAILURE
            if 0 < self._max_request_size < len(data):
                logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(data),
                    self._max_request_size,
                )
                result.error = ValueError(f"{len(data)} bytes exceeds max_request_size {self._max_request_size}")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = None if sent.status_code is None else {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
