"""Our API without its HTTP metrics middleware, to measure what the middleware costs.

    gunicorn -c python:service.gunicorn_conf 'bench.peers.observability_off:without_http_metrics()'

A benchmark peer only: the service has no switch for it, on purpose.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.app import create_app
from service.metrics import HttpMetricsMiddleware


def without_http_metrics() -> FastAPI:
    app = create_app()
    # The middleware stack is built on the first request, from this list.
    app.user_middleware = [m for m in app.user_middleware if getattr(m, "cls", None) is not HttpMetricsMiddleware]
    return app
