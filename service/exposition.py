"""Serving the worker's Prometheus registry on METRICS_PORT, from a thread, beside the API port.

A gunicorn reload (HUP) starts the new worker while the old one still drains and still
holds the metrics port. Failing to bind would fail the new worker's boot, and gunicorn's
master exits when a worker fails to boot: a reload would kill the pod. So a busy port
is retried in the background: the old worker's last scrape stays its own, and the new
worker is scraped from the moment the old one lets go (Prometheus sees one counter
reset, as after any restart). Two workers never answer on the port at once, so a
scrape never mixes two processes' counters.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

logger = logging.getLogger(__name__)

# How often a busy port is tried again, and after how long a still-busy port is logged as an error
# (longer than any drain: then something other than this pod's previous worker holds it).
_RETRY_SECONDS = 0.2
_REPORT_AFTER_SECONDS = 120.0


def serve_metrics(port: int, host: str) -> Callable[[], None]:
    """Serve `/metrics` on `host:port` now, or as soon as the port is free; return the function that stops it.

    Raises OSError at once for any bind error other than "address in use" (a bad host, say).
    """
    stop = threading.Event()
    bound: list[WSGIServer] = []
    try:
        bound.append(start_http_server(port, addr=host)[0])
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        logger.warning("metrics port busy; serving it once it is free", extra={"port": port})
        threading.Thread(target=_bind_when_free, args=(port, host, stop, bound), daemon=True).start()

    def shutdown() -> None:
        stop.set()
        for server in bound:
            server.shutdown()
            server.server_close()

    return shutdown


def _bind_when_free(port: int, host: str, stop: threading.Event, bound: list[WSGIServer]) -> None:
    started = time.monotonic()
    reported = False
    while not stop.wait(_RETRY_SECONDS):
        try:
            server = start_http_server(port, addr=host)[0]
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                logger.exception("metrics port cannot be served", extra={"port": port})
                return
            if not reported and time.monotonic() - started > _REPORT_AFTER_SECONDS:
                reported = True
                logger.error("metrics port still busy: another process holds it", extra={"port": port})
            continue
        if stop.is_set():  # stopped while binding
            server.shutdown()
            server.server_close()
            return
        bound.append(server)
        logger.info("metrics port served", extra={"port": port, "waited_seconds": round(time.monotonic() - started, 1)})
        return
