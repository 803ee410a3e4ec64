"""promtool unit tests for every alert, generated because they depend on slo.toml.

For each alert one scenario makes its condition true from a known evaluation
(`active`) and checks that the alert is silent one evaluation before
`active + for` and firing, with its exact labels and annotations, at it.
One healthy scenario (errors, latency and worker signals just inside their
thresholds, plenty of 4xx) checks that nothing fires. The throughput alert
needs a week of history, so it lives in its own file evaluated every 5m.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from service.slo import Monitoring

from .rules import PRODUCTION, Alert, Yaml, all_alerts, format_duration, le, rule_files

MINUTE = 60
ROUTE = "/v1/items/{item_id}"


def render(template: str, value: float, labels: dict[str, str]) -> str:
    """What Prometheus makes of the few template forms the annotations use."""

    def one(match: re.Match[str]) -> str:
        body = match.group(1).strip()
        if body.startswith("$labels."):
            return labels[body.removeprefix("$labels.")]
        if body == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        printf = re.fullmatch(r'printf "(%\.\df)" \$value', body)
        if printf:
            return printf.group(1) % value
        raise ValueError(f"render() does not know {{{{ {body} }}}}")

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


def born_at_first_event(values: str) -> str:
    """`values` ("a+bxn") as the series would be scraped if the exporter created it at its first event.

    Our exporters create every series an alert reads at zero before its first event (service/metrics.py,
    service/worker/metrics.py), which is what the cases' first sample (t=0) shows. Without that, the
    series is absent at t=0 and first seen one step later, already at its first count: `rate()` over it
    loses that first increase, and each alert fires a step late (on sparse errors, never). The tests in
    tests/deploy/test_monitoring.py run every case in this shape and expect promtool to fail.
    """
    match = re.fullmatch(r"(-?[\d.]+)\+(-?[\d.]+)x(\d+)", values)
    if match is None:
        raise ValueError(f"born_at_first_event() does not know {values!r}")
    start, step, count = float(match.group(1)), float(match.group(2)), int(match.group(3))
    return f"_ {start + step:g}+{step:g}x{count - 1}"


def counter(per_step: float, steps: int, start: float = 0) -> str:
    return f"{start:g}+{per_step:g}x{steps}"


def gauge(value: float, steps: int) -> str:
    return f"{value:g}+0x{steps}"


@dataclass
class Api:
    """Requests per evaluation step (1m) on one route; latency buckets on the 200s."""

    ok: int = 2000
    errors: int = 1  # 0.05 %: half the error budget's sustainable rate
    fast_p50: int = 1200  # 40 % slower than the P50 alert threshold
    fast_p99: int = 1990  # 0.5 % slower than the P99 alert threshold
    client_errors: dict[str, int] = field(default_factory=dict)
    up: float | None = 1

    def series(self, mon: Monitoring, steps: int, late: bool = False) -> list[Yaml]:
        """The pod's series from t=0; `late`: each first scraped at its first event (born_at_first_event)."""
        shape = born_at_first_event if late else str
        base = {
            "job": mon.api_job,
            "instance": "api-1:9464",
            "http_route": ROUTE,
            "http_request_method": "GET",
        }
        name = "http_server_request_duration_seconds"
        out: list[Yaml] = []
        statuses = {"200": self.ok, "500": self.errors, **self.client_errors}
        for status, count in statuses.items():
            labels = _labels(base | {"http_response_status_code": status})
            out.append({"series": f"{name}_count{labels}", "values": shape(counter(count, steps))})
        buckets = {le(mon.slo.p50_alert): self.fast_p50, le(mon.slo.p99_alert): self.fast_p99, "+Inf": self.ok}
        for bound, count in buckets.items():
            labels = _labels(base | {"http_response_status_code": "200", "le": bound})
            out.append({"series": f"{name}_bucket{labels}", "values": shape(counter(count, steps))})
        if self.up is not None:
            up = _labels({"job": mon.api_job, "instance": "api-1:9464"})
            out.append({"series": f"up{up}", "values": gauge(self.up, steps)})
        return out


@dataclass
class Worker:
    """One job kind; counts per evaluation step (1m)."""

    depth: str = "5+0x{steps}"
    dead: float = 0
    succeeded: int = 95
    failed: int = 5  # 5 % of attempts
    dead_per_step: int = 0
    wait: dict[str, int] = field(default_factory=lambda: {"10": 100, "60": 100, "120": 100, "+Inf": 100})
    up: float | None = 1
    kind: str = "cpu.burn"

    def series(self, mon: Monitoring, steps: int, late: bool = False) -> list[Yaml]:
        """The worker's series from t=0; `late`: each first scraped at its first event (born_at_first_event)."""
        shape = born_at_first_event if late else str
        base = {"job": mon.worker_job, "instance": "worker-1:9464"}
        kind = base | {"kind": self.kind}
        out: list[Yaml] = [
            {"series": f"job_queue_depth{_labels(kind)}", "values": shape(self.depth.format(steps=steps))},
            {"series": f"jobs_dead{_labels(kind)}", "values": shape(gauge(self.dead, steps))},
        ]
        for outcome, count in (("succeeded", self.succeeded), ("failed", self.failed), ("dead", self.dead_per_step)):
            labels = _labels(kind | {"outcome": outcome})
            out.append({"series": f"jobs_processed_total{labels}", "values": shape(counter(count, steps))})
        for bound, count in self.wait.items():
            labels = _labels(kind | {"le": bound})
            out.append({"series": f"job_queue_wait_seconds_bucket{labels}", "values": shape(counter(count, steps))})
        if self.up is not None:
            out.append({"series": f"up{_labels(base)}", "values": gauge(self.up, steps)})
        return out


@dataclass
class Case:
    """An alert rule's scenario: condition true from `active`; fires at active + for with `value`."""

    alert: Alert
    name: str
    active: int  # seconds
    value: float
    labels: dict[str, str]
    api: Api = field(default_factory=Api)
    worker: Worker = field(default_factory=Worker)

    def to_yaml(self, mon: Monitoring, step: int = MINUTE, late: bool = False) -> Yaml:
        """The promtool test group; `late`: the series as an exporter without zero-initialised children shows them."""
        fires = self.active + self.alert.for_
        steps = fires // step + 1
        labels = {"severity": self.alert.severity, **self.alert.labels, **self.labels}
        annotations = {
            "summary": render(self.alert.summary, self.value, labels),
            "description": render(self.alert.description, self.value, labels),
            "runbook_url": self.alert.runbook_url,
        }
        return {
            "name": f"{self.alert.name}: {self.name}",
            "interval": format_duration(step),
            "input_series": [*self.api.series(mon, steps, late), *self.worker.series(mon, steps, late)],
            "alert_rule_test": [
                {"eval_time": format_duration(fires - step), "alertname": self.alert.name, "exp_alerts": []},
                {
                    "eval_time": format_duration(fires),
                    "alertname": self.alert.name,
                    "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                },
            ],
        }


def _by_name(alerts: list[Alert]) -> Callable[[str], list[Alert]]:
    def find(name: str) -> list[Alert]:
        found = [alert for alert in alerts if alert.name == name]
        assert found, name
        return found

    return find


def cases(mon: Monitoring) -> list[Case]:
    find = _by_name(all_alerts(mon, PRODUCTION))
    return [*_burn_rate_cases(mon, find), *_api_cases(mon, find), *_worker_cases(mon, find)]


def _burn_rate_cases(mon: Monitoring, find: Callable[[str], list[Alert]]) -> list[Case]:
    slo = mon.slo
    out: list[Case] = []
    factors = [rate.factor for rate in mon.burn_rates]
    for index, alert in enumerate(find("CatalogApiErrorBudgetBurn")):
        # Between this tier's threshold and the next faster one's, so only this tier fires first.
        low = factors[index] * slo.error_target
        high = factors[index - 1] * slo.error_target if index else 1.0
        ratio = round((low + min(high, 2 * low)) / 2, 6)
        errors = round(ratio * 10000)
        out.append(
            Case(
                alert,
                f"{errors / 100:g}% errors, burn rate {alert.labels['long']}/{alert.labels['short']}",
                active=MINUTE,
                value=errors / 10000,
                labels={"job": mon.api_job},
                api=Api(ok=10000 - errors, errors=errors, fast_p50=10000 - errors, fast_p99=10000 - errors),
            )
        )
    return out


def _api_cases(mon: Monitoring, find: Callable[[str], list[Alert]]) -> list[Case]:
    slo = mon.slo
    api = {"job": mon.api_job}
    over = round(slo.error_alert * 2 * 100)
    return [
        Case(
            find("CatalogApiErrorRateHigh")[0],
            f"{over}% errors",
            MINUTE,
            over / 100,
            api,
            Api(ok=100 - over, errors=over, fast_p50=100 - over, fast_p99=100 - over),
        ),
        Case(
            find("CatalogApiLatencyP50High")[0],
            "60% of requests slower than the P50 threshold",
            MINUTE,
            0.6,
            api | {"le": le(slo.p50_alert)},
            Api(ok=100, errors=0, fast_p50=40, fast_p99=100),
        ),
        Case(
            find("CatalogApiLatencyP99High")[0],
            "2% of requests slower than the P99 threshold",
            MINUTE,
            0.02,
            api | {"le": le(slo.p99_alert)},
            Api(ok=100, errors=0, fast_p50=90, fast_p99=98),
        ),
        Case(find("CatalogApiDown")[0], "the only target answers up == 0", 0, 0, {}, Api(up=0)),
    ]


def _worker_cases(mon: Monitoring, find: Callable[[str], list[Alert]]) -> list[Case]:
    worker = {"job": mon.worker_job, "kind": "cpu.burn"}
    depth, wait = mon.backlog_min_depth + 10, mon.queue_wait_alert_seconds
    failing = round(mon.failure_ratio_alert * 2 * 100)
    backlog = find("CatalogWorkerBacklogGrowing")[0]
    return [
        Case(find("CatalogWorkerDown")[0], "no worker target at all", 0, 0, {}, worker=Worker(up=None)),
        Case(
            backlog,
            "queue deeper than the floor and growing one job a minute",
            MINUTE,
            depth + (MINUTE + backlog.for_) / MINUTE,
            worker,
            worker=Worker(depth=f"{depth:g}+1x{{steps}}"),
        ),
        Case(
            find("CatalogWorkerQueueWaitHigh")[0],
            "20% of jobs wait between 1x and 2x the threshold",
            MINUTE,
            # The quantile falls in the (wait, 2 * wait] bucket, interpolated linearly.
            wait + wait * ((mon.queue_wait_quantile - 0.8) / 0.2),
            worker | {"quantile": f"{mon.queue_wait_quantile:g}"},
            worker=Worker(wait={"10": 80, f"{wait:g}": 80, f"{2 * wait:g}": 100, "+Inf": 100}),
        ),
        Case(find("CatalogWorkerJobsDead")[0], "two dead jobs", 0, 2, worker, worker=Worker(dead=2)),
        Case(
            find("CatalogWorkerJobFailureRatioHigh")[0],
            f"{failing}% of attempts fail",
            MINUTE,
            failing / 100,
            worker,
            worker=Worker(succeeded=100 - failing, failed=failing - 5, dead_per_step=5),
        ),
    ]


def healthy(mon: Monitoring) -> Yaml:
    """Everything just inside its threshold for longer than the longest `for`: nothing fires."""
    names = sorted({alert.name for alert in all_alerts(mon, PRODUCTION)})
    longest = max(alert.for_ for alert in all_alerts(mon, PRODUCTION)) + 2 * MINUTE
    steps = longest // MINUTE + 1
    checks: list[Yaml] = [
        {"eval_time": format_duration(at), "alertname": name, "exp_alerts": []}
        for at in (10 * MINUTE, longest)
        for name in names
    ]
    return {
        "name": "healthy traffic: 0.05% errors, 40% slower than P50 and 0.5% slower than P99 alerts, many 4xx",
        "interval": "1m",
        # Many 404s and 429s: were 4xx counted as errors, the error alerts would fire.
        "input_series": [*Api(client_errors={"404": 500, "429": 100}).series(mon, steps), *Worker().series(mon, steps)],
        "alert_rule_test": checks,
    }


def _group_order(mon: Monitoring) -> list[Yaml]:
    # Recording rules first, so an alert sees this evaluation's recorded samples
    # (Prometheus itself runs groups concurrently; a one-interval lag there is harmless).
    files = rule_files(mon, PRODUCTION)
    return [group.name for file in files for group in file.groups]


@dataclass(frozen=True)
class _Weeks:
    """The throughput scenarios' clock: a week of history at a 5m step, this week's from t=1w."""

    alert: Alert
    offset: int  # seconds between the two weeks (slo.toml's throughput_offset)
    window: int  # the alert's rate window
    step: int = 5 * MINUTE  # input samples
    every: int = 15 * MINUTE  # evaluations: a week of them at 1m would take promtool minutes

    @property
    def week(self) -> int:
        return self.offset // self.step

    @property
    def fires(self) -> int:
        # Both windows hold two samples from the first evaluation after 1w.
        return self.week * self.step + self.every + self.alert.for_

    @property
    def after(self) -> int:
        return (self.fires - self.week * self.step) // self.step + 1


def _throughput_scenario(mon: Monitoring, clock: _Weeks, name: str, *, last_week: int, now: int, expect: bool) -> Yaml:
    alert, step = clock.alert, clock.step
    labels = {"severity": alert.severity, "job": mon.api_job}
    labels_200 = {
        "job": mon.api_job,
        "instance": "api-1:9464",
        "http_route": ROUTE,
        "http_request_method": "GET",
        "http_response_status_code": "200",
    }
    series = f"http_server_request_duration_seconds_count{_labels(labels_200)}"
    history = clock.after + 12  # covers the offset window at every evaluation
    # The counter starts above zero so rate() extrapolates both weeks alike.
    values = f"1000+{last_week}x{history} _x{clock.week - history - 1} 100000+{now}x{clock.after}"
    # Both windows are partly filled at the check (45m of a 1h window): rate() extrapolates
    # half a step at the start, so the value is the 47.5m increase spread over the hour.
    sampled = clock.fires - clock.week * step
    value = now * (sampled + step / 2) / step / clock.window
    firing: list[Yaml] = []
    if expect:
        annotations = {
            "summary": render(alert.summary, value, labels),
            "description": render(alert.description, value, labels),
            "runbook_url": alert.runbook_url,
        }
        firing = [{"exp_labels": labels, "exp_annotations": annotations}]
    return {
        "name": f"{alert.name}: {name}",
        "interval": format_duration(step),
        "input_series": [{"series": series, "values": values}],
        "alert_rule_test": [
            {"eval_time": format_duration(clock.fires - clock.every), "alertname": alert.name, "exp_alerts": []},
            {"eval_time": format_duration(clock.fires), "alertname": alert.name, "exp_alerts": firing},
        ],
    }


def throughput(mon: Monitoring) -> Yaml:
    """A week of history at a 5m step: last week's traffic from t=0, this week's from t=1w."""
    alert = next(a for a in all_alerts(mon, PRODUCTION) if a.name == "CatalogApiThroughputDropped")
    clock = _Weeks(alert, mon.throughput_offset, mon.throughput_window)
    kept = 1 - mon.slo.throughput_drop_alert
    baseline = 300  # per 5m: 1 request/s
    dropped = int(baseline * kept / 2)  # well below the threshold
    floor = mon.throughput_min_baseline_rps
    return {
        "rule_files": ["../rules/*.yaml"],
        "evaluation_interval": format_duration(clock.every),
        "group_eval_order": _group_order(mon),
        "tests": [
            _throughput_scenario(
                mon, clock, f"traffic at {kept / 2:.0%} of last week's", last_week=baseline, now=dropped, expect=True
            ),
            _throughput_scenario(mon, clock, "traffic as last week", last_week=baseline, now=baseline, expect=False),
            _throughput_scenario(
                mon,
                clock,
                f"last week below the {floor:g} requests/s floor, none now",
                last_week=int(floor * clock.step / 2),
                now=0,
                expect=False,
            ),
        ],
    }


def one_case(mon: Monitoring, case: Case, rule_files: list[str], *, late: bool) -> Yaml:
    """A promtool test document holding one case (in the `late` shape or as committed)."""
    return {
        "rule_files": rule_files,
        "evaluation_interval": "1m",
        "group_eval_order": _group_order(mon),
        "tests": [case.to_yaml(mon, late=late)],
    }


def test_files(mon: Monitoring) -> dict[str, Yaml]:
    """File name (under monitoring/prometheus/tests/) -> promtool test document."""
    return {
        "alerts.test.yaml": {
            "rule_files": ["../rules/*.yaml"],
            "evaluation_interval": "1m",
            "group_eval_order": _group_order(mon),
            "tests": [healthy(mon), *(case.to_yaml(mon) for case in cases(mon))],
        },
        "throughput.test.yaml": throughput(mon),
    }
