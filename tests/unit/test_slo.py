"""The SLO file: every latency threshold is a bucket boundary, and the histogram uses those buckets."""

from __future__ import annotations

import pytest

from service import slo
from service.metrics import HTTP_DURATION

GOOD = """
[latency]
p50_target = 0.05
p50_alert = 0.1
p99_target = 0.2
p99_alert = 0.5
[errors]
target = 0.001
alert = 0.01
[throughput]
drop_alert = 0.2
[histogram]
buckets = [0.05, 0.1, 0.2, 0.5, 1]
"""


def test_the_committed_file_matches_the_design_baselines() -> None:
    baselines = slo.load()
    assert (baselines.p50_target, baselines.p50_alert, baselines.p99_target, baselines.p99_alert) == (
        0.05,
        0.1,
        0.2,
        0.5,
    )
    assert (baselines.error_target, baselines.error_alert, baselines.throughput_drop_alert) == (0.001, 0.01, 0.2)
    assert baselines.buckets == (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10)


def test_the_latency_histogram_uses_the_slo_buckets() -> None:
    assert tuple(HTTP_DURATION._upper_bounds[:-1]) == slo.load().buckets  # the last one is +Inf


def test_a_threshold_between_buckets_is_refused() -> None:
    with pytest.raises(ValueError, match="not histogram bucket boundaries"):
        slo.parse(GOOD.replace("p99_alert = 0.5", "p99_alert = 0.4"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[0.05, 0.1, 0.2, 0.5, 1]", "[0.1, 0.05, 0.2, 0.5, 1]"), "strictly increasing"),
        (("alert = 0.01", "alert = 0.0001"), "0 < target < alert < 1"),
    ],
)
def test_inconsistent_files_are_refused(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slo.parse(GOOD.replace(*change))
