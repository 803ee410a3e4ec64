"""The load test's verdict rules (bench/loadtest/slis.py) at their boundaries, and its argument checks."""

from __future__ import annotations

import pytest
from loadtest.run import parse_arguments
from loadtest.slis import ClientView, ServerView, judge

from service import slo as slo_file

SLO = slo_file.load()


def server(**overrides: float | None) -> ServerView:
    values: dict[str, float | None] = {
        "requests": 1000.0,
        "errors": 0.0,
        "seconds": 10.0,
        "share_slower_than_p50_target": 0.1,
        "share_slower_than_p99_target": 0.001,
        "p50_estimate": 0.01,
        "p99_estimate": 0.1,
    }
    values.update(overrides)
    return ServerView(**values)  # type: ignore[arg-type]


def client(**overrides: float | None) -> ClientView:
    values: dict[str, float | None] = {
        "requests": 1000,
        "errors": 0,
        "rejected": 0,
        "seconds": 10.0,
        "p50": 0.012,
        "p99": 0.12,
    }
    values.update(overrides)
    return ClientView(**values)  # type: ignore[arg-type]


def by_sli(offered: float, server_view: ServerView, client_view: ClientView) -> dict[str, tuple[bool | None, ...]]:
    return {v.sli: (v.server_pass, v.client_pass) for v in judge(SLO, offered, server_view, client_view)}


def test_a_healthy_run_passes_every_sli_on_both_views() -> None:
    verdicts = judge(SLO, 100, server(), client())
    assert [v.sli for v in verdicts] == ["P50 latency", "P99 latency", "error rate (5xx)", "throughput"]
    assert all(v.server_pass and v.client_pass and v.passed for v in verdicts)


def test_server_latency_is_judged_on_the_share_of_requests_beyond_the_bucket_not_the_estimate() -> None:
    # Half the requests at or under the P50 target passes; any more beyond it fails, whatever the estimate says.
    assert by_sli(100, server(share_slower_than_p50_target=0.5, p50_estimate=0.049), client())["P50 latency"][0]
    assert not by_sli(100, server(share_slower_than_p50_target=0.51, p50_estimate=0.01), client())["P50 latency"][0]
    assert by_sli(100, server(share_slower_than_p99_target=0.01), client())["P99 latency"][0]
    assert not by_sli(100, server(share_slower_than_p99_target=0.0101), client())["P99 latency"][0]


def test_client_latency_must_be_below_the_target() -> None:
    assert not by_sli(100, server(), client(p50=SLO.p50_target))["P50 latency"][1]
    assert by_sli(100, server(), client(p50=SLO.p50_target * 0.99))["P50 latency"][1]
    assert not by_sli(100, server(), client(p99=SLO.p99_target))["P99 latency"][1]


def test_error_rate_counts_against_the_target_on_each_view() -> None:
    at_target = SLO.error_target * 1000
    verdict = by_sli(100, server(errors=at_target), client(errors=int(at_target) - 1))["error rate (5xx)"]
    assert verdict == (False, True)


def test_throughput_passes_down_to_the_alerts_drop_below_the_offered_rate() -> None:
    floor = 100 * (1 - SLO.throughput_drop_alert)  # requests/s
    passing = by_sli(100, server(requests=floor * 10), client(requests=int(floor * 10)))["throughput"]
    failing = by_sli(100, server(requests=floor * 10 - 1), client(requests=int(floor * 10) - 1))["throughput"]
    assert passing == (True, True)
    assert failing == (False, False)


def test_a_view_without_traffic_is_not_applicable_and_does_not_pass_silently() -> None:
    verdicts = judge(SLO, 100, server(requests=0.0, errors=0.0, p50_estimate=None, p99_estimate=None), client())
    assert all(v.server_pass is None for v in verdicts)
    no_client = judge(SLO, 100, server(), client(requests=0, p50=None, p99=None))
    assert all(v.client_pass is None for v in no_client)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--duration", "0"], "is not a duration"),
        (["--duration", "2 minutes"], "is not a duration"),
        (["--rate", "-5"], "is not a positive number"),
        (["--rate", "nan"], "is not a positive number"),
        (["--rate", "2", "--write-rate", "3"], "--write-rate must be below --rate"),
        (["--seed-items", "-1"], "must be >= 0"),
    ],
)
def test_bad_arguments_stop_with_a_message_naming_them(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_arguments(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_durations_read_as_seconds() -> None:
    assert parse_arguments(["--duration", "2m"]).duration == 120
    assert parse_arguments(["--duration", "90"]).duration == 90
    assert parse_arguments(["--duration", "1h"]).duration == 3600
