"""Prometheus metrics of the request path, served on METRICS_PORT (never through the ingress).

One worker process per pod means one registry per pod: no multiprocess mode.
Names, labels and buckets are a contract (docs/architecture.md, "Metrics"); the latency buckets come
from service/slo.toml so every SLO threshold is a bucket boundary.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterable
from typing import Any, Final, cast

import asyncpg
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import slo, tracing

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

HTTP_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Time from request arrival to the last response byte, by route template, method and exact status.",
    ["http_route", "http_request_method", "http_response_status_code"],
    buckets=slo.load().buckets,
)
HTTP_DURATION_BOUNDS: Final = tuple(slo.load().buckets)  # upper bounds, le: a value equal to one is in its bucket
HTTP_ACTIVE = Gauge("http_server_active_requests", "Requests being served now.", ["http_request_method"])
HTTP_EXCEPTIONS = Counter(
    "http_server_exceptions_total",
    "Requests that ended in an unhandled exception (answered 500), by route template and exception type.",
    ["http_route", "exception_type"],
)

UNMATCHED: Final = "__unmatched__"
_KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CLIENT_CLOSED: Final = 499  # nginx's code: the client went away before the response was complete


class HttpMetricsMiddleware:
    """RED metrics for every request except the probes, as a pure ASGI middleware.

    The route label is the route template FastAPI matched (`/v1/items/{item_id}`),
    never the raw path, so label cardinality is bounded by the number of routes;
    requests that match no route are `__unmatched__`. The status is the exact code
    sent, 500 when the app raised before answering, 499 when the client went away.
    """

    def __init__(self, app: ASGIApp, excluded_paths: frozenset[str]) -> None:
        self.app = app
        self.excluded_paths = excluded_paths
        # Children by label values, looked up once: `.labels()` takes a lock and builds a key on
        # every call. As many entries as the metrics have series (routes x methods x statuses).
        self._active: dict[str, Any] = {}
        self._durations: dict[tuple[str, str, str], Any] = {}
        # When each (series, bucket) may next take an exemplar (monotonic seconds): see _exemplar_due.
        self._next_exemplar: dict[tuple[tuple[str, str, str], int], float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.excluded_paths:
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "_OTHER"
        status = 0
        finished = disconnected = False

        async def observed_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not finished:
                disconnected = True
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        active = self._active.get(method)
        if active is None:
            active = self._active[method] = HTTP_ACTIVE.labels(method)
        active.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, observed_receive, observed_send)
        except Exception as error:
            if not finished:
                # What the client gets (or a cut-off stream) from the layer above; a stream cut
                # off because its reader was too slow is the client's doing, like leaving.
                status = CLIENT_CLOSED if getattr(error, "by_client", False) else 500
            HTTP_EXCEPTIONS.labels(route_template(scope), type(error).__name__).inc()
            raise
        finally:
            active.dec()
            elapsed = time.perf_counter() - started
            if disconnected and not finished:
                status = CLIENT_CLOSED
            key = (route_template(scope), method, str(status or 500))
            exemplar = None
            # The request's span (RequestContextMiddleware) is current here: a sampled one links this sample
            # to its trace.
            if tracing.enabled and tracing.recording_parent() and self._exemplar_due(key, elapsed):
                exemplar = {"trace_id": cast("str", tracing.trace_id())}
            duration = self._durations.get(key)
            if duration is None:
                duration = self._durations[key] = HTTP_DURATION.labels(*key)
            duration.observe(elapsed, exemplar)

    def _exemplar_due(self, key: tuple[str, str, str], elapsed: float) -> bool:
        """Whether this observation's bucket of this series may take an exemplar now: at most one a second.

        Prometheus keeps the latest exemplar of each bucket, read once a scrape (15 s or more), so a
        bucket's exemplar is never older than a second when one is read, and only the bucket's first
        sampled request of each second pays for it (prometheus_client validates and stores every one,
        about 5 us a request with every request sampled: bench/results/observability_overhead_profile.md).
        """
        slot = (key, bisect.bisect_left(HTTP_DURATION_BOUNDS, elapsed))
        now = time.monotonic()
        if now < self._next_exemplar.get(slot, 0.0):
            return False
        self._next_exemplar[slot] = now + 1.0
        return True


# The 5xx statuses this app answers with (ProblemError 503s, the time budget's 503, and 500 for
# anything unhandled). Edge statuses (nginx's 502/504) are the proxy's to count, not ours.
SERVER_ERROR_STATUSES: Final = ("500", "503")


def initialise_http_series(routes: Iterable[object], excluded_paths: frozenset[str]) -> int:
    """Create, at zero, the duration series an alert reads before its first event; the number created.

    `routes` are the app's routes (FastAPI's APIRoute: `path_format`, `methods`, `status_code`).
    Prometheus's `rate()` and `increase()` need two samples of a series: a series born at its
    first error (value 1) shows no increase, so the first 5xx of every route of a new pod went
    unseen by every error-ratio rule and alert (sparse errors never counted at all). Created
    here: for each route and method it serves (HEAD wherever GET), its success status and every
    5xx in SERVER_ERROR_STATUSES; for requests no route matched (the rate limiter and the body
    limits answer before routing) the 5xx for every method. 4xx are not created (they spend no
    error budget; a first 404 is missing from the latency and throughput rates until its
    second). About 60 children of 19 series each for the example domain.
    """
    wanted: set[tuple[str, str, str]] = set()
    for route in routes:
        path = getattr(route, "path_format", None)
        methods = set(getattr(route, "methods", None) or ())
        if not isinstance(path, str) or path in excluded_paths:
            continue
        success = str(getattr(route, "status_code", None) or 200)
        for method in (methods | ({"HEAD"} if "GET" in methods else set())) & _KNOWN_METHODS:
            for status in (success, *SERVER_ERROR_STATUSES):
                wanted.add((path, method, status))
    for method in (*_KNOWN_METHODS, "_OTHER"):
        for status in SERVER_ERROR_STATUSES:
            wanted.add((UNMATCHED, method, status))
    for labels in wanted:
        HTTP_DURATION.labels(*labels)
    return len(wanted)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else UNMATCHED


# Saturation: is the pod's one event loop keeping up, and is the pool big enough?
EVENT_LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How late the event loop ran a timer that should have fired at once: CPU-bound or blocking code shows here.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_POOL_CONNECTIONS = Gauge("db_pool_connections", "asyncpg pool connections by state.", ["state"])
DB_POOL_ACQUIRE = Histogram(
    "db_pool_acquire_seconds",
    "Time waiting for a pool connection (503 past DB_POOL_ACQUIRE_TIMEOUT_SECONDS).",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


DEPENDENCY_CALL_DURATION = Histogram(
    "dependency_call_duration_seconds",
    "Calls to PostgreSQL (per statement, by SQL verb) and Redis (by operation), successful or not.",
    ["dependency", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
_SQL_VERBS: Final = frozenset({"select", "insert", "update", "delete", "with", "begin", "commit", "rollback", "set"})
_POSTGRES_CALLS = {verb: DEPENDENCY_CALL_DURATION.labels("postgres", verb) for verb in (*_SQL_VERBS, "other")}


def _record_query(query: asyncpg.connection.LoggedQuery) -> None:
    words = query.query.lstrip()[:10].split(None, 1)
    verb = words[0].lower() if words else "other"
    verb = verb if verb in _SQL_VERBS else "other"
    _POSTGRES_CALLS[verb].observe(query.elapsed)
    if tracing.enabled and tracing.recording_parent():  # asyncpg calls us in the statement's context
        tracing.record_client_span(
            f"postgres {verb.upper()}",
            query.elapsed,
            {"db.system.name": "postgresql", "db.operation.name": verb.upper(), "db.query.text": query.query[:2000]},
            query.exception,
        )


async def instrument_connection(conn: asyncpg.Connection) -> None:
    """asyncpg pool `init`: time every statement on this connection (asyncpg's query logger)."""
    conn.add_query_logger(_record_query)


async def watch_event_loop(interval_seconds: float = 0.25) -> None:
    """Run for the life of the process: sleep, then record how late the wake-up came."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval_seconds
        await asyncio.sleep(interval_seconds)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - expected))


def instrument_pool(pool: asyncpg.Pool) -> None:
    """Pool gauges, read when Prometheus scrapes (from the metrics thread: plain integer reads)."""
    DB_POOL_CONNECTIONS.labels("max").set_function(pool.get_max_size)
    DB_POOL_CONNECTIONS.labels("open").set_function(pool.get_size)
    DB_POOL_CONNECTIONS.labels("idle").set_function(pool.get_idle_size)
    DB_POOL_CONNECTIONS.labels("in_use").set_function(lambda: pool.get_size() - pool.get_idle_size())


JWKS_FETCHES = Counter(
    "oidc_jwks_fetches_total",
    "Fetches of the OpenID issuer's signing keys (JWKS), by outcome: fetched or failed (old keys kept).",
    ["outcome"],
)
TOKEN_REJECTIONS = Counter(
    "auth_token_rejections_total",
    "Access tokens refused (answered 401), by reason: malformed, too_large, algorithm, unknown_key, signature, "
    "expired, not_yet_valid, issuer, audience, invalid.",
    ["reason"],
)
