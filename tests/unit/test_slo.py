"""The SLO file: every latency threshold is a bucket boundary, and the histogram uses those buckets."""

from __future__ import annotations

from pathlib import Path

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


SLO_FILE = Path(slo.__file__).with_name("slo.toml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("factor = 14.4", "factor = 5"), "fastest first"),
        (("factor = 6\n", "factor = 14.4\n"), "fastest first"),
        (("factor = 14.4", "factor = 1000"), "never fires"),
        (("factor = 1\n", "factor = 0\n"), "never fires"),
        (("drop_alert = 0.2", "drop_alert = 1.5"), "throughput.drop_alert"),
        (("queue_wait_quantile = 0.9", "queue_wait_quantile = 90"), "queue_wait_quantile"),
        (("failure_ratio_alert = 0.1", "failure_ratio_alert = 0"), "failure_ratio_alert"),
        (("queue_wait_alert_seconds = 60", "queue_wait_alert_seconds = 0"), "queue_wait_alert_seconds"),
        (('throughput_offset = "1w"', 'throughput_offset = "a week"'), "is not a duration"),
        (('stat_window = "5m"', 'stat_window = "5 minutes"'), "is not a duration"),
        (("quantiles = [0.5, 0.9, 0.99]", "quantiles = [0.99, 0.5]"), "strictly increasing"),
        (("quantiles = [0.5, 0.9, 0.99]", "quantiles = [0.5, 99]"), "quantiles"),
        (("pool_in_use_critical = 0.9", "pool_in_use_critical = 0.5"), "pool_in_use_warning < pool_in_use_critical"),
        (("event_loop_lag_warning = 0.05", "event_loop_lag_warning = 0.5"), "event_loop_lag_warning <"),
        (("budget_left_warning = 0.25", "budget_left_warning = 25"), "budget_left_warning"),
        (("slots_busy_warning = 0.8", "slots_busy_warning = 1"), "slots_busy_warning"),
    ],
)
def test_bad_monitoring_numbers_are_refused(change: tuple[str, str], message: str) -> None:
    text = SLO_FILE.read_text(encoding="utf-8")
    assert change[0] in text, change[0]
    with pytest.raises(ValueError, match=message):
        slo.parse_monitoring(text.replace(*change, 1))


def test_the_monitoring_numbers_are_read_from_the_file() -> None:
    parsed = slo.parse_monitoring(SLO_FILE.read_text(encoding="utf-8"))
    assert [rate.factor for rate in parsed.burn_rates] == [14.4, 6, 3, 1]
    assert parsed.throughput_offset == 7 * 86400
    assert parsed.dashboards.stat_window == 300
    assert parsed.dashboards.quantiles == (0.5, 0.9, 0.99)


def test_no_burn_rate_alert_at_all_is_refused() -> None:
    text = SLO_FILE.read_text(encoding="utf-8")
    head, _, tail = text.partition("[[monitoring.burn_rates]]")
    _, _, tail = tail.partition("[monitoring.thresholds]")
    with pytest.raises(ValueError, match="at least one burn-rate alert"):
        slo.parse_monitoring(f"{head}burn_rates = []\n\n[monitoring.thresholds]{tail}")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("3d", 259200), ("1w", 604800), ("1h30m", 5400)],
)
def test_durations_parse_and_format_back(text: str, seconds: int) -> None:
    assert slo.duration_seconds(text) == seconds
    assert slo.format_duration(seconds) == text


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "1.5h", "5mm", "-5m"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        slo.duration_seconds(text)
