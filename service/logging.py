"""JSON-lines logging on stdout, with the request id on every line, written off the event loop.

The request id lives in a context variable set by the request middleware;
asyncio copies context into each task, so every log line written while
serving a request (including from libraries) carries it.

In the API's gunicorn worker, `start_background_logging()` (a gunicorn
`post_fork` hook, service/gunicorn_conf.py) puts one bounded buffer in front of
the stdout handler: a log call on the event loop formats the JSON line (with
its context: request id, job id, trace ids) and appends it (the stdlib
`QueueHandler` is the front, `ContextQueueHandler` says why the line is
formatted there); a thread takes what has accumulated every LOG_FLUSH_SECONDS
and writes it with one `write` per batch, so a slow pipe or a full disk stalls
that thread, never the requests. When the buffer is full (LOG_QUEUE_SIZE lines
behind) a record is dropped and counted, never waited for:
`access_log_lines_total{outcome="dropped"}` for access lines,
`log_records_dropped_total` for all. `stop_background_logging()` (gunicorn's
`worker_exit` hook, and at interpreter exit) writes everything still buffered
before the worker exits, so no line is lost at SIGTERM.

Why not the stdlib `QueueListener`: it wakes its thread for every record (a
`queue.Queue` put notifies a condition) and writes each line with its own
`write` and flush; at a few thousand requests per second on one core those
wake-ups and system calls cost more than the request they log
(bench/results/request_path.md, the access-line row). Polling a deque costs
the event loop one append per line and the thread one wake-up per interval.
`configure_logging` also turns off what LogRecord gathers and our JSON never
prints (caller's file and line, thread, process names), as the logging HOWTO's
"Optimization" section describes.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import logging
import logging.config
import sys
import threading
import time
from logging.handlers import QueueHandler
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
LOG_FLUSH_SECONDS: Final = 0.02
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

    _second: tuple[int, str] = (-1, "")  # replaced whole: the loop and the writer thread may both format

    def _timestamp(self, created: float) -> str:
        """RFC 3339 UTC with milliseconds; the seconds part is formatted once per second, not per line."""
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}Z"

    def entry(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        context: tuple[str | None, str | None, tuple[str, str] | None],
    ) -> dict[str, Any]:
        """The line's fixed fields, in order: ts, level, logger, msg, then request_id, job_id, trace_id, span_id."""
        entry: dict[str, Any] = {"ts": self._timestamp(created), "level": level, "logger": logger, "msg": message}
        request_id, job_id, ids = context
        if request_id is not None:
            entry["request_id"] = request_id
        if job_id is not None:
            entry["job_id"] = job_id
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        return entry

    def format(self, record: logging.LogRecord) -> str:
        # Context captured where the record was made (ContextQueueHandler), or read here when writing inline.
        context = getattr(record, "_context", None) or _context()
        entry = self.entry(record.created, record.levelname, record.name, record.getMessage(), context)
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
    """The event loop's side: format the line, enqueue it, never wait; a full buffer drops and counts.

    The line is formatted here, with the formatter of the stream handler behind
    the buffer (stdout's JsonFormatter), so the writer thread only joins lines
    and makes the `write` call, which releases the GIL. Formatting in the thread
    made it hold the GIL for a whole batch while the event loop, which gives
    the GIL up at every socket call, waited to get it back: under 32 busy
    connections the access line cost four times its formatting
    (bench/results/request_path.md). A record for another handler keeps its
    captured context and is formatted by the thread.
    """

    def __init__(self, buffer: _Buffer, line_formatter: logging.Formatter | None) -> None:
        super().__init__(buffer)  # type: ignore[arg-type]  # QueueHandler only calls put_nowait
        self.buffer = buffer
        self.line_formatter = line_formatter

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.__dict__["_context"] = _context()
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if not self.buffer.has_room(access=record.name == ACCESS_LOGGER):
            return
        if self.line_formatter is not None:
            with contextlib.suppress(Exception):  # the thread formats it again and reports the failure
                record.__dict__["_line"] = (self.line_formatter, self.line_formatter.format(record))
        self.buffer.records.append(record)


class _Buffer:
    """What the event loop appends to and the writer thread drains: a bounded deque (appends are thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Records, or lines already formatted (access lines, see log_access).
        self.records: collections.deque[logging.LogRecord | str] = collections.deque()

    def has_room(self, *, access: bool) -> bool:
        """Room for one more record? If not, the record is dropped here and counted (an access line twice)."""
        if len(self.records) < self.size:
            return True
        LOG_RECORDS_DROPPED.inc()
        if access:
            _DROPPED.inc()
        return False


class _Writer:
    """One thread that writes what the buffer holds every `interval` seconds, and all of it when stopped."""

    def __init__(self, buffer: _Buffer, handlers: list[logging.Handler], interval: float = LOG_FLUSH_SECONDS) -> None:
        self.buffer = buffer
        self.handlers = handlers
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        records = self.buffer.records
        while records:
            batch = [records.popleft() for _ in range(min(len(records), 1000))]
            for handler in self.handlers:
                if isinstance(handler, logging.StreamHandler):
                    _write_batch(handler, batch)
                else:  # any other handler gets one record at a time, as QueueListener would give it
                    for record in batch:
                        if isinstance(record, logging.LogRecord) and record.levelno >= handler.level:
                            handler.handle(record)


def _write_batch(handler: logging.StreamHandler[Any], batch: list[logging.LogRecord | str]) -> None:
    """Format each record (a failure is reported like StreamHandler.emit's) and write them with one call."""
    lines = []
    for record in batch:
        if isinstance(record, str):  # formatted by log_access, for this (the only) handler
            lines.append(record)
            continue
        if record.levelno < handler.level or not handler.filter(record):
            continue
        formatted = record.__dict__.get("_line")
        if formatted is not None and formatted[0] is handler.formatter:
            lines.append(formatted[1])
            continue
        try:
            lines.append(handler.format(record))
        except Exception:  # noqa: BLE001 - as Handler.emit does: logging never raises into the caller
            handler.handleError(record)
    if not lines:
        return
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write("\n".join(lines) + handler.terminator)
            handler.flush()
        except Exception:  # noqa: BLE001 - as above
            handler.handleError(next(r for r in batch if isinstance(r, logging.LogRecord)))


_writer: _Writer | None = None
_replaced: list[tuple[logging.Logger, list[logging.Handler]]] = []
_access = logging.getLogger(ACCESS_LOGGER)
# Set while access lines may skip the logging machinery (see log_access): the front, the buffer, the formatter.
_access_shortcut: tuple[ContextQueueHandler, _Buffer, JsonFormatter] | None = None


def log_access(fields: dict[str, Any]) -> None:
    """Log one access line (`msg` "request" with `fields`) on the `service.access` logger, at INFO.

    When the only place that line can go is our JSON stdout handler behind the
    buffer (the service's own configuration: no handler or filter on the way,
    nothing else behind the buffer), the line is built here and appended as
    text, the same JSON `access_logger.info("request", extra=fields)` would
    give: 2.6 us instead of 11.5 us for the LogRecord, the logger and handler
    calls and the generic formatter (bench/results/request_path.md). Otherwise
    it is exactly that call.
    """
    shortcut = _access_shortcut
    if shortcut is None or not _access.isEnabledFor(logging.INFO):
        _access.info("request", extra=fields)
        return
    front, buffer, formatter = shortcut
    root = logging.root
    if _access.handlers or len(root.handlers) != 1 or root.handlers[0] is not front:
        _access.info("request", extra=fields)  # reconfigured since: the general way
        return
    if not buffer.has_room(access=True):
        return
    entry = formatter.entry(time.time(), "INFO", ACCESS_LOGGER, "request", _context())
    entry.update(fields)
    buffer.records.append(orjson.dumps(entry, default=str).decode())
    _WRITTEN.inc()


def _shortcut_allowed(front: ContextQueueHandler, handlers: list[logging.Handler]) -> JsonFormatter | None:
    """log_access may build lines itself: nothing between the access logger and our one JSON stream handler."""
    if len(handlers) != 1 or not isinstance(handlers[0], logging.StreamHandler):
        return None
    stream = handlers[0]
    if stream.filters or stream.level > logging.INFO or not isinstance(stream.formatter, JsonFormatter):
        return None
    log: logging.Logger | None = _access
    while log is not None and log is not logging.root:
        if log.handlers or log.filters or not log.propagate:
            return None
        log = log.parent
    root = logging.root
    if root.filters or root.handlers != [front] or front.filters or front.level > logging.INFO:
        return None
    return stream.formatter


def _loggers() -> list[logging.Logger]:
    named = [item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)]
    return [logging.getLogger(), *named]


def start_background_logging(queue_size: int = LOG_QUEUE_SIZE, loggers: list[logging.Logger] | None = None) -> None:
    """Put the handlers of `loggers` (default: every logger) behind one buffer of `queue_size` records, written
    by one thread (idempotent).

    Call it in the process that serves, after any fork (a thread does not
    survive one): gunicorn's `post_fork` hook.
    """
    global _writer  # noqa: PLW0603 - one writer per process, like logging's own handlers
    if _writer is not None:
        return
    lean_log_records()
    loggers = _loggers() if loggers is None else loggers
    handlers: list[logging.Handler] = []
    for log in loggers:
        handlers += [h for h in log.handlers if h not in handlers]
    if not handlers:
        return
    buffer = _Buffer(queue_size)
    streams = [h.formatter for h in handlers if isinstance(h, logging.StreamHandler) and h.formatter is not None]
    front = ContextQueueHandler(buffer, streams[0] if streams else None)
    for log in loggers:
        if log.handlers:
            _replaced.append((log, log.handlers))
            log.handlers = [front]
    formatter = _shortcut_allowed(front, handlers)
    global _access_shortcut  # noqa: PLW0603 - set with the writer, cleared with it
    _access_shortcut = (front, buffer, formatter) if formatter is not None else None
    _writer = _Writer(buffer, handlers)
    _writer.start()
    logging.getLogger(__name__).info("logging in the background", extra={"access_shortcut": formatter is not None})
    atexit.register(stop_background_logging)


def stop_background_logging() -> None:
    """Write every buffered record, stop the thread and put the handlers back (idempotent)."""
    global _writer
    if _writer is None:
        return
    global _access_shortcut  # noqa: PLW0603
    _access_shortcut = None
    writer, _writer = _writer, None
    for log, handlers in _replaced:
        log.handlers = handlers  # records made from now on are written inline, after the buffered ones
    _replaced.clear()
    writer.stop()


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


def lean_log_records() -> None:
    """Stop gathering, for every record, what our JSON never prints (logging HOWTO, "Optimization")."""
    logging._srcfile = None  # the caller's file, line and function (a stack walk per record)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure_logging(level: str) -> None:
    lean_log_records()
    logging.config.dictConfig(logging_config(level))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
