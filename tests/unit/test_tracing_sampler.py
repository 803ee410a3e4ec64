"""service/tracing.py decides ParentBased(TraceIdRatioBased) itself: the same decision as the SDK's sampler.

For every kind of parent (none, remote or local, sampled or not, with a trace state) and
thousands of trace ids around the ratio's bound, `decide` with the arithmetic gives what the
SDK's own sampler gives. Samplers it does not know are left to the SDK.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from service import tracing

RATE = 0.25


def _parents() -> Iterator[SpanContext]:
    yield trace.INVALID_SPAN_CONTEXT  # a root
    state = TraceState([("vendor", "value")])
    for remote in (True, False):
        for flags in (TraceFlags.DEFAULT, TraceFlags.SAMPLED):
            for trace_state in (None, state):
                yield SpanContext(0xABC, 0xDEF, remote, TraceFlags(flags), trace_state)


@pytest.fixture
def sdk_sampler(monkeypatch: pytest.MonkeyPatch) -> Sampler:
    sampler = ParentBasedTraceIdRatio(RATE)
    monkeypatch.setattr(tracing, "_sampler", sampler)
    return sampler


def test_the_arithmetic_decides_as_the_sdks_sampler(sdk_sampler: Sampler, monkeypatch: pytest.MonkeyPatch) -> None:
    bound = tracing.ratio_bound(sdk_sampler)
    assert bound == TraceIdRatioBased.get_bound_for_rate(RATE)
    rng = random.Random(5)
    ids = [rng.getrandbits(128) for _ in range(3000)]
    ids += [(high << 64) | low for high in (0, 7) for low in (bound - 1, bound, bound + 1)]  # at the bound
    sampled_roots = 0
    for parent in _parents():
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent.is_valid else None
        for trace_id in ids:
            monkeypatch.setattr(tracing, "_ratio_bound", None)
            by_sdk = tracing.decide(context, parent, trace_id, "GET", SpanKind.SERVER)
            monkeypatch.setattr(tracing, "_ratio_bound", bound)
            by_arithmetic = tracing.decide(context, parent, trace_id, "GET", SpanKind.SERVER)
            assert by_arithmetic == by_sdk, (parent, hex(trace_id))
            sampled_roots += not parent.is_valid and by_sdk[0]
    assert 0.2 < sampled_roots / len(ids) < 0.3  # the ratio, roughly: both sides really sampled some


@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_ON, TraceIdRatioBased(RATE), ParentBased(TraceIdRatioBased(RATE), remote_parent_not_sampled=ALWAYS_ON)],
    ids=["always_on", "ratio without parent", "parent-based with another delegate"],
)
def test_other_samplers_are_left_to_the_sdk(sampler: Sampler) -> None:
    assert tracing.ratio_bound(sampler) is None


@pytest.mark.parametrize(
    ("sampler", "bound"),
    [(ParentBased(ALWAYS_ON), 1 << 64), (ParentBased(ALWAYS_OFF), 0), (ParentBasedTraceIdRatio(1.0), 1 << 64)],
    ids=["parentbased_always_on (the default)", "parentbased_always_off", "ratio 1"],
)
def test_parent_based_static_roots_are_decided_by_the_same_arithmetic(
    sampler: Sampler, bound: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tracing.ratio_bound(sampler) == bound
    monkeypatch.setattr(tracing, "_sampler", sampler)
    rng = random.Random(7)
    ids = [rng.getrandbits(128) for _ in range(500)] + [1, (1 << 128) - 1]
    for parent in _parents():
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent.is_valid else None
        for trace_id in ids:
            monkeypatch.setattr(tracing, "_ratio_bound", None)
            by_sdk = tracing.decide(context, parent, trace_id, "GET", SpanKind.SERVER)
            monkeypatch.setattr(tracing, "_ratio_bound", bound)
            assert tracing.decide(context, parent, trace_id, "GET", SpanKind.SERVER) == by_sdk, (parent, trace_id)


def test_readable_spans_are_made_with_the_sdks_parameters_in_order() -> None:
    """_finish passes ReadableSpan's arguments by position: this SDK takes them in that order, and a class
    that takes them in another gets them by name."""
    from opentelemetry.sdk.trace import ReadableSpan  # noqa: PLC0415

    assert tracing.readable_span_maker(ReadableSpan) is ReadableSpan  # (fails on an SDK that reorders them)

    class Reordered(ReadableSpan):
        def __init__(self, status: object = None, **fields: object) -> None:  # status first
            super().__init__(status=status, **fields)  # type: ignore[arg-type]

    context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
    status = tracing._ERROR
    values = ("GET /", context, None, None, {"a": 1}, (), (), SpanKind.SERVER, None, status, 10, 20, None)
    span = tracing.readable_span_maker(Reordered)(*values)
    assert (span.name, span.context, span.status, span.start_time, span.end_time) == ("GET /", context, status, 10, 20)
    assert span.kind is SpanKind.SERVER
