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

from service.slo import Monitoring, format_duration

from .promql import POOL_ACQUIRE_QUANTILES, panel_queries

SCHEMA_VERSION = 39  # Grafana 10.4
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

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

    def _panel(
        self,
        kind: str,
        title: str,
        *,
        description: str,
        targets: list[Json],
        defaults: Json,
        options: Json,
        size: tuple[int, int],
    ) -> Json:
        """One panel of `kind`: the fields every panel has, in Grafana's order."""
        panel = {
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "targets": _ref_ids(targets),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options,
        }
        return self._add(panel, *size)

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
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        return self._panel(
            "timeseries",
            title,
            description=description,
            targets=targets,
            defaults=defaults,
            options=options,
            size=(width, height),
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
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
        return self._panel(
            "stat",
            title,
            description=description,
            targets=[target(expr)],
            defaults=defaults,
            options=options,
            size=(width, height),
        )

    def heatmap(self, title: str, expr: str, *, description: str = "", width: int = 12, height: int = 8) -> Json:
        defaults = {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}}
        options = {
            "calculate": False,
            "yAxis": {"unit": "s"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "cellGap": 1,
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
        }
        targets = [target(expr, "{{le}}", exemplar=True, fmt="heatmap")]
        return self._panel(
            "heatmap",
            title,
            description=description,
            targets=targets,
            defaults=defaults,
            options=options,
            size=(width, height),
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


def _percentiles(quantiles: tuple[float, ...]) -> str:
    return ", ".join(f"P{q * 100:g}" for q in quantiles)


def _burn_steps(mon: Monitoring) -> Json:
    return thresholds(
        *((rate.factor, "orange" if rate.severity == "warning" else "red") for rate in reversed(mon.burn_rates))
    )


def _up_steps() -> Json:
    return {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}


def _factors(mon: Monitoring, severity: str) -> str:
    return " / ".join(f"{rate.factor:g}" for rate in mon.burn_rates if rate.severity == severity)


# --- catalog-slo ---------------------------------------------------------------------------


def slo_overview(mon: Monitoring) -> Json:
    board = Board(
        "catalog-slo",
        "Catalog / SLO overview",
        "The baselines from service/slo.toml (generated by monitoring/generate.py): orange lines are targets, red lines alert thresholds.",
        [_datasource_variable(), _custom("job", "API job", mon.api_job)],
    )
    queries = panel_queries(mon)
    _slo_stats(board, mon, queries)
    _slo_latency(board, mon, queries)
    _slo_errors(board, mon, queries)
    return board.to_json()


def _slo_stats(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    slo, window = mon.slo, format_duration(mon.slo_window)
    # The window's 5xx ratio from the short-window recording rules, weighted by traffic: cheap
    # to refresh (one series per job) where rate(...[30d]) over the raw histogram is not. It
    # covers as much of the window as the recording rules have history for.
    board.stat(
        f"Error budget left ({window})",
        q["budget_left"],
        unit="percentunit",
        description=f"Share of the {window} error budget ({slo.error_target:.1%} of requests may fail) not yet spent.",
        steps={
            "mode": "absolute",
            "steps": [
                {"color": "red", "value": None},
                {"color": "orange", "value": 0},
                {"color": "green", "value": mon.dashboards.budget_left_warning},
            ],
        },
        decimals=1,
    )
    board.stat(
        f"Availability ({window})",
        q["availability"],
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
        q["burn_rate_fastest"],
        unit="x",
        description="How many times faster than sustainable the budget is being spent (1 = exactly used up by the end of the window).",
        steps=_burn_steps(mon),
        decimals=2,
    )
    board.stat(
        f"Requests/s ({format_duration(mon.short)})",
        q["requests_rate"],
        unit="reqps",
        description="All responses, every status.",
        decimals=1,
    )


def _slo_latency(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    slo = mon.slo
    note = "Display only: histogram_quantile interpolates inside buckets; the alerts use exact bucket ratios (panel below)."
    for p, target_s, alert_s in (("P50", slo.p50_target, slo.p50_alert), ("P99", slo.p99_target, slo.p99_alert)):
        board.timeseries(
            f"{p} latency",
            [target(q[p.lower()], p, exemplar=True)],
            unit="s",
            description=f"Target < {target_s * 1000:g} ms (orange), alert > {alert_s * 1000:g} ms (red). {note}",
            steps=thresholds((target_s, "orange"), (alert_s, "red")),
        )
    for p, quantile, alert_s in (("P50", 0.5, slo.p50_alert), ("P99", 0.99, slo.p99_alert)):
        share = round(1 - quantile, 10)
        board.timeseries(
            f"Share of requests slower than the {p} alert threshold",
            [target(q[f"slower_{p.lower()}"], f"slower than {alert_s * 1000:g} ms")],
            unit="percentunit",
            description=f"What CatalogApiLatency{p}High reads: above {share * 100:g} % means {p} > {alert_s * 1000:g} ms.",
            steps=thresholds((share, "red")),
        )


def _slo_errors(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    slo, short = mon.slo, format_duration(mon.short)
    board.timeseries(
        "Error ratio (5xx)",
        [target(q["errors_ratio"], f"5xx ratio ({short})")],
        unit="percentunit",
        description=f"5xx over all responses (4xx are not errors). Target < {slo.error_target:.1%} (orange), alert > {slo.error_alert:.0%} (red).",
        steps=thresholds((slo.error_target, "orange"), (slo.error_alert, "red")),
    )
    drop = slo.throughput_drop_alert
    board.timeseries(
        "Throughput",
        [
            target(q["throughput_now"], "now"),
            target(q["throughput_week_ago"], "a week ago"),
            target(q["throughput_alert_line"], f"alert line ({drop:.0%} below a week ago)"),
        ],
        unit="reqps",
        description=f"Alert when the {format_duration(mon.throughput_window)} rate is {drop:.0%} below the same window a week earlier.",
    )
    board.timeseries(
        "Error budget burn rate",
        [
            target(q[f"burn_rate_{format_duration(rate.long)}"], f"{format_duration(rate.long)} window")
            for rate in mon.burn_rates
        ],
        unit="x",
        description=(
            "5xx ratio divided by the SLO's allowed ratio, per alert window; lines at the "
            f"{_factors(mon, 'critical')} (page) and {_factors(mon, 'warning')} (ticket) thresholds."
        ),
        steps=_burn_steps(mon),
        width=24,
    )


# --- catalog-red ---------------------------------------------------------------------------


def red(mon: Monitoring) -> Json:
    q = panel_queries(mon)
    board = Board(
        "catalog-red",
        "Catalog / RED per route",
        "Rate, errors and duration per route template (generated by monitoring/generate.py).",
        [_datasource_variable(), _custom("job", "API job", mon.api_job), _query("route", "Route", q["route_values"])],
    )
    board.timeseries(
        "Requests/s by route", [target(q["requests_by_route"], "{{http_route}}")], unit="reqps", stack=True
    )
    board.timeseries(
        "Responses/s by status",
        [target(q["responses_by_status"], "{{http_response_status_code}}")],
        unit="reqps",
        stack=True,
    )
    board.timeseries(
        "5xx ratio by route",
        [target(q["errors_ratio_by_route"], "{{http_route}}")],
        unit="percentunit",
        steps=thresholds((mon.slo.error_target, "orange"), (mon.slo.error_alert, "red")),
    )
    board.timeseries(
        "4xx/s by route and status",
        [target(q["client_errors"], "{{http_route}} {{http_response_status_code}}")],
        unit="reqps",
        description="Client errors: not counted against the SLO, but a spike of 401/403/429 is worth a look.",
    )
    quantiles = mon.dashboards.quantiles
    board.timeseries(
        f"Latency by route ({_percentiles(quantiles)})",
        [
            target(q[f"latency_by_route_p{p * 100:g}"], f"P{p * 100:g} {{{{http_route}}}}", exemplar=True)
            for p in quantiles
        ],
        unit="s",
        description="Exemplars (dots) link a slow request to its trace.",
        steps=thresholds((mon.slo.p99_target, "orange"), (mon.slo.p99_alert, "red")),
        width=24,
        height=9,
    )
    board.heatmap(
        "Latency distribution", q["latency_heatmap"], description="Requests per latency bucket; exemplars on."
    )
    board.timeseries(
        "Unhandled exceptions/s", [target(q["exceptions"], "{{http_route}} {{exception_type}}")], unit="reqps"
    )
    board.timeseries("In-flight requests", [target(q["in_flight"], "{{instance}}")], description="Every route; by pod.")
    return board.to_json()


# --- catalog-saturation --------------------------------------------------------------------


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
    queries = panel_queries(mon)
    _saturation_pods(board, mon, queries)
    _saturation_dependencies(board, mon, queries)
    board.row("Cache and rate limits")
    board.timeseries(
        "Cache hit ratio by layer", [target(queries["cache_hit_ratio_by_layer"], "{{layer}}")], unit="percentunit"
    )
    board.timeseries(
        "Rate-limit decisions/s",
        [target(queries["rate_limit_decisions"], "{{decision}}")],
        unit="reqps",
        stack=True,
        description="rejected = 429s; store_unavailable = Redis down, requests let through (fail open).",
    )
    return board.to_json()


def _saturation_pods(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    limits = mon.dashboards
    board.row("API pods")
    board.stat("API replicas up", q["api_up"], steps=_up_steps())
    board.stat("Worker replicas up", q["worker_up"], steps=_up_steps())
    board.stat(
        "Pool in use",
        q["pool_in_use"],
        unit="percentunit",
        steps=thresholds((limits.pool_in_use_warning, "orange"), (limits.pool_in_use_critical, "red")),
    )
    board.stat(
        "Cache hit ratio (L1 + L2)",
        q["cache_hit_ratio"],
        unit="percentunit",
        description="Hits in either layer over all lookups (every lookup starts at L1).",
    )
    board.timeseries(
        "Event-loop lag P99",
        [target(q["event_loop_lag"], "{{instance}}")],
        unit="s",
        description="How late a 250 ms timer fires: CPU-bound or blocking code on the pod's only event loop.",
        steps=thresholds((limits.event_loop_lag_warning, "orange"), (limits.event_loop_lag_critical, "red")),
    )
    board.timeseries(
        "CPU (cores)",
        [target(q["api_cpu"], "api {{instance}}"), target(q["worker_cpu"], "worker {{instance}}")],
        unit="short",
    )
    board.timeseries(
        "Resident memory",
        [target(q["api_memory"], "api {{instance}}"), target(q["worker_memory"], "worker {{instance}}")],
        unit="bytes",
    )
    board.timeseries("In-flight requests", [target(q["in_flight"], "{{instance}}")])


def _saturation_dependencies(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    board.row("PostgreSQL pool and dependencies")
    board.timeseries(
        "Pool connections by state",
        [target(q["pool_connections"], "{{instance}} {{state}}")],
        description="max = DB_POOL_MAX_SIZE; in_use near max means requests wait for a connection.",
    )
    quantiles = POOL_ACQUIRE_QUANTILES
    board.timeseries(
        f"Pool acquire wait ({_percentiles(quantiles)})",
        [target(q[f"pool_acquire_p{p * 100:g}"], f"P{p * 100:g} {{{{instance}}}}") for p in quantiles],
        unit="s",
    )
    board.timeseries(
        "Dependency call latency P99", [target(q["dependency_latency"], "{{dependency}} {{operation}}")], unit="s"
    )
    board.timeseries(
        "Dependency errors/s", [target(q["dependency_errors"], "{{dependency}} {{operation}}")], unit="reqps"
    )
    board.timeseries(
        "Circuit breakers open",
        [target(q["breakers_open"], "{{dependency}}")],
        description="1 while a dependency's breaker is open on any pod.",
        steps=thresholds((1, "red")),
    )
    board.timeseries("Bulkhead rejections/s", [target(q["bulkhead_rejections"], "{{bulkhead}}")], unit="reqps")


# --- catalog-worker ------------------------------------------------------------------------


def worker(mon: Monitoring) -> Json:
    queries = panel_queries(mon)
    board = Board(
        "catalog-worker",
        "Catalog / Worker",
        "The job queue and the workers that drain it (generated by monitoring/generate.py).",
        [
            _datasource_variable(),
            _custom("worker_job", "Worker job", mon.worker_job),
            _query("kind", "Job kind", queries["kind_values"]),
        ],
    )
    _worker_queue(board, mon, queries)
    _worker_outcomes(board, mon, queries)
    return board.to_json()


def _worker_queue(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    board.stat("Workers up", q["worker_up"], steps=_up_steps())
    board.stat("Queued jobs", q["queued"], steps=thresholds((mon.backlog_min_depth, "orange")))
    board.stat(
        "Dead jobs",
        q["dead"],
        steps=thresholds((1, "red")),
        description="Used every attempt; see the CatalogWorkerJobsDead runbook.",
    )
    board.stat(
        "Slots busy",
        q["slots_busy"],
        unit="percentunit",
        steps=thresholds((mon.dashboards.slots_busy_warning, "orange"), (1, "red")),
    )
    board.timeseries(
        "Queue depth (ready, unclaimed)",
        [target(q["queue_depth"], "{{kind}}")],
        description="Sampled from the jobs table by every worker: max, not sum.",
        steps=thresholds((mon.backlog_min_depth, "orange")),
    )
    quantiles = mon.dashboards.quantiles
    board.timeseries(
        f"Queue wait ({_percentiles(quantiles)})",
        [target(q[f"queue_wait_p{p * 100:g}"], f"P{p * 100:g} {{{{kind}}}}") for p in quantiles],
        unit="s",
        steps=thresholds((mon.queue_wait_alert_seconds, "red")),
    )
    board.timeseries(
        f"Job duration ({_percentiles(quantiles)})",
        [target(q[f"job_duration_p{p * 100:g}"], f"P{p * 100:g} {{{{kind}}}}") for p in quantiles],
        unit="s",
    )


def _worker_outcomes(board: Board, mon: Monitoring, q: dict[str, str]) -> None:
    board.timeseries(
        "Attempts/s by outcome",
        [target(q["attempts_by_outcome"], "{{kind}} {{outcome}}")],
        unit="ops",
        stack=True,
        description="succeeded; failed = attempt failed, retry scheduled; dead = final failure.",
    )
    board.timeseries(
        "Failure ratio",
        [target(q["failure_ratio"], "{{kind}}")],
        unit="percentunit",
        steps=thresholds((mon.failure_ratio_alert, "red")),
    )
    board.timeseries("Dead jobs by kind", [target(q["dead_by_kind"], "{{kind}}")], steps=thresholds((1, "red")))
    board.timeseries(
        "Timeouts and reclaimed leases/s",
        [target(q["timeouts"], "timeouts {{kind}}"), target(q["leases_reclaimed"], "leases reclaimed {{kind}}")],
        unit="ops",
        description="Timeouts: the hard per-job limit killed the child. Reclaimed: a worker died holding the job.",
    )
    board.timeseries("Running jobs and slots", [target(q["running"], "running"), target(q["slots"], "slots")])
    board.timeseries("Worker memory", [target(q["worker_memory"], "{{instance}}")], unit="bytes")


def all_dashboards(mon: Monitoring) -> dict[str, Json]:
    """File name (under monitoring/grafana/dashboards/) -> dashboard JSON."""
    return {
        "catalog-slo.json": slo_overview(mon),
        "catalog-red.json": red(mon),
        "catalog-saturation.json": saturation(mon),
        "catalog-worker.json": worker(mon),
    }
