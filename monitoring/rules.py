"""Prometheus recording and alerting rules, built from service/slo.toml.

Recording rules follow `level:metric:operations` (kubernetes-mixin): the level
names the labels kept (`job`, `job_le`, `job_kind`), the operation names the
window (`ratio_rate5m`). Alerts are CamelCase with a `severity` of `critical`
(page someone now) or `warning` (a ticket for working hours), and `summary`,
`description` and `runbook_url` annotations; every runbook anchor is a section
of monitoring/runbooks.md.

Errors are 5xx responses only: a 4xx is the client's mistake (validation, 404,
429 from the rate limiter) and spends no error budget. 499 (client went away)
is not an error either.

A `Profile` turns the production durations into text. The test profile maps
each of them to seconds so an end-to-end test against a real Prometheus sees
alerts fire within about a minute: the expressions are the same, recording
rule names keep their production window suffix (`rate5m`), only the
durations inside differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from service.slo import Monitoring, format_duration
from service.slo import duration_seconds as duration_to_seconds

from . import promql
from .promql import FAILURES_RATIO, JOBS_DEAD, QUEUE_DEPTH, QUEUE_WAIT_QUANTILE, le, number

__all__ = ["duration_to_seconds", "format_duration", "le", "number"]  # the tests read them from here

Yaml: TypeAlias = "str | int | float | bool | Sequence[Yaml] | Mapping[str, Yaml] | None"


# Production duration -> test-profile duration. Ordered like the originals, so a
# short window stays shorter than its long one; windows of 20 s and more hold at
# least four samples at make up's 5 s scrape interval.
TEST_DURATIONS: dict[int, int] = {
    120: 10,  # 2m
    300: 20,  # 5m
    600: 25,  # 10m
    900: 30,  # 15m
    1800: 35,  # 30m
    3600: 40,  # 1h
    7200: 50,  # 2h
    10800: 55,  # 3h
    21600: 60,  # 6h
    86400: 80,  # 1d
    259200: 100,  # 3d
    604800: 120,  # 1w
    2592000: 600,  # 30d
}


@dataclass(frozen=True)
class Profile:
    name: str

    def seconds(self, production: int) -> int:
        if self.name == "production":
            return production
        if production not in TEST_DURATIONS:
            raise ValueError(f"no test-profile duration for {format_duration(production)}: add it to TEST_DURATIONS")
        return TEST_DURATIONS[production]

    def d(self, production: int) -> str:
        return format_duration(self.seconds(production))


PRODUCTION = Profile("production")
TEST = Profile("test")
PROFILES = {"production": PRODUCTION, "test": TEST}


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)

    def to_yaml(self) -> Yaml:
        rule: dict[str, Yaml] = {"record": self.record, "expr": self.expr}
        if self.labels:
            rule["labels"] = dict(self.labels)
        return rule


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: int  # production seconds; the profile formats it
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)
    runbook_url: str = ""  # set for every alert at once by `with_runbooks`

    def to_yaml(self, profile: Profile) -> Yaml:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": profile.d(self.for_),
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {"summary": self.summary, "description": self.description, "runbook_url": self.runbook_url},
        }


@dataclass(frozen=True)
class Group:
    name: str
    rules: list[Recording] | list[Alert]

    def to_yaml(self, profile: Profile) -> Yaml:
        rules: list[Yaml] = [
            rule.to_yaml(profile) if isinstance(rule, Alert) else rule.to_yaml() for rule in self.rules
        ]
        return {"name": self.name, "rules": rules}


@dataclass(frozen=True)
class RuleFile:
    name: str  # file name under monitoring/prometheus/rules/
    groups: list[Group]

    def to_yaml(self, profile: Profile) -> Yaml:
        return {"groups": [group.to_yaml(profile) for group in self.groups]}


def anchor(alert_name: str) -> str:
    """GitHub's anchor for a `## AlertName` heading."""
    return alert_name.lower()


def with_runbooks(mon: Monitoring, alerts: list[Alert]) -> list[Alert]:
    """Every alert links its section of monitoring/runbooks.md, added in one pass."""
    return [replace(alert, runbook_url=f"{mon.runbook_base_url}#{anchor(alert.name)}") for alert in alerts]


def _pct(ratio: float) -> str:
    return f"{number(ratio * 100)}%"


def _ms(seconds: float) -> str:
    return f"{number(seconds * 1000)}ms"


# --- recording rules -----------------------------------------------------------------------


def api_windows(mon: Monitoring) -> list[int]:
    """Every window an API alert reads, shortest first."""
    windows = {mon.short, mon.long, mon.throughput_window}
    for rate in mon.burn_rates:
        windows |= {rate.long, rate.short}
    return sorted(windows)


def api_recording_rules(mon: Monitoring, profile: Profile) -> list[Recording]:
    job = mon.api_job
    rules: list[Recording] = []
    for window in api_windows(mon):
        name, w = format_duration(window), profile.d(window)
        rules.append(Recording(promql.requests_rate(name), promql.api_requests(job, w)))
        rules.append(Recording(promql.errors_ratio(name), promql.api_errors_ratio(job, w)))
        if window == mon.short:
            # The 5xx rate itself, for the error budget over the SLO window: summing it and the
            # request rate over time weights every evaluation by its traffic, with no subquery.
            rules.append(Recording(promql.errors_rate(name), promql.api_errors_rate(job, w)))
    for window in sorted({mon.short, mon.long}):
        name, w = format_duration(window), profile.d(window)
        for bound in (mon.slo.p50_alert, mon.slo.p99_alert):
            expr = promql.api_slower_ratio(job, w, bound)
            rules.append(Recording(promql.slower_ratio(name), expr, {"le": le(bound)}))
    return rules


def worker_recording_rules(mon: Monitoring, profile: Profile) -> list[Recording]:
    job, quantile = mon.worker_job, mon.queue_wait_quantile
    failures = promql.worker_failures_ratio(job, profile.d(mon.failure_window))
    return [
        Recording(QUEUE_DEPTH, promql.worker_gauge_max(job, "job_queue_depth")),
        Recording(JOBS_DEAD, promql.worker_gauge_max(job, "jobs_dead")),
        Recording(FAILURES_RATIO + format_duration(mon.failure_window), failures),
        Recording(
            QUEUE_WAIT_QUANTILE,
            promql.worker_queue_wait(job, profile.d(mon.backlog_window), quantile),
            {"quantile": number(quantile)},
        ),
    ]


# --- API alerts ----------------------------------------------------------------------------


def burn_rate_alerts(mon: Monitoring, profile: Profile) -> list[Alert]:
    slo, alerts = mon.slo, []
    for rate in mon.burn_rates:
        lw, sw = format_duration(rate.long), format_duration(rate.short)
        threshold = f"({number(rate.factor)} * {number(slo.error_target)})"
        days = mon.slo_window / rate.factor / 86400
        alerts.append(
            Alert(
                name="CatalogApiErrorBudgetBurn",
                expr=f"{promql.errors_ratio(lw)} > {threshold}\nand\n{promql.errors_ratio(sw)} > {threshold}",
                for_=rate.for_,
                severity=rate.severity,
                labels={"long": profile.d(rate.long), "short": profile.d(rate.short)},
                summary=f"{{{{ $labels.job }}}} is burning its error budget {number(rate.factor)}x too fast.",
                description=(
                    f"{{{{ $value | humanizePercentage }}}} of requests to {{{{ $labels.job }}}} failed (5xx) over "
                    f"the last {lw}, and more than {_pct(rate.factor * slo.error_target)} over the last {sw} too. "
                    f"The SLO allows {_pct(slo.error_target)}; at {number(rate.factor)}x that rate the "
                    f"{format_duration(mon.slo_window)} error budget is gone in {days:.1f} days."
                ),
            )
        )
    return alerts


def error_rate_alert(mon: Monitoring) -> Alert:
    slo, error = mon.slo, number(mon.slo.error_alert)
    short, long = format_duration(mon.short), format_duration(mon.long)
    return Alert(
        name="CatalogApiErrorRateHigh",
        expr=f"{promql.errors_ratio(short)} > {error}\nand\n{promql.errors_ratio(long)} > {error}",
        for_=mon.for_,
        severity="critical",
        summary=f"More than {_pct(slo.error_alert)} of requests to {{{{ $labels.job }}}} fail.",
        description=(
            f"{{{{ $value | humanizePercentage }}}} of requests to {{{{ $labels.job }}}} answered 5xx over the "
            f"last {short} (and more than {_pct(slo.error_alert)} over {long}); the alert threshold is "
            f"{_pct(slo.error_alert)}, the target {_pct(slo.error_target)}."
        ),
    )


def latency_alerts(mon: Monitoring) -> list[Alert]:
    short, long = format_duration(mon.short), format_duration(mon.long)
    alerts = []
    for quantile, bound in ((0.5, mon.slo.p50_alert), (0.99, mon.slo.p99_alert)):
        share, p = 1 - quantile, f"P{number(quantile * 100)}"
        selector = f'{{le="{le(bound)}"}}'
        alerts.append(
            Alert(
                name=f"CatalogApiLatency{p}High",
                expr=(
                    f"{promql.slower_ratio(short)}{selector} > {number(share)}\nand\n"
                    f"{promql.slower_ratio(long)}{selector} > {number(share)}"
                ),
                for_=mon.for_,
                severity="critical",
                summary=f"{p} latency of {{{{ $labels.job }}}} is above {_ms(bound)}.",
                description=(
                    f"{{{{ $value | humanizePercentage }}}} of requests to {{{{ $labels.job }}}} took longer than "
                    f"{_ms(bound)} over the last {short} (more than {_pct(share)} over {long} too), so "
                    f"{p} is above {_ms(bound)}."
                ),
            )
        )
    return alerts


def throughput_alert(mon: Monitoring, profile: Profile) -> Alert:
    slo, tw = mon.slo, format_duration(mon.throughput_window)
    week_ago = promql.api_week_ago(mon.api_job, profile.d(mon.throughput_window), profile.d(mon.throughput_offset))
    return Alert(
        name="CatalogApiThroughputDropped",
        # A week-old baseline below the floor (including none at all) never fires:
        # a drop from nothing is no signal.
        expr=(
            f"{promql.requests_rate(tw)}\n  < {number(1 - slo.throughput_drop_alert)} * {week_ago}\n"
            f"and\n{week_ago} >= {number(mon.throughput_min_baseline_rps)}"
        ),
        for_=mon.throughput_for,
        severity="warning",
        summary=f"{{{{ $labels.job }}}} serves {_pct(slo.throughput_drop_alert)} fewer requests than a week ago.",
        description=(
            f'{{{{ $labels.job }}}} served {{{{ printf "%.2f" $value }}}} requests/s over the last {tw}, '
            f"more than {_pct(slo.throughput_drop_alert)} below the same {tw} a week earlier. Traffic is not "
            "reaching the service (DNS, ingress, a client) or clients gave up."
        ),
    )


def down_alert(mon: Monitoring, name: str, job: str, consequence: str) -> Alert:
    return Alert(
        name=name,
        expr=f'absent(up{{job="{job}"}} == 1)',
        for_=mon.for_,
        severity="critical",
        labels={"job": job},
        summary=f"No {job} target is up.",
        description=(
            f"Prometheus has found no {job} target answering its scrape for {format_duration(mon.for_)}: " + consequence
        ),
    )


def api_alerts(mon: Monitoring, profile: Profile) -> list[Alert]:
    return [
        *burn_rate_alerts(mon, profile),
        error_rate_alert(mon),
        *latency_alerts(mon),
        throughput_alert(mon, profile),
        down_alert(
            mon,
            "CatalogApiDown",
            mon.api_job,
            "the API is down, or its metrics are not scraped, and every other API alert is blind.",
        ),
    ]


# --- worker alerts -------------------------------------------------------------------------


def worker_queue_alerts(mon: Monitoring, profile: Profile) -> list[Alert]:
    bw, quantile, wait = (
        format_duration(mon.backlog_window),
        number(mon.queue_wait_quantile),
        mon.queue_wait_alert_seconds,
    )
    return [
        Alert(
            name="CatalogWorkerBacklogGrowing",
            expr=(
                f"{QUEUE_DEPTH} > {number(mon.backlog_min_depth)}\n"
                f"and\nderiv({QUEUE_DEPTH}[{profile.d(mon.backlog_window)}]) > 0"
            ),
            for_=mon.backlog_for,
            severity="warning",
            summary="The {{ $labels.kind }} queue keeps growing.",
            description=(
                '{{ printf "%.0f" $value }} {{ $labels.kind }} jobs are waiting to be claimed and the queue has '
                f"grown over the last {bw}: the workers take jobs slower than they arrive."
            ),
        ),
        Alert(
            name="CatalogWorkerQueueWaitHigh",
            expr=f'{QUEUE_WAIT_QUANTILE}{{quantile="{quantile}"}} > {number(wait)}',
            for_=mon.backlog_for,
            severity="warning",
            summary=f"{{{{ $labels.kind }}}} jobs wait more than {number(wait)}s to start.",
            description=(
                f"P{number(mon.queue_wait_quantile * 100)} of the time {{{{ $labels.kind }}}} jobs waited between "
                f'enqueue and claim was {{{{ printf "%.0f" $value }}}}s over the last {bw} (alert above '
                f"{number(wait)}s)."
            ),
        ),
    ]


def worker_failure_alerts(mon: Monitoring) -> list[Alert]:
    fw = format_duration(mon.failure_window)
    return [
        Alert(
            name="CatalogWorkerJobsDead",
            expr=f"{JOBS_DEAD} > 0",
            for_=mon.for_,
            severity="warning",
            summary="{{ $labels.kind }} jobs failed for good.",
            description=(
                '{{ printf "%.0f" $value }} {{ $labels.kind }} jobs are dead: they used every attempt and will not '
                "run again until someone looks at them."
            ),
        ),
        Alert(
            name="CatalogWorkerJobFailureRatioHigh",
            expr=f"{FAILURES_RATIO}{fw} > {number(mon.failure_ratio_alert)}",
            for_=mon.failure_for,
            severity="warning",
            summary=f"More than {_pct(mon.failure_ratio_alert)} of {{{{ $labels.kind }}}} job attempts fail.",
            description=(
                f"{{{{ $value | humanizePercentage }}}} of {{{{ $labels.kind }}}} job attempts failed over the last "
                f"{fw} (retried or dead)."
            ),
        ),
    ]


def worker_alerts(mon: Monitoring, profile: Profile) -> list[Alert]:
    down = down_alert(
        mon, "CatalogWorkerDown", mon.worker_job, "jobs are accepted (202) but nobody may be running them."
    )
    return [down, *worker_queue_alerts(mon, profile), *worker_failure_alerts(mon)]


# --- files ---------------------------------------------------------------------------------


def rule_files(mon: Monitoring, profile: Profile) -> list[RuleFile]:
    api_alerts_linked = with_runbooks(mon, api_alerts(mon, profile))
    worker_alerts_linked = with_runbooks(mon, worker_alerts(mon, profile))
    return [
        RuleFile("catalog-api.rules.yaml", [Group("catalog-api.rules", api_recording_rules(mon, profile))]),
        RuleFile("catalog-api.alerts.yaml", [Group("catalog-api.alerts", api_alerts_linked)]),
        RuleFile("catalog-worker.rules.yaml", [Group("catalog-worker.rules", worker_recording_rules(mon, profile))]),
        RuleFile("catalog-worker.alerts.yaml", [Group("catalog-worker.alerts", worker_alerts_linked)]),
    ]


def all_alerts(mon: Monitoring, profile: Profile = PRODUCTION) -> list[Alert]:
    return with_runbooks(mon, [*api_alerts(mon, profile), *worker_alerts(mon, profile)])


def all_recordings(mon: Monitoring, profile: Profile = PRODUCTION) -> list[Recording]:
    return [*api_recording_rules(mon, profile), *worker_recording_rules(mon, profile)]
