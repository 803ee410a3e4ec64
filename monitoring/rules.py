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

import re
from dataclasses import dataclass, field
from decimal import Decimal

from prometheus_client.utils import floatToGoString

from service.slo import Monitoring

from .yamlout import Yaml

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


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


def duration_to_seconds(text: str) -> int:
    """A Prometheus duration, compound or not ("1h1m"), in seconds."""
    parts = re.findall(r"(\d+)([wdhms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration")
    sizes = dict(_UNITS)
    return sum(int(count) * sizes[unit] for count, unit in parts)


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
    runbook_url: str
    labels: dict[str, str] = field(default_factory=dict)

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


def le(bound: float) -> str:
    """The `le` label value prometheus_client writes for a bucket bound (0.1 -> "0.1", 1 -> "1.0")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def number(value: float) -> str:
    """A threshold as PromQL text without float noise (1 - 0.99 -> 0.01)."""
    return format(Decimal(repr(round(value, 10))).normalize(), "f")


def anchor(alert_name: str) -> str:
    """GitHub's anchor for a `## AlertName` heading."""
    return alert_name.lower()


# Recording rule names, shared by the alerts, the dashboards and the tests.
def requests_rate(window: str) -> str:
    return f"job:http_server_requests:rate{window}"


def errors_ratio(window: str) -> str:
    return f"job:http_server_requests_errors:ratio_rate{window}"


def errors_rate(window: str) -> str:
    return f"job:http_server_requests_errors:rate{window}"


def slower_ratio(window: str) -> str:
    return f"job_le:http_server_requests_slower:ratio_rate{window}"


FAILURES_RATIO = "job_kind:jobs_failed:ratio_rate"
QUEUE_DEPTH = "job_kind:job_queue_depth:max"
JOBS_DEAD = "job_kind:jobs_dead:max"
QUEUE_WAIT_QUANTILE = "job_kind:job_queue_wait_seconds:histogram_quantile"

DURATION = "http_server_request_duration_seconds"


def api_windows(mon: Monitoring) -> list[int]:
    """Every window an API alert reads, shortest first."""
    windows = {mon.short, mon.long, mon.throughput_window}
    for rate in mon.burn_rates:
        windows |= {rate.long, rate.short}
    return sorted(windows)


def api_recording_rules(mon: Monitoring, profile: Profile) -> list[Recording]:
    job = f'job="{mon.api_job}"'
    rules: list[Recording] = []
    for window in api_windows(mon):
        name, w = format_duration(window), profile.d(window)
        total = f"sum by (job) (rate({DURATION}_count{{{job}}}[{w}]))"
        rules.append(Recording(requests_rate(name), total))
        # `or 0 * total`: the ratio is 0, not missing, while no 5xx has happened yet.
        errors = f'sum by (job) (rate({DURATION}_count{{{job}, http_response_status_code=~"5.."}}[{w}]))'
        rules.append(Recording(errors_ratio(name), f"(\n  {errors}\n  or 0 * {total}\n)\n/\n{total}"))
        if window == mon.short:
            # The 5xx rate itself, for the error budget over the SLO window: summing it and the
            # request rate over time weights every evaluation by its traffic, with no subquery.
            rules.append(Recording(errors_rate(name), f"{errors}\nor 0 * {total}"))
    for window in sorted({mon.short, mon.long}):
        name, w = format_duration(window), profile.d(window)
        for bound in (mon.slo.p50_alert, mon.slo.p99_alert):
            # The `le` buckets are exact boundaries at the thresholds (service/slo.py checks),
            # so this is the exact share of requests slower than the bound, at any latency.
            faster = f'sum by (job) (rate({DURATION}_bucket{{{job}, le="{le(bound)}"}}[{w}]))'
            everything = f'sum by (job) (rate({DURATION}_bucket{{{job}, le="+Inf"}}[{w}]))'
            rules.append(Recording(slower_ratio(name), f"1 - (\n  {faster}\n  /\n  {everything}\n)", {"le": le(bound)}))
    return rules


def worker_recording_rules(mon: Monitoring, profile: Profile) -> list[Recording]:
    job = f'job="{mon.worker_job}"'
    fw, qw = format_duration(mon.failure_window), profile.d(mon.failure_window)
    ww = profile.d(mon.backlog_window)
    attempts = f"sum by (job, kind) (rate(jobs_processed_total{{{job}}}[{qw}]))"
    failed = f'sum by (job, kind) (rate(jobs_processed_total{{{job}, outcome=~"failed|dead"}}[{qw}]))'
    return [
        # Sampled from the jobs table, so every worker reports the same number: max, not sum.
        Recording(QUEUE_DEPTH, f"max by (job, kind) (job_queue_depth{{{job}}})"),
        Recording(JOBS_DEAD, f"max by (job, kind) (jobs_dead{{{job}}})"),
        Recording(FAILURES_RATIO + fw, f"(\n  {failed}\n  or 0 * {attempts}\n)\n/\n{attempts}"),
        Recording(
            QUEUE_WAIT_QUANTILE,
            f"histogram_quantile({number(mon.queue_wait_quantile)}, "
            f"sum by (job, kind, le) (rate(job_queue_wait_seconds_bucket{{{job}}}[{ww}])))",
            {"quantile": number(mon.queue_wait_quantile)},
        ),
    ]


def _pct(ratio: float) -> str:
    return f"{number(ratio * 100)}%"


def _ms(seconds: float) -> str:
    return f"{number(seconds * 1000)}ms"


def api_alerts(mon: Monitoring, profile: Profile) -> list[Alert]:
    slo = mon.slo
    url = mon.runbook_base_url + "#"
    short, long = format_duration(mon.short), format_duration(mon.long)
    alerts: list[Alert] = []
    for rate in mon.burn_rates:
        lw, sw = format_duration(rate.long), format_duration(rate.short)
        threshold = f"({number(rate.factor)} * {number(slo.error_target)})"
        days = mon.slo_window / rate.factor / 86400
        alerts.append(
            Alert(
                name="CatalogApiErrorBudgetBurn",
                expr=f"{errors_ratio(lw)} > {threshold}\nand\n{errors_ratio(sw)} > {threshold}",
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
                runbook_url=url + anchor("CatalogApiErrorBudgetBurn"),
            )
        )
    error = slo.error_alert
    alerts.append(
        Alert(
            name="CatalogApiErrorRateHigh",
            expr=f"{errors_ratio(short)} > {number(error)}\nand\n{errors_ratio(long)} > {number(error)}",
            for_=mon.for_,
            severity="critical",
            summary=f"More than {_pct(slo.error_alert)} of requests to {{{{ $labels.job }}}} fail.",
            description=(
                f"{{{{ $value | humanizePercentage }}}} of requests to {{{{ $labels.job }}}} answered 5xx over the "
                f"last {short} (and more than {_pct(slo.error_alert)} over {long}); the alert threshold is "
                f"{_pct(slo.error_alert)}, the target {_pct(slo.error_target)}."
            ),
            runbook_url=url + anchor("CatalogApiErrorRateHigh"),
        )
    )
    for quantile, bound, name in (
        (0.5, slo.p50_alert, "CatalogApiLatencyP50High"),
        (0.99, slo.p99_alert, "CatalogApiLatencyP99High"),
    ):
        share = 1 - quantile
        selector = f'{{le="{le(bound)}"}}'
        alerts.append(
            Alert(
                name=name,
                expr=(
                    f"{slower_ratio(short)}{selector} > {number(share)}\nand\n"
                    f"{slower_ratio(long)}{selector} > {number(share)}"
                ),
                for_=mon.for_,
                severity="critical",
                summary=f"P{number(quantile * 100)} latency of {{{{ $labels.job }}}} is above {_ms(bound)}.",
                description=(
                    f"{{{{ $value | humanizePercentage }}}} of requests to {{{{ $labels.job }}}} took longer than "
                    f"{_ms(bound)} over the last {short} (more than {_pct(share)} over {long} too), so "
                    f"P{number(quantile * 100)} is above {_ms(bound)}."
                ),
                runbook_url=url + anchor(name),
            )
        )
    tw = format_duration(mon.throughput_window)
    week_ago = (
        f'sum by (job) (rate({DURATION}_count{{job="{mon.api_job}"}}[{profile.d(mon.throughput_window)}] '
        f"offset {profile.d(604800)}))"
    )
    keep = number(1 - slo.throughput_drop_alert)
    alerts.append(
        Alert(
            name="CatalogApiThroughputDropped",
            # A week-old baseline below the floor (including none at all) never fires:
            # a drop from nothing is no signal.
            expr=(
                f"{requests_rate(tw)}\n  < {keep} * {week_ago}\n"
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
            runbook_url=url + anchor("CatalogApiThroughputDropped"),
        )
    )
    alerts.append(
        Alert(
            name="CatalogApiDown",
            expr=f'absent(up{{job="{mon.api_job}"}} == 1)',
            for_=mon.for_,
            severity="critical",
            labels={"job": mon.api_job},
            summary=f"No {mon.api_job} target is up.",
            description=(
                f"Prometheus has found no {mon.api_job} target answering its scrape for {format_duration(mon.for_)}: "
                "the API is down, or its metrics are not scraped, and every other API alert is blind."
            ),
            runbook_url=url + anchor("CatalogApiDown"),
        )
    )
    return alerts


def worker_alerts(mon: Monitoring, profile: Profile) -> list[Alert]:
    url = mon.runbook_base_url + "#"
    bw, fw = format_duration(mon.backlog_window), format_duration(mon.failure_window)
    quantile = number(mon.queue_wait_quantile)
    return [
        Alert(
            name="CatalogWorkerDown",
            expr=f'absent(up{{job="{mon.worker_job}"}} == 1)',
            for_=mon.for_,
            severity="critical",
            labels={"job": mon.worker_job},
            summary=f"No {mon.worker_job} target is up.",
            description=(
                f"Prometheus has found no {mon.worker_job} target answering its scrape for "
                f"{format_duration(mon.for_)}: jobs are accepted (202) but nobody may be running them."
            ),
            runbook_url=url + anchor("CatalogWorkerDown"),
        ),
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
            runbook_url=url + anchor("CatalogWorkerBacklogGrowing"),
        ),
        Alert(
            name="CatalogWorkerQueueWaitHigh",
            expr=f'{QUEUE_WAIT_QUANTILE}{{quantile="{quantile}"}} > {number(mon.queue_wait_alert_seconds)}',
            for_=mon.backlog_for,
            severity="warning",
            summary=f"{{{{ $labels.kind }}}} jobs wait more than {number(mon.queue_wait_alert_seconds)}s to start.",
            description=(
                f"P{number(mon.queue_wait_quantile * 100)} of the time {{{{ $labels.kind }}}} jobs waited between "
                f'enqueue and claim was {{{{ printf "%.0f" $value }}}}s over the last {bw} (alert above '
                f"{number(mon.queue_wait_alert_seconds)}s)."
            ),
            runbook_url=url + anchor("CatalogWorkerQueueWaitHigh"),
        ),
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
            runbook_url=url + anchor("CatalogWorkerJobsDead"),
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
            runbook_url=url + anchor("CatalogWorkerJobFailureRatioHigh"),
        ),
    ]


def rule_files(mon: Monitoring, profile: Profile) -> list[RuleFile]:
    return [
        RuleFile("catalog-api.rules.yaml", [Group("catalog-api.rules", api_recording_rules(mon, profile))]),
        RuleFile("catalog-api.alerts.yaml", [Group("catalog-api.alerts", api_alerts(mon, profile))]),
        RuleFile("catalog-worker.rules.yaml", [Group("catalog-worker.rules", worker_recording_rules(mon, profile))]),
        RuleFile("catalog-worker.alerts.yaml", [Group("catalog-worker.alerts", worker_alerts(mon, profile))]),
    ]


def all_alerts(mon: Monitoring, profile: Profile = PRODUCTION) -> list[Alert]:
    return [*api_alerts(mon, profile), *worker_alerts(mon, profile)]


def all_recordings(mon: Monitoring, profile: Profile = PRODUCTION) -> list[Recording]:
    return [*api_recording_rules(mon, profile), *worker_recording_rules(mon, profile)]
