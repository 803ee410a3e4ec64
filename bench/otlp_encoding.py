"""What encoding a batch of spans for OTLP costs: the SDK's `encode_spans` against service/otlp.py.

The batch is what the API sends with every request sampled: 512 request spans (the
SDK's default OTEL_BSP_MAX_EXPORT_BATCH_SIZE), each with its four attributes and a
URL path that differs from span to span, and a PostgreSQL child span for one in
five of them (615 spans). Both encoders take the same batch, alternating, in rounds;
the ratio is per round, the claim its median with the lowest and highest. Before
timing, our bytes are parsed and compared with the SDK's message (they must be
equal, or the run stops). Printed only; the request path's cost of tracing is
bench/observability_overhead.py's.

    uv run python bench/otlp_encoding.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the service package, run as a script
from service.otlp import encode_request

BATCH = 512


def batch() -> list[ReadableSpan]:
    resource = Resource.create({"service.name": "catalog-api"})
    scope = InstrumentationScope("catalog-service")
    flags = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
    spans = []
    for n in range(BATCH):
        context = SpanContext((n + 1) << 64 | 0xABCDEF, n + 1, False, flags)
        start = 1_765_000_000_000_000_000 + n * 250_000
        if n % 5 == 0:
            child = SpanContext(context.trace_id, (n + 1) << 32, False, flags)
            statement = {"db.system.name": "postgresql", "db.operation.name": "SELECT"}
            spans.append(
                ReadableSpan("postgres SELECT", child, context, resource, statement, kind=SpanKind.CLIENT,
                             start_time=start + 20_000, end_time=start + 90_000, instrumentation_scope=scope)
            )  # fmt: skip
        attributes: dict[str, str | int] = {
            "http.request.method": "GET",
            "http.route": "/v1/items/{item_id}",
            "url.path": f"/v1/items/{n * 37 % 10_000}",
            "http.response.status_code": 200,
        }
        spans.append(
            ReadableSpan("GET /v1/items/{item_id}", context, None, resource, attributes, kind=SpanKind.SERVER,
                         start_time=start, end_time=start + 180_000, instrumentation_scope=scope)
        )  # fmt: skip
    return spans


def per_span_us(encode: Callable[[], bytes], spans: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        encode()
        best = min(best, time.process_time() - started)
    return best * 1e6 / spans


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    spans = batch()
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode_request(spans))
    if ours != encode_spans(spans):
        print("service/otlp.py's bytes differ from the SDK's encoding: no timing", file=sys.stderr)
        return 1
    sdk: list[float] = []
    direct: list[float] = []
    for round_number in range(rounds):
        pair = [
            (sdk, lambda: encode_spans(spans).SerializePartialToString()),
            (direct, lambda: encode_request(spans)),
        ]
        for results, encode in pair if round_number % 2 else reversed(pair):
            results.append(per_span_us(encode, len(spans)))
    ratios = [a / b for a, b in zip(sdk, direct, strict=True)]
    print(f"{len(spans)} spans a batch, {rounds} rounds, CPU time per span (best of 5 encodings per round):")
    print(f"  SDK encode_spans + serialise  median {statistics.median(sdk):6.2f} us")
    print(f"  service/otlp.py encode_request median {statistics.median(direct):6.2f} us")
    print(f"  SDK / ours: {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}x to {max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
