"""The SLO baselines (service/slo.toml), loaded and checked once.

The file is data, not code, so the rule and dashboard generators (and anyone's
tooling) read the same numbers the service uses for its histogram buckets.
"""

from __future__ import annotations

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
