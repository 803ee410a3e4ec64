"""Prometheus metrics of the request path, served on METRICS_PORT (never through the ingress).

One worker process per pod means one registry per pod: no multiprocess mode.
Names follow ../shared DESIGN.md; the HTTP histograms arrive with the
observability work, these are the ones the resilience patterns need now.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CACHE_REQUESTS = Counter("cache_requests_total", "Item cache lookups by layer and result.", ["layer", "result"])
RATE_LIMIT_DECISIONS = Counter(
    "rate_limit_decisions_total",
    "Rate-limit checks: allowed, rejected (429), or skipped because the counter store was unavailable.",
    ["decision"],
)
DEPENDENCY_ERRORS = Counter(
    "dependency_errors_total",
    "Failed calls to a dependency (postgres, redis) by operation.",
    ["dependency", "operation"],
)
BREAKER_OPEN = Gauge(
    "circuit_breaker_open", "1 while a dependency's circuit breaker is open (calls are not attempted).", ["dependency"]
)
BULKHEAD_REJECTIONS = Counter(
    "bulkhead_rejections_total", "Requests refused at once because a per-pod concurrency limit was full.", ["bulkhead"]
)
