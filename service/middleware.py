"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and costs a task per request).

- `RequestContextMiddleware`: takes `X-Request-ID` from the proxy or makes one,
  echoes it on the response, binds it to every log line, turns any unhandled
  exception into a logged traceback and a bare 500 problem, and writes one
  access line per request (probes excluded; fast successes sampled by
  ACCESS_LOG_SAMPLE_RATE). The line is formatted and written by a thread
  (service/logging.py), not by the event loop.
- `RequestBudgetMiddleware`: the whole request must reach its first response
  byte within REQUEST_TIMEOUT_SECONDS, or it is cancelled and answered 503.
- `HeadMiddleware`: HEAD is answered as GET without the body, on every route.
- `RequestLimitsMiddleware`: refuses over-long request lines (414), too many or
  too large headers (431) and bodies over the limit (413), whatever server or
  HTTP parser runs the app.
- `keep_connection_after_complete_response`: wraps the whole app (outside
  Starlette's own error layer); an error raised after the last byte of a
  response is logged, not passed to the server, which would close a
  connection the client already holds as reusable.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import slo, tracing
from service.config import Settings
from service.errors import PayloadTooLarge, ServiceUnavailable, problem_response
from service.logging import log_access, request_id_var, sampled_out
from service.metrics import CLIENT_CLOSED, route_template
from service.numbers import MAX_DIGITS

logger = logging.getLogger(__name__)

PROBE_PATHS: Final = frozenset({"/livez", "/readyz", "/startupz"})
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_ASCII_DIGITS: Final = re.compile(rb"[0-9]+")


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """Headers for every response of a JSON API that no browser should render or frame."""
    if not settings.security_headers:
        return []
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]
    if settings.hsts_max_age_seconds:
        headers.append((b"strict-transport-security", f"max-age={settings.hsts_max_age_seconds}".encode()))
    return headers


class AccessLogSampler:
    """Which access lines to write: every error and slow request, and `rate` of the fast successes.

    A fast success is a status below 400 answered within the SLO's P50 target
    (service/slo.toml); `rate` is ACCESS_LOG_SAMPLE_RATE (0..1). Skipped lines
    are counted (`access_log_lines_total{outcome="sampled_out"}`).
    """

    def __init__(self, rate: float, slow_seconds: float | None = None) -> None:
        self.rate = rate
        self.slow_seconds = slo.load().p50_target if slow_seconds is None else slow_seconds

    def keep(self, status: int, seconds: float) -> bool:
        if self.rate >= 1 or not 100 <= status < 400 or seconds >= self.slow_seconds:
            return True
        if random.random() < self.rate:  # noqa: S311 - sampling, not security
            return True
        sampled_out()
        return False


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        response_headers: list[tuple[bytes, bytes]] | None = None,
        access_log_sample_rate: float = 1.0,
    ) -> None:
        self.app = app
        self.response_headers = response_headers or []
        self.sampler = AccessLogSampler(access_log_sample_rate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or new_request_id()
        token = request_id_var.set(request_id)
        added = [(b"x-request-id", request_id.encode()), *self.response_headers]
        status = 0
        started = time.perf_counter()
        # The request's span: opened here so every layer and the access line below are inside it.
        span = span_token = None
        if tracing.enabled and scope["path"] not in PROBE_PATHS:
            span, span_token = tracing.start_request_span(scope["headers"], scope["method"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this request is cancelled: the client left, or shutdown
                status = status or CLIENT_CLOSED
                raise
            # A cancellation that leaked from another task (a shared future): an error like any other.
            logger.exception("unhandled cancellation", extra={"path": scope["path"]})
            status = await _answer_500(status, scope, receive, send_with_id)
        except Exception:
            # Handled here rather than in Starlette's outermost ServerErrorMiddleware so
            # the traceback is logged with the request id and the 500 carries the header.
            logger.exception("unhandled exception", extra={"path": scope["path"]})
            status = await _answer_500(status, scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if scope["path"] not in PROBE_PATHS and self.sampler.keep(status, elapsed):
                log_access(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": (scope.get("client") or ("", 0))[0],
                        "principal": scope.get("principal"),
                    }
                )
            if span is not None:
                tracing.end_request_span(span, span_token, route_template(scope), status or 500, scope["path"])
            request_id_var.reset(token)


async def _answer_500(status: int, scope: Scope, receive: Receive, send: Send) -> int:
    """A bare 500 problem if nothing was sent yet; the status the access log records either way."""
    if status == 0:
        await problem_response(500)(scope, receive, send)
    return 500  # (once started, the response was cut short: the client sees a broken stream)


def new_request_id() -> str:
    """32 lowercase hex digits (128 random bits), the shape `uuid4().hex` had.

    From `random` (Mersenne Twister, seeded from os.urandom and re-seeded in
    every forked worker) rather than `uuid.uuid4()`: a request id must be
    unique, not unpredictable, and uuid4's os.urandom call was 11 % of the
    worker's CPU time on a cache hit (bench/results/request_path_profile.md).
    """
    return f"{random.getrandbits(128):032x}"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            # Accept only ids that are safe to log and echo; otherwise make our own.
            return value.decode("ascii") if _VALID_REQUEST_ID.match(value) else None
    return None


async def keep_connection_after_complete_response(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`; an exception it raises once its response is complete is logged, not raised.

    uvicorn closes the connection of any request whose app raised after the response
    started. Once the last body message is sent, the client (nginx's upstream pool) holds
    the connection as idle and reusable, and sends its next request on it: closing it
    then resets that request, which nginx answers 502 (and never retries for a POST),
    and counts as a failure of the pod. Before the last byte, raising stays right: the
    response is cut short, and closing the connection is how the client learns it.
    """
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    complete = False

    async def send_and_note_the_end(message: Message) -> None:
        nonlocal complete
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete = True

    try:
        await app(scope, receive, send_and_note_the_end)
    except Exception:
        if not complete:
            raise
        logger.exception("error after the response was complete; its connection stays open")


class HeadMiddleware:
    """HEAD is GET without the body (RFC 9110 section 9.3.2), wherever GET is served.

    The route runs as GET (same status, same headers, Content-Length included);
    the body is dropped. Once the headers are out the exchange is over, so the
    route is told the client disconnected: a streamed body (the CSV export) is
    cancelled by Starlette at once instead of being produced in full. Every
    other layer sees the method HEAD, so logs and metrics say what was sent.

    The route gets a copy of the scope: the server reads `method` from the scope
    it passed in to frame the response, and a HEAD framed as a GET (headers
    promising a body that never comes) made uvicorn close the connection after
    it, under the next request nginx sent on it. What the inner layers record in
    their copy (the matched route, for the outer layers' logs and metrics) is
    copied back before each message goes out and when the route returns.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False
        as_get: Scope = {**scope, "method": "GET"}

        def record_inner_state() -> None:
            scope.update((key, value) for key, value in as_get.items() if key != "method")

        async def send_headers_only(message: Message) -> None:
            nonlocal answered
            record_inner_state()
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not answered:
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnect_once_answered() -> Message:
            return {"type": "http.disconnect"} if answered else await receive()

        try:
            await self.app(as_get, disconnect_once_answered, send_headers_only)
        finally:
            record_inner_state()


class RequestLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_request_line_bytes: int,
        max_header_count: int,
        max_header_bytes: int,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_request_line_bytes = max_request_line_bytes
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        if len(scope["raw_path"] or b"") + len(scope["query_string"]) > self.max_request_line_bytes:
            await problem_response(414, detail="The request line is too long.")(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_header_count or sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            await problem_response(431, detail="The request headers are too large.")(scope, receive, send)
            return

        limit = self.max_body_bytes
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                if not _ASCII_DIGITS.fullmatch(value):  # ASCII digits only: no sign, space or "²"
                    await problem_response(400, detail="Content-Length is not a number.")(scope, receive, send)
                    return
                if len(value) > MAX_DIGITS or int(value) > limit:  # (int() refuses over 4300 digits)
                    too_large = PayloadTooLarge(f"The request body exceeds {limit} bytes.")
                    await too_large.to_response()(scope, receive, send)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # Without Transfer-Encoding the body is Content-Length bytes, checked above, or
            # none at all (RFC 9112 section 6.3): nothing left to count.
            await self.app(scope, receive, send)
            return

        # Chunked bodies have no Content-Length: count as they arrive. Past the limit we
        # answer 413 ourselves and drop whatever the app sends afterwards (frameworks
        # turn an exception raised while reading the body into their own 400).
        received = 0
        started = rejected = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            started = True
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not rejected and not started:
                        rejected = True
                        too_large = PayloadTooLarge(f"The request body exceeds {limit} bytes.")
                        await too_large.to_response()(scope, receive, send)
                    raise PayloadTooLarge
            return message

        await self.app(scope, limited_receive, guarded_send)


class RequestBudgetMiddleware:
    """Cancel a request that has not started its response within `seconds`; answer 503.

    Once the response has started (a streaming export, say) the budget no longer
    applies: the per-statement timeouts bound each step of the stream.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        budget = asyncio.timeout(self.seconds)

        async def send_and_stop_the_clock(message: Message) -> None:
            if message["type"] == "http.response.start":
                budget.reschedule(None)
            await send(message)

        try:
            async with budget:
                await self.app(scope, receive, send_and_stop_the_clock)
        except TimeoutError:
            if not budget.expired():
                raise
            logger.warning("request budget exceeded", extra={"budget_seconds": self.seconds})
            exceeded = ServiceUnavailable(f"The request did not complete within {self.seconds:g} s; retry shortly.")
            await exceeded.to_response()(scope, receive, send)
