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


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> int:
    """A one-unit Prometheus duration ("5m", "3d") in seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h, 3d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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
    throughput_min_baseline_rps: float
    backlog_min_depth: float
    backlog_window: int
    backlog_for: int
    queue_wait_quantile: float
    queue_wait_alert_seconds: float
    failure_ratio_alert: float
    failure_window: int
    failure_for: int


def parse_monitoring(text: str) -> Monitoring:
    data = tomllib.loads(text)
    section = data["monitoring"]
    thresholds = section["thresholds"]
    worker = section["worker"]
    burn_rates = tuple(
        BurnRate(
            factor=float(rate["factor"]),
            long=duration_seconds(rate["long"]),
            short=duration_seconds(rate["short"]),
            for_=duration_seconds(rate["for"]),
            severity=str(rate["severity"]),
        )
        for rate in section["burn_rates"]
    )
    monitoring = Monitoring(
        slo=parse(text),
        api_job=str(section["api_job"]),
        worker_job=str(section["worker_job"]),
        runbook_base_url=str(section["runbook_base_url"]),
        slo_window=duration_seconds(section["slo_window"]),
        burn_rates=burn_rates,
        short=duration_seconds(thresholds["short"]),
        long=duration_seconds(thresholds["long"]),
        for_=duration_seconds(thresholds["for"]),
        throughput_window=duration_seconds(thresholds["throughput_window"]),
        throughput_for=duration_seconds(thresholds["throughput_for"]),
        throughput_min_baseline_rps=float(thresholds["throughput_min_baseline_rps"]),
        backlog_min_depth=float(worker["backlog_min_depth"]),
        backlog_window=duration_seconds(worker["backlog_window"]),
        backlog_for=duration_seconds(worker["backlog_for"]),
        queue_wait_quantile=float(worker["queue_wait_quantile"]),
        queue_wait_alert_seconds=float(worker["queue_wait_alert_seconds"]),
        failure_ratio_alert=float(worker["failure_ratio_alert"]),
        failure_window=duration_seconds(worker["failure_window"]),
        failure_for=duration_seconds(worker["failure_for"]),
    )
    for rate in burn_rates:
        if not rate.short < rate.long or rate.severity not in SEVERITIES:
            raise ValueError(f"burn rate {rate}: short window must be shorter than long, severity one of {SEVERITIES}")
    if not monitoring.short < monitoring.long:
        raise ValueError("monitoring.thresholds: short window must be shorter than long")
    return monitoring


@cache
def load_monitoring() -> Monitoring:
    return parse_monitoring(resources.files("service").joinpath("slo.toml").read_text(encoding="utf-8"))
