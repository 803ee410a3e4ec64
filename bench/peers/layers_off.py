"""Our API with some of its middleware layers taken out, to measure what each costs (bench/request_path.py).

    BENCH_LAYERS_OFF=metrics,budget gunicorn -c python:service.gunicorn_conf 'bench.peers.layers_off:create_app()'

Layers: `context` (request id, security headers, access line, 500 handling),
`metrics` (HTTP RED metrics), `limits` (414/431/413), `ratelimit`, `budget`
(REQUEST_TIMEOUT_SECONDS). A benchmark peer only: the service has no switch
for these, on purpose; everything else (cache, routing, tracing hooks) is the
service as it ships.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from service.app import create_app as create_service_app
from service.metrics import HttpMetricsMiddleware
from service.middleware import RequestBudgetMiddleware, RequestContextMiddleware, RequestLimitsMiddleware
from service.ratelimit import RateLimitMiddleware

LAYERS: dict[str, type] = {
    "context": RequestContextMiddleware,
    "metrics": HttpMetricsMiddleware,
    "limits": RequestLimitsMiddleware,
    "ratelimit": RateLimitMiddleware,
    "budget": RequestBudgetMiddleware,
}


def create_app() -> FastAPI:
    off = {name.strip() for name in os.environ.get("BENCH_LAYERS_OFF", "").split(",") if name.strip()}
    unknown = off - LAYERS.keys()
    if unknown:
        raise SystemExit(f"BENCH_LAYERS_OFF: unknown layers {sorted(unknown)}; known: {sorted(LAYERS)}")
    app = create_service_app()
    removed = {LAYERS[name] for name in off}
    # The middleware stack is built on the first request, from this list.
    app.user_middleware = [m for m in app.user_middleware if getattr(m, "cls", None) not in removed]
    return app
