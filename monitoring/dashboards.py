"""Grafana dashboards as plain Python data, written as JSON by monitoring/generate.py.

Targets Grafana 10.4 and newer (`schemaVersion` 39; newer Grafana migrates on
load). Every panel and target reads from the `datasource` template variable
(type datasource, Prometheus), never a fixed datasource uid, so the JSON works
in any Grafana. The job labels are template variables whose defaults come from
service/slo.toml, and the SLO panels draw slo.toml's targets and alert
thresholds as threshold lines, so a changed baseline moves the dashboards too.

    catalog-slo         P50, P99, error ratio, throughput against the baselines; burn rate, budget left
    catalog-red         rate, errors, duration per route (`route` variable), latency heatmap with exemplars
    catalog-saturation  event loop, PostgreSQL pool, CPU, memory, replicas, cache, rate limits, dependencies
    catalog-worker      queue depth and wait, job duration and outcomes, dead jobs, timeouts, leases, slots
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.slo import Monitoring

from .rules import errors_rate, errors_ratio, format_duration, le, requests_rate, slower_ratio

SCHEMA_VERSION = 39  # Grafana 10.4
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
API = 'job="$job"'
WORKER = 'job="$worker_job"'

Json = dict[str, Any]


def target(expr: str, legend: str = "", *, exemplar: bool = False, fmt: str = "time_series") -> Json:
    out: Json = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", "range": True}
    if fmt != "time_series":
        out["format"] = fmt
    if exemplar:
        out["exemplar"] = True
    return out


def thresholds(*steps: tuple[float, str]) -> Json:
    """Green below the first step; each (value, color) from there up."""
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in steps],
    }


@dataclass
class Board:
    uid: str
    title: str
    description: str
    variables: list[Json]
    panels: list[Json] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def row(self, title: str) -> None:
        self._newline()
        self._add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x, self._row_height = 0, 0

    def _add(self, panel: Json, width: int, height: int) -> Json:
        if self._x + width > 24:
            self._newline()
        panel = {"id": len(self.panels) + 1, "gridPos": {"h": height, "w": width, "x": self._x, "y": self._y}, **panel}
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)
        if self._x >= 24:
            self._newline()
        return panel

    def timeseries(
        self,
        title: str,
        targets: list[Json],
        *,
        unit: str = "short",
        description: str = "",
        steps: Json | None = None,
        width: int = 12,
        height: int = 8,
        stack: bool = False,
        minimum: float | None = 0,
    ) -> Json:
        custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0, "showPoints": "never"}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        if steps is not None:
            custom["thresholdsStyle"] = {"mode": "line"}
        defaults: Json = {"unit": unit, "custom": custom, "thresholds": steps or thresholds()}
        if minimum is not None:
            defaults["min"] = minimum
        return self._add(
            {
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "targets": _ref_ids(targets),
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
            },
            width,
            height,
        )

    def stat(
        self,
        title: str,
        expr: str,
        *,
        unit: str = "short",
        description: str = "",
        steps: Json | None = None,
        width: int = 6,
        height: int = 4,
        decimals: int | None = None,
    ) -> Json:
        defaults: Json = {"unit": unit, "thresholds": steps or thresholds(), "color": {"mode": "thresholds"}}
        if decimals is not None:
            defaults["decimals"] = decimals
        return self._add(
            {
                "type": "stat",
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "targets": _ref_ids([target(expr, fmt="time_series")]),
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value",
                    "graphMode": "area",
                    "textMode": "auto",
                },
            },
            width,
            height,
        )

    def heatmap(self, title: str, expr: str, *, description: str = "", width: int = 12, height: int = 8) -> Json:
        return self._add(
            {
                "type": "heatmap",
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "targets": _ref_ids([target(expr, "{{le}}", exemplar=True, fmt="heatmap")]),
                "fieldConfig": {
                    "defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}},
                    "overrides": [],
                },
                "options": {
                    "calculate": False,
                    "yAxis": {"unit": "s"},
                    "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                    "cellGap": 1,
                    "exemplars": {"color": "rgba(255,0,255,0.7)"},
                    "tooltip": {"mode": "single", "yHistogram": True},
                    "legend": {"show": True},
                    "rowsFrame": {"layout": "auto"},
                },
            },
            width,
            height,
        )

    def to_json(self) -> Json:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["catalog", "generated"],
            "timezone": "browser",
            "editable": False,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "annotations": {"list": []},
            "links": [
                {"title": "Catalog", "type": "dashboards", "tags": ["catalog"], "asDropdown": True, "includeVars": True}
            ],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def _ref_ids(targets: list[Json]) -> list[Json]:
    return [{**t, "refId": chr(ord("A") + index)} for index, t in enumerate(targets)]


def _datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def _custom(name: str, label: str, value: str) -> Json:
    """A job label, editable in the UI; the default is slo.toml's."""
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": value,
        "current": {"selected": True, "text": value, "value": value},
        "options": [{"selected": True, "text": value, "value": value}],
        "hide": 0,
    }


def _query(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def _quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def slo_overview(mon: Monitoring) -> Json:
    slo = mon.slo
    short = format_duration(mon.short)
    window = format_duration(mon.slo_window)
    board = Board(
        "catalog-slo",
        "Catalog / SLO overview",
        "The baselines from service/slo.toml (generated by monitoring/generate.py): orange lines are targets, red lines alert thresholds.",
        [_datasource_variable(), _custom("job", "API job", mon.api_job)],
    )
    # The window's 5xx ratio from the 5m recording rules, weighted by traffic: cheap to
    # refresh (one series per job) where rate(...[30d]) over the raw histogram is not.
    # It covers as much of the window as the recording rules have history for.
    errors5m, rate5m = f"{errors_rate(short)}{{{API}}}", f"{requests_rate(short)}{{{API}}}"
    budget_ratio = f"sum_over_time({errors5m}[{window}]) / sum_over_time({rate5m}[{window}])"
    board.stat(
        f"Error budget left ({window})",
        f"1 - ({budget_ratio}) / {slo.error_target}",
        unit="percentunit",
        description=f"Share of the {window} error budget ({slo.error_target:.1%} of requests may fail) not yet spent.",
        steps={
            "mode": "absolute",
            "steps": [
                {"color": "red", "value": None},
                {"color": "orange", "value": 0},
                {"color": "green", "value": 0.25},
            ],
        },
        decimals=1,
    )
    board.stat(
        f"Availability ({window})",
        f"1 - ({budget_ratio})",
        unit="percentunit",
        description=f"Share of non-5xx responses over {window}; the SLO is {1 - slo.error_target:.1%}.",
        steps={
            "mode": "absolute",
            "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1 - slo.error_target}],
        },
        decimals=3,
    )
    board.stat(
        f"Error budget burn rate ({format_duration(mon.burn_rates[0].long)})",
        f"{errors_ratio(format_duration(mon.burn_rates[0].long))}{{{API}}} / {slo.error_target}",
        unit="x",
        description="How many times faster than sustainable the budget is being spent (1 = exactly used up by the end of the window).",
        steps=thresholds(
            *((rate.factor, "orange" if rate.severity == "warning" else "red") for rate in reversed(mon.burn_rates))
        ),
        decimals=2,
    )
    board.stat(
        f"Requests/s ({short})",
        f"{requests_rate(short)}{{{API}}}",
        unit="reqps",
        description="All responses, every status.",
        decimals=1,
    )
    latency_note = "Display only: histogram_quantile interpolates inside buckets; the alerts use exact bucket ratios (panel below)."
    board.timeseries(
        "P50 latency",
        [target(_quantile(0.5, "http_server_request_duration_seconds", API), "P50", exemplar=True)],
        unit="s",
        description=f"Target < {slo.p50_target * 1000:g} ms (orange), alert > {slo.p50_alert * 1000:g} ms (red). {latency_note}",
        steps=thresholds((slo.p50_target, "orange"), (slo.p50_alert, "red")),
    )
    board.timeseries(
        "P99 latency",
        [target(_quantile(0.99, "http_server_request_duration_seconds", API), "P99", exemplar=True)],
        unit="s",
        description=f"Target < {slo.p99_target * 1000:g} ms (orange), alert > {slo.p99_alert * 1000:g} ms (red). {latency_note}",
        steps=thresholds((slo.p99_target, "orange"), (slo.p99_alert, "red")),
    )
    board.timeseries(
        "Share of requests slower than the P50 alert threshold",
        [
            target(
                f'{slower_ratio(short)}{{{API}, le="{le(slo.p50_alert)}"}}', f"slower than {slo.p50_alert * 1000:g} ms"
            )
        ],
        unit="percentunit",
        description=f"What CatalogApiLatencyP50High reads: above 50 % means P50 > {slo.p50_alert * 1000:g} ms.",
        steps=thresholds((0.5, "red")),
    )
    board.timeseries(
        "Share of requests slower than the P99 alert threshold",
        [
            target(
                f'{slower_ratio(short)}{{{API}, le="{le(slo.p99_alert)}"}}', f"slower than {slo.p99_alert * 1000:g} ms"
            )
        ],
        unit="percentunit",
        description=f"What CatalogApiLatencyP99High reads: above 1 % means P99 > {slo.p99_alert * 1000:g} ms.",
        steps=thresholds((0.01, "red")),
    )
    board.timeseries(
        "Error ratio (5xx)",
        [target(f"{errors_ratio(short)}{{{API}}}", f"5xx ratio ({short})")],
        unit="percentunit",
        description=f"5xx over all responses (4xx are not errors). Target < {slo.error_target:.1%} (orange), alert > {slo.error_alert:.0%} (red).",
        steps=thresholds((slo.error_target, "orange"), (slo.error_alert, "red")),
    )
    week_ago = f"sum(rate(http_server_request_duration_seconds_count{{{API}}}[{RATE}] offset 1w))"
    board.timeseries(
        "Throughput",
        [
            target(f"sum(rate(http_server_request_duration_seconds_count{{{API}}}[{RATE}]))", "now"),
            target(week_ago, "a week ago"),
            target(
                f"{1 - slo.throughput_drop_alert:g} * {week_ago}",
                f"alert line ({slo.throughput_drop_alert:.0%} below a week ago)",
            ),
        ],
        unit="reqps",
        description=f"Alert when the {format_duration(mon.throughput_window)} rate is {slo.throughput_drop_alert:.0%} below the same window a week earlier.",
    )
    board.timeseries(
        "Error budget burn rate",
        [
            target(
                f"{errors_ratio(format_duration(rate.long))}{{{API}}} / {slo.error_target}",
                f"{format_duration(rate.long)} window",
            )
            for rate in mon.burn_rates
        ],
        unit="x",
        description="5xx ratio divided by the SLO's allowed ratio, per alert window; lines at the 14.4 / 6 (page) and 3 / 1 (ticket) thresholds.",
        steps=thresholds(
            *((rate.factor, "orange" if rate.severity == "warning" else "red") for rate in reversed(mon.burn_rates))
        ),
        width=24,
    )
    return board.to_json()


def red(mon: Monitoring) -> Json:
    board = Board(
        "catalog-red",
        "Catalog / RED per route",
        "Rate, errors and duration per route template (generated by monitoring/generate.py).",
        [
            _datasource_variable(),
            _custom("job", "API job", mon.api_job),
            _query("route", "Route", f"label_values(http_server_request_duration_seconds_count{{{API}}}, http_route)"),
        ],
    )
    sel = f'{API}, http_route=~"$route"'
    count = "http_server_request_duration_seconds_count"
    board.timeseries(
        "Requests/s by route",
        [target(f"sum by (http_route) (rate({count}{{{sel}}}[{RATE}]))", "{{http_route}}")],
        unit="reqps",
        stack=True,
    )
    board.timeseries(
        "Responses/s by status",
        [
            target(
                f"sum by (http_response_status_code) (rate({count}{{{sel}}}[{RATE}]))", "{{http_response_status_code}}"
            )
        ],
        unit="reqps",
        stack=True,
    )
    board.timeseries(
        "5xx ratio by route",
        [
            target(
                f'(sum by (http_route) (rate({count}{{{sel}, http_response_status_code=~"5.."}}[{RATE}]))'
                f" or 0 * sum by (http_route) (rate({count}{{{sel}}}[{RATE}])))"
                f" / sum by (http_route) (rate({count}{{{sel}}}[{RATE}]))",
                "{{http_route}}",
            )
        ],
        unit="percentunit",
        steps=thresholds((mon.slo.error_target, "orange"), (mon.slo.error_alert, "red")),
    )
    board.timeseries(
        "4xx/s by route and status",
        [
            target(
                f'sum by (http_route, http_response_status_code) (rate({count}{{{sel}, http_response_status_code=~"4.."}}[{RATE}]))',
                "{{http_route}} {{http_response_status_code}}",
            )
        ],
        unit="reqps",
        description="Client errors: not counted against the SLO, but a spike of 401/403/429 is worth a look.",
    )
    board.timeseries(
        "Latency by route (P50, P90, P99)",
        [
            target(
                _quantile(q, "http_server_request_duration_seconds", sel, "http_route"),
                f"P{q * 100:g} {{{{http_route}}}}",
                exemplar=True,
            )
            for q in (0.5, 0.9, 0.99)
        ],
        unit="s",
        description="Exemplars (dots) link a slow request to its trace.",
        steps=thresholds((mon.slo.p99_target, "orange"), (mon.slo.p99_alert, "red")),
        width=24,
        height=9,
    )
    board.heatmap(
        "Latency distribution",
        f"sum by (le) (increase(http_server_request_duration_seconds_bucket{{{sel}}}[{RATE}]))",
        description="Requests per latency bucket; exemplars on.",
    )
    board.timeseries(
        "Unhandled exceptions/s",
        [
            target(
                f"sum by (http_route, exception_type) (rate(http_server_exceptions_total{{{sel}}}[{RATE}]))",
                "{{http_route}} {{exception_type}}",
            )
        ],
        unit="reqps",
    )
    board.timeseries(
        "In-flight requests",
        [target(f"sum by (instance) (http_server_active_requests{{{API}}})", "{{instance}}")],
        description="Every route; by pod.",
    )
    return board.to_json()


def saturation(mon: Monitoring) -> Json:
    board = Board(
        "catalog-saturation",
        "Catalog / Saturation",
        "What runs out first: the event loop, the PostgreSQL pool, CPU, memory, dependencies (generated by monitoring/generate.py).",
        [
            _datasource_variable(),
            _custom("job", "API job", mon.api_job),
            _custom("worker_job", "Worker job", mon.worker_job),
        ],
    )
    board.row("API pods")
    board.stat(
        "API replicas up",
        f"count(up{{{API}}} == 1)",
        steps={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]},
    )
    board.stat(
        "Worker replicas up",
        f"count(up{{{WORKER}}} == 1)",
        steps={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]},
    )
    board.stat(
        "Pool in use",
        f'sum(db_pool_connections{{{API}, state="in_use"}}) / sum(db_pool_connections{{{API}, state="max"}})',
        unit="percentunit",
        steps=thresholds((0.75, "orange"), (0.9, "red")),
    )
    board.stat(
        "Cache hit ratio (L1 + L2)",
        f'sum(rate(cache_requests_total{{{API}, result="hit"}}[5m])) / sum(rate(cache_requests_total{{{API}, layer="l1"}}[5m]))',
        unit="percentunit",
        description="Hits in either layer over all lookups (every lookup starts at L1).",
    )
    board.timeseries(
        "Event-loop lag P99",
        [target(_quantile(0.99, "event_loop_lag_seconds", API, "instance"), "{{instance}}")],
        unit="s",
        description="How late a 250 ms timer fires: CPU-bound or blocking code on the pod's only event loop.",
        steps=thresholds((0.05, "orange"), (0.25, "red")),
    )
    board.timeseries(
        "CPU (cores)",
        [
            target(f"rate(process_cpu_seconds_total{{{API}}}[{RATE}])", "api {{instance}}"),
            target(f"rate(process_cpu_seconds_total{{{WORKER}}}[{RATE}])", "worker {{instance}}"),
        ],
        unit="short",
    )
    board.timeseries(
        "Resident memory",
        [
            target(f"process_resident_memory_bytes{{{API}}}", "api {{instance}}"),
            target(f"process_resident_memory_bytes{{{WORKER}}}", "worker {{instance}}"),
        ],
        unit="bytes",
    )
    board.timeseries(
        "In-flight requests",
        [target(f"sum by (instance) (http_server_active_requests{{{API}}})", "{{instance}}")],
    )
    board.row("PostgreSQL pool and dependencies")
    board.timeseries(
        "Pool connections by state",
        [target(f"db_pool_connections{{{API}}}", "{{instance}} {{state}}")],
        description="max = DB_POOL_MAX_SIZE; in_use near max means requests wait for a connection.",
    )
    board.timeseries(
        "Pool acquire wait (P50, P99)",
        [
            target(_quantile(q, "db_pool_acquire_seconds", API, "instance"), f"P{q * 100:g} {{{{instance}}}}")
            for q in (0.5, 0.99)
        ],
        unit="s",
    )
    board.timeseries(
        "Dependency call latency P99",
        [
            target(
                _quantile(0.99, "dependency_call_duration_seconds", API, "dependency, operation"),
                "{{dependency}} {{operation}}",
            )
        ],
        unit="s",
    )
    board.timeseries(
        "Dependency errors/s",
        [
            target(
                f"sum by (dependency, operation) (rate(dependency_errors_total{{{API}}}[{RATE}]))",
                "{{dependency}} {{operation}}",
            )
        ],
        unit="reqps",
    )
    board.timeseries(
        "Circuit breakers open",
        [target(f"max by (dependency) (circuit_breaker_open{{{API}}})", "{{dependency}}")],
        description="1 while a dependency's breaker is open on any pod.",
        steps=thresholds((1, "red")),
    )
    board.timeseries(
        "Bulkhead rejections/s",
        [target(f"sum by (bulkhead) (rate(bulkhead_rejections_total{{{API}}}[{RATE}]))", "{{bulkhead}}")],
        unit="reqps",
    )
    board.row("Cache and rate limits")
    board.timeseries(
        "Cache hit ratio by layer",
        [
            target(
                f'sum by (layer) (rate(cache_requests_total{{{API}, result="hit"}}[{RATE}])) / sum by (layer) (rate(cache_requests_total{{{API}}}[{RATE}]))',
                "{{layer}}",
            )
        ],
        unit="percentunit",
    )
    board.timeseries(
        "Rate-limit decisions/s",
        [target(f"sum by (decision) (rate(rate_limit_decisions_total{{{API}}}[{RATE}]))", "{{decision}}")],
        unit="reqps",
        stack=True,
        description="rejected = 429s; store_unavailable = Redis down, requests let through (fail open).",
    )
    return board.to_json()


def worker(mon: Monitoring) -> Json:
    board = Board(
        "catalog-worker",
        "Catalog / Worker",
        "The job queue and the workers that drain it (generated by monitoring/generate.py).",
        [
            _datasource_variable(),
            _custom("worker_job", "Worker job", mon.worker_job),
            _query("kind", "Job kind", f"label_values(job_queue_depth{{{WORKER}}}, kind)"),
        ],
    )
    sel = f'{WORKER}, kind=~"$kind"'
    board.stat(
        "Workers up",
        f"count(up{{{WORKER}}} == 1)",
        steps={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]},
    )
    board.stat(
        "Queued jobs",
        f"sum(max by (kind) (job_queue_depth{{{sel}}}))",
        steps=thresholds((mon.backlog_min_depth, "orange")),
    )
    board.stat(
        "Dead jobs",
        f"sum(max by (kind) (jobs_dead{{{sel}}}))",
        steps=thresholds((1, "red")),
        description="Used every attempt; see the CatalogWorkerJobsDead runbook.",
    )
    board.stat(
        "Slots busy",
        f"sum(worker_jobs_running{{{WORKER}}}) / sum(worker_slots{{{WORKER}}})",
        unit="percentunit",
        steps=thresholds((0.8, "orange"), (1, "red")),
    )
    board.timeseries(
        "Queue depth (ready, unclaimed)",
        [target(f"max by (kind) (job_queue_depth{{{sel}}})", "{{kind}}")],
        description="Sampled from the jobs table by every worker: max, not sum.",
        steps=thresholds((mon.backlog_min_depth, "orange")),
    )
    board.timeseries(
        "Queue wait (P50, P90, P99)",
        [
            target(_quantile(q, "job_queue_wait_seconds", sel, "kind"), f"P{q * 100:g} {{{{kind}}}}")
            for q in (0.5, 0.9, 0.99)
        ],
        unit="s",
        steps=thresholds((mon.queue_wait_alert_seconds, "red")),
    )
    board.timeseries(
        "Job duration (P50, P90, P99)",
        [
            target(_quantile(q, "job_duration_seconds", sel, "kind"), f"P{q * 100:g} {{{{kind}}}}")
            for q in (0.5, 0.9, 0.99)
        ],
        unit="s",
    )
    board.timeseries(
        "Attempts/s by outcome",
        [target(f"sum by (kind, outcome) (rate(jobs_processed_total{{{sel}}}[{RATE}]))", "{{kind}} {{outcome}}")],
        unit="ops",
        stack=True,
        description="succeeded; failed = attempt failed, retry scheduled; dead = final failure.",
    )
    board.timeseries(
        "Failure ratio",
        [
            target(
                f'(sum by (kind) (rate(jobs_processed_total{{{sel}, outcome=~"failed|dead"}}[{RATE}])) or 0 * sum by (kind) (rate(jobs_processed_total{{{sel}}}[{RATE}])))'
                f" / sum by (kind) (rate(jobs_processed_total{{{sel}}}[{RATE}]))",
                "{{kind}}",
            )
        ],
        unit="percentunit",
        steps=thresholds((mon.failure_ratio_alert, "red")),
    )
    board.timeseries(
        "Dead jobs by kind",
        [target(f"max by (kind) (jobs_dead{{{sel}}})", "{{kind}}")],
        steps=thresholds((1, "red")),
    )
    board.timeseries(
        "Timeouts and reclaimed leases/s",
        [
            target(f"sum by (kind) (rate(job_timeouts_total{{{sel}}}[{RATE}]))", "timeouts {{kind}}"),
            target(f"sum by (kind) (rate(job_leases_reclaimed_total{{{sel}}}[{RATE}]))", "leases reclaimed {{kind}}"),
        ],
        unit="ops",
        description="Timeouts: the hard per-job limit killed the child. Reclaimed: a worker died holding the job.",
    )
    board.timeseries(
        "Running jobs and slots",
        [
            target(f"sum(worker_jobs_running{{{WORKER}}})", "running"),
            target(f"sum(worker_slots{{{WORKER}}})", "slots"),
        ],
    )
    board.timeseries(
        "Worker memory",
        [target(f"process_resident_memory_bytes{{{WORKER}}}", "{{instance}}")],
        unit="bytes",
    )
    return board.to_json()


def all_dashboards(mon: Monitoring) -> dict[str, Json]:
    """File name (under monitoring/grafana/dashboards/) -> dashboard JSON."""
    return {
        "catalog-slo.json": slo_overview(mon),
        "catalog-red.json": red(mon),
        "catalog-saturation.json": saturation(mon),
        "catalog-worker.json": worker(mon),
    }
