"""The SLO baselines (service/slo.toml), loaded and checked once.

The file is data, not code, so the rule and dashboard generators (and anyone's
tooling) read the same numbers the service uses for its histogram buckets.
`load()` is what the service needs; `load_monitoring()` adds the alerting
windows and thresholds that only monitoring/generate.py reads.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Slo:
    p50_target: float
    p50_alert: float
    p99_target: float
    p99_alert: float
    error_target: float
    error_alert: float
    throughput_drop_alert: float
    buckets: tuple[float, ...]

    def latency_thresholds(self) -> tuple[float, ...]:
        return (self.p50_target, self.p50_alert, self.p99_target, self.p99_alert)


def parse(text: str) -> Slo:
    data = tomllib.loads(text)
    slo = Slo(
        p50_target=float(data["latency"]["p50_target"]),
        p50_alert=float(data["latency"]["p50_alert"]),
        p99_target=float(data["latency"]["p99_target"]),
        p99_alert=float(data["latency"]["p99_alert"]),
        error_target=float(data["errors"]["target"]),
        error_alert=float(data["errors"]["alert"]),
        throughput_drop_alert=float(data["throughput"]["drop_alert"]),
        buckets=tuple(float(bound) for bound in data["histogram"]["buckets"]),
    )
    if list(slo.buckets) != sorted(set(slo.buckets)):
        raise ValueError("histogram buckets must be strictly increasing")
    missing = [threshold for threshold in slo.latency_thresholds() if threshold not in slo.buckets]
    if missing:
        raise ValueError(f"latency thresholds {missing} are not histogram bucket boundaries")
    if not (0 < slo.error_target < slo.error_alert < 1):
        raise ValueError("error target and alert must satisfy 0 < target < alert < 1")
    return slo


@cache
def load() -> Slo:
    return parse(resources.files("service").joinpath("slo.toml").read_text(encoding="utf-8"))


_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION_PART = re.compile(r"(\d+)([wdhms])")


def duration_seconds(text: str) -> int:
    """A Prometheus duration ("5m", "3d", "1h30m") in seconds: the one parser, for slo.toml and the generators."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(count + unit for count, unit in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h, 3d")
    sizes = dict(_UNITS)
    return sum(int(count) * sizes[unit] for count, unit in parts)


def format_duration(seconds: int) -> str:
    """Seconds as a Prometheus duration, largest units first ("1w", "90s" -> "1m30s")."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        if unit == "w" and seconds % size:
            continue  # 30d, not 4w2d
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


SEVERITIES = ("critical", "warning")  # critical pages someone now; warning is a ticket for working hours


@dataclass(frozen=True)
class BurnRate:
    """One multi-window burn-rate alert: both windows burn faster than `factor` x the budget."""

    factor: float
    long: int  # seconds
    short: int
    for_: int
    severity: str


@dataclass(frozen=True)
class Dashboards:
    """Numbers only the dashboards draw: panel thresholds that no alert reads, and panel windows."""

    stat_window: int  # seconds; stat panels that do not follow Grafana's $__rate_interval
    quantiles: tuple[float, ...]  # drawn on the per-route, queue-wait and job-duration panels
    budget_left_warning: float  # the error-budget-left stat turns orange below this share
    pool_in_use_warning: float  # share of the PostgreSQL pool in use
    pool_in_use_critical: float
    event_loop_lag_warning: float  # seconds
    event_loop_lag_critical: float
    slots_busy_warning: float  # share of the worker's slots running a job


@dataclass(frozen=True)
class Monitoring:
    slo: Slo
    api_job: str
    worker_job: str
    runbook_base_url: str
    slo_window: int
    burn_rates: tuple[BurnRate, ...]
    short: int
    long: int
    for_: int
    throughput_window: int
    throughput_for: int
    throughput_offset: int
    throughput_min_baseline_rps: float
    backlog_min_depth: float
    backlog_window: int
    backlog_for: int
    queue_wait_quantile: float
    queue_wait_alert_seconds: float
    failure_ratio_alert: float
    failure_window: int
    failure_for: int
    dashboards: Dashboards


def _burn_rate(rate: dict[str, Any]) -> BurnRate:
    return BurnRate(
        factor=float(rate["factor"]),
        long=duration_seconds(rate["long"]),
        short=duration_seconds(rate["short"]),
        for_=duration_seconds(rate["for"]),
        severity=str(rate["severity"]),
    )


def _dashboards(section: dict[str, Any]) -> Dashboards:
    return Dashboards(
        stat_window=duration_seconds(section["stat_window"]),
        quantiles=tuple(float(quantile) for quantile in section["quantiles"]),
        budget_left_warning=float(section["budget_left_warning"]),
        pool_in_use_warning=float(section["pool_in_use_warning"]),
        pool_in_use_critical=float(section["pool_in_use_critical"]),
        event_loop_lag_warning=float(section["event_loop_lag_warning"]),
        event_loop_lag_critical=float(section["event_loop_lag_critical"]),
        slots_busy_warning=float(section["slots_busy_warning"]),
    )


def parse_monitoring(text: str) -> Monitoring:
    data = tomllib.loads(text)
    section = data["monitoring"]
    thresholds = section["thresholds"]
    worker = section["worker"]
    monitoring = Monitoring(
        slo=parse(text),
        api_job=str(section["api_job"]),
        worker_job=str(section["worker_job"]),
        runbook_base_url=str(section["runbook_base_url"]),
        slo_window=duration_seconds(section["slo_window"]),
        burn_rates=tuple(_burn_rate(rate) for rate in section["burn_rates"]),
        short=duration_seconds(thresholds["short"]),
        long=duration_seconds(thresholds["long"]),
        for_=duration_seconds(thresholds["for"]),
        throughput_window=duration_seconds(thresholds["throughput_window"]),
        throughput_for=duration_seconds(thresholds["throughput_for"]),
        throughput_offset=duration_seconds(thresholds["throughput_offset"]),
        throughput_min_baseline_rps=float(thresholds["throughput_min_baseline_rps"]),
        backlog_min_depth=float(worker["backlog_min_depth"]),
        backlog_window=duration_seconds(worker["backlog_window"]),
        backlog_for=duration_seconds(worker["backlog_for"]),
        queue_wait_quantile=float(worker["queue_wait_quantile"]),
        queue_wait_alert_seconds=float(worker["queue_wait_alert_seconds"]),
        failure_ratio_alert=float(worker["failure_ratio_alert"]),
        failure_window=duration_seconds(worker["failure_window"]),
        failure_for=duration_seconds(worker["failure_for"]),
        dashboards=_dashboards(section["dashboards"]),
    )
    _check_burn_rates(monitoring)
    _check_thresholds(monitoring)
    return monitoring


def _check_burn_rates(monitoring: Monitoring) -> None:
    rates = monitoring.burn_rates
    if not rates:
        raise ValueError("monitoring.burn_rates: at least one burn-rate alert is needed")
    for rate in rates:
        if not rate.short < rate.long or rate.severity not in SEVERITIES:
            raise ValueError(f"burn rate {rate}: short window must be shorter than long, severity one of {SEVERITIES}")
        if not 0 < rate.factor * monitoring.slo.error_target < 1:
            raise ValueError(f"burn rate {rate}: factor x errors.target must lie between 0 and 1, or it never fires")
    factors = [rate.factor for rate in rates]
    if factors != sorted(set(factors), reverse=True):
        raise ValueError("monitoring.burn_rates: factors must be listed fastest first, each one different")


def _ratio(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} = {value}: must lie strictly between 0 and 1")


def _check_thresholds(monitoring: Monitoring) -> None:
    if not monitoring.short < monitoring.long:
        raise ValueError("monitoring.thresholds: short window must be shorter than long")
    _ratio("throughput.drop_alert", monitoring.slo.throughput_drop_alert)
    _ratio("monitoring.worker.queue_wait_quantile", monitoring.queue_wait_quantile)
    _ratio("monitoring.worker.failure_ratio_alert", monitoring.failure_ratio_alert)
    if monitoring.queue_wait_alert_seconds <= 0 or monitoring.backlog_min_depth < 0:
        raise ValueError("monitoring.worker: queue_wait_alert_seconds must be > 0 and backlog_min_depth >= 0")
    boards = monitoring.dashboards
    if not boards.quantiles or list(boards.quantiles) != sorted(set(boards.quantiles)):
        raise ValueError("monitoring.dashboards.quantiles must be strictly increasing")
    for name in ("budget_left_warning", "pool_in_use_warning", "pool_in_use_critical", "slots_busy_warning"):
        _ratio(f"monitoring.dashboards.{name}", getattr(boards, name))
    for quantile in boards.quantiles:
        _ratio("monitoring.dashboards.quantiles", quantile)
    for kind in ("pool_in_use", "event_loop_lag"):
        if not 0 < getattr(boards, f"{kind}_warning") < getattr(boards, f"{kind}_critical"):
            raise ValueError(f"monitoring.dashboards: 0 < {kind}_warning < {kind}_critical must hold")


@cache
def load_monitoring() -> Monitoring:
    return parse_monitoring(resources.files("service").joinpath("slo.toml").read_text(encoding="utf-8"))
