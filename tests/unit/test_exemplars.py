"""Exemplars on the latency histogram: the first sampled request of each bucket each second takes one.

Prometheus keeps one exemplar per bucket (the latest) and reads it once a scrape, so
storing one for every sampled request (prometheus_client validates each) was work no
scrape could see (service/metrics.py, HttpMetricsMiddleware._exemplar_due).
"""

from __future__ import annotations

import pytest

from service.metrics import HTTP_DURATION_BOUNDS, HttpMetricsMiddleware

SERIES = ("/v1/items/{item_id}", "GET", "200")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("service.metrics.time.monotonic", lambda: now[0])
    return now


def test_one_exemplar_per_bucket_per_series_each_second(clock: list[float]) -> None:
    middleware = HttpMetricsMiddleware(app=None, excluded_paths=frozenset())  # type: ignore[arg-type]
    fast, slow = HTTP_DURATION_BOUNDS[0] / 2, HTTP_DURATION_BOUNDS[-1] * 2  # first bucket, +Inf
    assert middleware._exemplar_due(SERIES, fast)
    assert not middleware._exemplar_due(SERIES, fast)  # same bucket, same second
    assert middleware._exemplar_due(SERIES, slow)  # another bucket has its own
    assert middleware._exemplar_due(("/v1/items/{item_id}", "GET", "404"), fast)  # another series too
    clock[0] += 0.999
    assert not middleware._exemplar_due(SERIES, fast)
    clock[0] += 0.001
    assert middleware._exemplar_due(SERIES, fast)  # a second later: due again


def test_a_value_on_a_bound_is_in_that_bounds_bucket(clock: list[float]) -> None:
    """`le` buckets: an observation equal to a bound counts in that bound's bucket, as prometheus_client files it."""
    middleware = HttpMetricsMiddleware(app=None, excluded_paths=frozenset())  # type: ignore[arg-type]
    bound = HTTP_DURATION_BOUNDS[2]
    assert middleware._exemplar_due(SERIES, bound)
    assert not middleware._exemplar_due(SERIES, (HTTP_DURATION_BOUNDS[1] + bound) / 2)  # the same bucket
    assert middleware._exemplar_due(SERIES, bound * 1.0001)  # the next one
