"""JSON-lines logging on stdout, with the request id on every line, written off the event loop.

The request id lives in a context variable set by the request middleware;
asyncio copies context into each task, so every log line written while
serving a request (including from libraries) carries it.

In the API's gunicorn worker, `start_background_logging()` (a gunicorn
`post_fork` hook, service/gunicorn_conf.py) puts one queue in front of the
stdout handler: a log call on the event loop only captures the record and its
context (request id, job id, trace ids) and puts it on a bounded queue; a
thread formats it as JSON and writes it, so a slow pipe or a full disk stalls
that thread, never the requests. When the queue is full (LOG_QUEUE_SIZE lines
behind) a record is dropped and counted, never waited for:
`access_log_lines_total{outcome="dropped"}` for access lines,
`log_records_dropped_total` for all. `stop_background_logging()` (gunicorn's
`worker_exit` hook, and at interpreter exit) writes everything still queued
before the worker exits, so no line is lost at SIGTERM.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.config
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Final

import orjson
from prometheus_client import Counter

from service import tracing

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Set by the worker while it runs a job (with request_id_var restored from the job row),
# so a job's log lines join those of the request that created it.
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

ACCESS_LOGGER: Final = "service.access"
LOG_QUEUE_SIZE: Final = 10_000
ACCESS_LOG_LINES = Counter(
    "access_log_lines_total",
    "Access lines: written, sampled_out (a fast success skipped by ACCESS_LOG_SAMPLE_RATE), "
    "or dropped because the log queue was full.",
    ["outcome"],
)
LOG_RECORDS_DROPPED = Counter(
    "log_records_dropped_total", "Log records of any logger dropped because the log queue was full."
)
_WRITTEN, _SAMPLED_OUT, _DROPPED = (ACCESS_LOG_LINES.labels(o) for o in ("written", "sampled_out", "dropped"))


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Captured where the record was made (ContextQueueHandler), or read here when writing inline.
        request_id, job_id, ids = getattr(record, "_context", None) or _context()
        if request_id is not None:
            entry["request_id"] = request_id
        if job_id is not None:
            entry["job_id"] = job_id
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str).decode()
        if record.name == ACCESS_LOGGER:
            _WRITTEN.inc()
        return line


def _context() -> tuple[str | None, str | None, tuple[str, str] | None]:
    """The request id, job id and (trace id, span id) of the running code, read from context variables."""
    return request_id_var.get(), job_id_var.get(), tracing.current_trace_ids() if tracing.enabled else None


def sampled_out() -> None:
    """Count an access line the sampling skipped (ACCESS_LOG_SAMPLE_RATE)."""
    _SAMPLED_OUT.inc()


class ContextQueueHandler(QueueHandler):
    """The event loop's side: capture the record's context, enqueue it, never wait; a full queue drops and counts.

    Unlike the stdlib QueueHandler, it does not format the record here: the
    listener thread does (JsonFormatter), from the context captured now.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.__dict__["_context"] = _context()
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            LOG_RECORDS_DROPPED.inc()
            if record.name == ACCESS_LOGGER:
                _DROPPED.inc()


class _Listener(QueueListener):
    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]  # waits for room: the stop must arrive


_listener: _Listener | None = None
_replaced: list[tuple[logging.Logger, list[logging.Handler]]] = []


def _loggers() -> list[logging.Logger]:
    named = [item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)]
    return [logging.getLogger(), *named]


def start_background_logging(queue_size: int = LOG_QUEUE_SIZE, loggers: list[logging.Logger] | None = None) -> None:
    """Put the handlers of `loggers` (default: every logger) behind one queue of `queue_size` records, written
    by one thread (idempotent).

    Call it in the process that serves, after any fork (a thread does not
    survive one): gunicorn's `post_fork` hook.
    """
    global _listener  # noqa: PLW0603 - one listener per process, like logging's own handlers
    if _listener is not None:
        return
    loggers = _loggers() if loggers is None else loggers
    handlers: list[logging.Handler] = []
    for log in loggers:
        handlers += [h for h in log.handlers if h not in handlers]
    if not handlers:
        return
    records: queue.Queue[logging.LogRecord] = queue.Queue(queue_size)
    front = ContextQueueHandler(records)
    for log in loggers:
        if log.handlers:
            _replaced.append((log, log.handlers))
            log.handlers = [front]
    _listener = _Listener(records, *handlers, respect_handler_level=True)
    _listener.start()
    atexit.register(stop_background_logging)


def stop_background_logging() -> None:
    """Write every queued record, stop the thread and put the handlers back (idempotent)."""
    global _listener
    if _listener is None:
        return
    listener, _listener = _listener, None
    for log, handlers in _replaced:
        log.handlers = handlers  # records made from now on are written inline, after the queued ones
    _replaced.clear()
    listener.stop()


def logging_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` mapping; gunicorn uses it for its own loggers too."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": handler},
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # Access lines come from our middleware (which skips probes), not the server.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "gunicorn.error": {"handlers": ["stdout"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["stdout"], "level": level, "propagate": False},
        },
    }


def configure_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
