"""Gunicorn settings, derived from the same `Settings` the app reads.

    gunicorn -c python:service.gunicorn_conf 'service.app:create_app()'

One worker process per pod (Settings refuses any other WEB_CONCURRENCY): Kubernetes
scales with replicas, metrics need no multiprocess mode, and a CPU request
maps 1:1 to the event loop. An invalid environment stops the master here,
before any worker forks, with one line per bad variable.
"""

from typing import Any

from service.config import load_settings
from service.logging import logging_config, start_background_logging, stop_background_logging

_settings = load_settings()

wsgi_app = "service.app:create_app()"
bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.web_concurrency
worker_class = "service.server.DrainingUvicornWorker"
proc_name = _settings.service_name

# Idle keep-alive outlives the proxy's upstream keep-alive (nginx: 60 s), so the
# proxy always closes first and never reuses a connection we are closing.
keepalive = _settings.keepalive_seconds
# SIGTERM -> drain (readyz 503) -> stop accepting -> finish in-flight -> close pools.
# The pod's terminationGracePeriodSeconds must exceed preStop sleep + this.
graceful_timeout = _settings.graceful_timeout_seconds
# A worker whose event loop stops answering gunicorn's heartbeat this long is killed.
timeout = _settings.worker_timeout_seconds
# Recycle workers now and then, with jitter so replicas do not restart together. The worker
# enforces the limit itself and closes its connections first (service/server.py), as on SIGTERM.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
# Only honoured by gunicorn's own parsers; the uvicorn worker parses HTTP itself, so
# service.middleware.RequestLimitsMiddleware enforces the same limits in the app.
limit_request_line = min(_settings.max_request_line_bytes, 8190)
limit_request_fields = min(_settings.max_header_count, 32768)
limit_request_field_size = min(_settings.max_header_bytes, 8190)
# The heartbeat file lives in memory and no control socket is written to $HOME:
# both work with a read-only root filesystem.
worker_tmp_dir = "/dev/shm"  # noqa: S108 - a tmpfs every Linux container has
control_socket_disable = True

accesslog = None
logconfig_dict = logging_config(_settings.log_level.value)


# Log lines are written by a thread in the worker (service/logging.py), never by its event
# loop. Threads do not survive fork, so the worker starts its own; on the way out it writes
# whatever is still queued (gunicorn calls worker_exit in the worker, after it stopped serving).
def post_fork(server: Any, worker: Any) -> None:
    start_background_logging()


def worker_exit(server: Any, worker: Any) -> None:
    stop_background_logging()
