"""Every PromQL expression the rules and dashboards use, in one place, driven by service/slo.toml.

As kubernetes-mixin keeps its queries apart from its dashboards: monitoring/rules.py
builds recording rules and alerts from the rule expressions and names here, and
monitoring/dashboards.py places panels that name a query from `panel_queries()`.
Rule expressions take their window as text (the profile decides it); dashboard
queries use Grafana's variables (`$job`, `$worker_job`, `$route`, `$kind`,
`$__rate_interval`), which monitoring/queries.py substitutes for end-to-end tests.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client.utils import floatToGoString

from service.slo import Monitoring, format_duration

DURATION = "http_server_request_duration_seconds"
RATE = "$__rate_interval"
API = 'job="$job"'
WORKER = 'job="$worker_job"'
# The pool's acquire wait is drawn at the SLO's two quantiles, not the dashboards' three.
POOL_ACQUIRE_QUANTILES = (0.5, 0.99)


def le(bound: float) -> str:
    """The `le` label value prometheus_client writes for a bucket bound (0.1 -> "0.1", 1 -> "1.0")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def number(value: float) -> str:
    """A threshold as PromQL text without float noise (1 - 0.99 -> 0.01)."""
    return format(Decimal(repr(round(value, 10))).normalize(), "f")


# --- recording rule names, shared by the alerts, the dashboards and the tests -----------------


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


# --- rule expressions ----------------------------------------------------------------------


def _or_zero(part: str, total: str) -> str:
    # `or 0 * total`: the ratio is 0, not missing, while no failure has happened yet.
    return f"(\n  {part}\n  or 0 * {total}\n)\n/\n{total}"


def api_requests(job: str, window: str) -> str:
    return f'sum by (job) (rate({DURATION}_count{{job="{job}"}}[{window}]))'


def api_errors(job: str, window: str) -> str:
    return f'sum by (job) (rate({DURATION}_count{{job="{job}", http_response_status_code=~"5.."}}[{window}]))'


def api_errors_ratio(job: str, window: str) -> str:
    return _or_zero(api_errors(job, window), api_requests(job, window))


def api_errors_rate(job: str, window: str) -> str:
    return f"{api_errors(job, window)}\nor 0 * {api_requests(job, window)}"


def api_slower_ratio(job: str, window: str, bound: float) -> str:
    # The `le` buckets are exact boundaries at the thresholds (service/slo.py checks),
    # so this is the exact share of requests slower than the bound, at any latency.
    faster = f'sum by (job) (rate({DURATION}_bucket{{job="{job}", le="{le(bound)}"}}[{window}]))'
    everything = f'sum by (job) (rate({DURATION}_bucket{{job="{job}", le="+Inf"}}[{window}]))'
    return f"1 - (\n  {faster}\n  /\n  {everything}\n)"


def api_week_ago(job: str, window: str, offset: str) -> str:
    return f'sum by (job) (rate({DURATION}_count{{job="{job}"}}[{window}] offset {offset}))'


def worker_failures_ratio(job: str, window: str) -> str:
    attempts = f'sum by (job, kind) (rate(jobs_processed_total{{job="{job}"}}[{window}]))'
    failed = f'sum by (job, kind) (rate(jobs_processed_total{{job="{job}", outcome=~"failed|dead"}}[{window}]))'
    return _or_zero(failed, attempts)


def worker_gauge_max(job: str, metric: str) -> str:
    # Sampled from the jobs table, so every worker reports the same number: max, not sum.
    return f'max by (job, kind) ({metric}{{job="{job}"}})'


def worker_queue_wait(job: str, window: str, quantile: float) -> str:
    return (
        f"histogram_quantile({number(quantile)}, "
        f'sum by (job, kind, le) (rate(job_queue_wait_seconds_bucket{{job="{job}"}}[{window}])))'
    )


# --- dashboard queries ---------------------------------------------------------------------


def quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def _ratio_by(by: str, metric: str, selector: str, failing: str) -> str:
    total = f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"
    return f"(sum by ({by}) (rate({metric}{{{selector}, {failing}}}[{RATE}])) or 0 * {total}) / {total}"


_ROUTE = f'{API}, http_route=~"$route"'
_KIND = f'{WORKER}, kind=~"$kind"'
_COUNT = f"{DURATION}_count"


def panel_queries(mon: Monitoring) -> dict[str, str]:
    """Query name -> PromQL for every dashboard panel; quantile panels have one query per quantile."""
    return {**_slo_queries(mon), **_red_queries(mon), **_saturation_queries(mon), **_worker_queries(mon)}


def _slo_queries(mon: Monitoring) -> dict[str, str]:
    short, window = format_duration(mon.short), format_duration(mon.slo_window)
    fastest, offset = format_duration(mon.burn_rates[0].long), format_duration(mon.throughput_offset)
    budget = f"sum_over_time({errors_rate(short)}{{{API}}}[{window}]) / sum_over_time({requests_rate(short)}{{{API}}}[{window}])"
    week_ago = f"sum(rate({_COUNT}{{{API}}}[{RATE}] offset {offset}))"
    queries = {
        "budget_left": f"1 - ({budget}) / {mon.slo.error_target}",
        "availability": f"1 - ({budget})",
        "burn_rate_fastest": f"{errors_ratio(fastest)}{{{API}}} / {mon.slo.error_target}",
        "requests_rate": f"{requests_rate(short)}{{{API}}}",
        "p50": quantile(0.5, DURATION, API),
        "p99": quantile(0.99, DURATION, API),
        "slower_p50": f'{slower_ratio(short)}{{{API}, le="{le(mon.slo.p50_alert)}"}}',
        "slower_p99": f'{slower_ratio(short)}{{{API}, le="{le(mon.slo.p99_alert)}"}}',
        "errors_ratio": f"{errors_ratio(short)}{{{API}}}",
        "throughput_now": f"sum(rate({_COUNT}{{{API}}}[{RATE}]))",
        "throughput_week_ago": week_ago,
        "throughput_alert_line": f"{1 - mon.slo.throughput_drop_alert:g} * {week_ago}",
    }
    for rate in mon.burn_rates:
        long = format_duration(rate.long)
        queries[f"burn_rate_{long}"] = f"{errors_ratio(long)}{{{API}}} / {mon.slo.error_target}"
    return queries


def _red_queries(mon: Monitoring) -> dict[str, str]:
    queries = {
        "route_values": f"label_values({_COUNT}{{{API}}}, http_route)",
        "requests_by_route": f"sum by (http_route) (rate({_COUNT}{{{_ROUTE}}}[{RATE}]))",
        "responses_by_status": f"sum by (http_response_status_code) (rate({_COUNT}{{{_ROUTE}}}[{RATE}]))",
        "errors_ratio_by_route": _ratio_by("http_route", _COUNT, _ROUTE, 'http_response_status_code=~"5.."'),
        "client_errors": f'sum by (http_route, http_response_status_code) (rate({_COUNT}{{{_ROUTE}, http_response_status_code=~"4.."}}[{RATE}]))',
        "latency_heatmap": f"sum by (le) (increase({DURATION}_bucket{{{_ROUTE}}}[{RATE}]))",
        "exceptions": f"sum by (http_route, exception_type) (rate(http_server_exceptions_total{{{_ROUTE}}}[{RATE}]))",
        "in_flight": f"sum by (instance) (http_server_active_requests{{{API}}})",
    }
    for q in mon.dashboards.quantiles:
        queries[f"latency_by_route_p{q * 100:g}"] = quantile(q, DURATION, _ROUTE, "http_route")
    return queries


def _saturation_queries(mon: Monitoring) -> dict[str, str]:
    stat = format_duration(mon.dashboards.stat_window)
    queries = {
        "api_up": f"count(up{{{API}}} == 1)",
        "worker_up": f"count(up{{{WORKER}}} == 1)",
        "pool_in_use": f'sum(db_pool_connections{{{API}, state="in_use"}}) / sum(db_pool_connections{{{API}, state="max"}})',
        "cache_hit_ratio": f'sum(rate(cache_requests_total{{{API}, result="hit"}}[{stat}])) / sum(rate(cache_requests_total{{{API}, layer="l1"}}[{stat}]))',
        "event_loop_lag": quantile(0.99, "event_loop_lag_seconds", API, "instance"),
        "api_cpu": f"rate(process_cpu_seconds_total{{{API}}}[{RATE}])",
        "worker_cpu": f"rate(process_cpu_seconds_total{{{WORKER}}}[{RATE}])",
        "api_memory": f"process_resident_memory_bytes{{{API}}}",
        "worker_memory": f"process_resident_memory_bytes{{{WORKER}}}",
        "pool_connections": f"db_pool_connections{{{API}}}",
        "dependency_latency": quantile(0.99, "dependency_call_duration_seconds", API, "dependency, operation"),
        "dependency_errors": f"sum by (dependency, operation) (rate(dependency_errors_total{{{API}}}[{RATE}]))",
        "breakers_open": f"max by (dependency) (circuit_breaker_open{{{API}}})",
        "bulkhead_rejections": f"sum by (bulkhead) (rate(bulkhead_rejections_total{{{API}}}[{RATE}]))",
        "cache_hit_ratio_by_layer": f'sum by (layer) (rate(cache_requests_total{{{API}, result="hit"}}[{RATE}])) / sum by (layer) (rate(cache_requests_total{{{API}}}[{RATE}]))',
        "rate_limit_decisions": f"sum by (decision) (rate(rate_limit_decisions_total{{{API}}}[{RATE}]))",
    }
    for q in POOL_ACQUIRE_QUANTILES:
        queries[f"pool_acquire_p{q * 100:g}"] = quantile(q, "db_pool_acquire_seconds", API, "instance")
    return queries


def _worker_queries(mon: Monitoring) -> dict[str, str]:
    queries = {
        "kind_values": f"label_values(job_queue_depth{{{WORKER}}}, kind)",
        "queued": f"sum(max by (kind) (job_queue_depth{{{_KIND}}}))",
        "dead": f"sum(max by (kind) (jobs_dead{{{_KIND}}}))",
        "slots_busy": f"sum(worker_jobs_running{{{WORKER}}}) / sum(worker_slots{{{WORKER}}})",
        "queue_depth": f"max by (kind) (job_queue_depth{{{_KIND}}})",
        "attempts_by_outcome": f"sum by (kind, outcome) (rate(jobs_processed_total{{{_KIND}}}[{RATE}]))",
        "failure_ratio": _ratio_by("kind", "jobs_processed_total", _KIND, 'outcome=~"failed|dead"'),
        "dead_by_kind": f"max by (kind) (jobs_dead{{{_KIND}}})",
        "timeouts": f"sum by (kind) (rate(job_timeouts_total{{{_KIND}}}[{RATE}]))",
        "leases_reclaimed": f"sum by (kind) (rate(job_leases_reclaimed_total{{{_KIND}}}[{RATE}]))",
        "running": f"sum(worker_jobs_running{{{WORKER}}})",
        "slots": f"sum(worker_slots{{{WORKER}}})",
        "worker_memory": f"process_resident_memory_bytes{{{WORKER}}}",
    }
    for q in mon.dashboards.quantiles:
        queries[f"queue_wait_p{q * 100:g}"] = quantile(q, "job_queue_wait_seconds", _KIND, "kind")
        queries[f"job_duration_p{q * 100:g}"] = quantile(q, "job_duration_seconds", _KIND, "kind")
    return queries
