"""Rate limits counted in Redis, so they hold across every pod: per API key, else per client IP.

Why not slowapi: its storage calls (`Limiter.hit` through the `limits`
library) are synchronous, so with Redis storage every request would block the
pod's only event loop on a network round trip; and its ASGI middleware sends
the response start again on streamed bodies (laurentS/slowapi#249, #260),
which would break the CSV export. (It does build a fresh responder per
request today, so shared per-request state is no longer a reason.)
This is the same fixed-window algorithm as slowapi's default, done with one
async round trip (a Lua INCRBY + EXPIRE) on the app's own Redis client, shared
by all the requests for one counter that arrive in the same event-loop turn.

If Redis is unavailable the limiter fails open by default
(RATE_LIMIT_FAIL_OPEN): requests are served unlimited, counted in
`rate_limit_decisions_total{decision="store_unavailable"}` and logged; set it
to false to answer 503 instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.auth import KeyRing, bearer_token
from service.config import Rate
from service.errors import ServiceUnavailable, TooManyRequests
from service.metrics import DEPENDENCY_CALL_DURATION, DEPENDENCY_ERRORS, RATE_LIMIT_DECISIONS
from service.resilience import CircuitBreaker

logger = logging.getLogger(__name__)

_COUNT_IN_WINDOW: Final = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_ALLOWED, _REJECTED, _SKIPPED = (RATE_LIMIT_DECISIONS.labels(d) for d in ("allowed", "rejected", "store_unavailable"))
_REDIS_CALL = DEPENDENCY_CALL_DURATION.labels("redis", "rate_limit")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_seconds).encode()),
        ]


class _Batch:
    """Requests for one counter that arrived in the same event-loop turn: one round trip for all."""

    def __init__(self, future: asyncio.Future[int | None]) -> None:
        self.future = future
        self.size = 0


class RateLimiter:
    def __init__(self, client: redis.Redis, breaker: CircuitBreaker, namespace: str) -> None:
        self.breaker = breaker
        self.namespace = namespace
        self._count = client.register_script(_COUNT_IN_WINDOW)
        self._last_warning = 0.0
        self._batches: dict[str, _Batch] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def hit(self, identity: str, rate: Rate, now: float | None = None) -> Decision | None:
        """Count one request; None when the counter store is unavailable.

        Concurrent requests for the same counter share one INCRBY: each learns its
        exact position in the window's sequence, so the limit is as exact as with
        one INCR each, at a fraction of the round trips under load.
        """
        now = time.time() if now is None else now
        window = int(now // rate.period_seconds)
        key = f"{self.namespace}:rl:{identity}:{rate.period_seconds}:{window}"
        batch = self._batches.get(key)
        if batch is None:
            if not self.breaker.allow():
                return None
            batch = self._batches[key] = _Batch(asyncio.get_running_loop().create_future())
            flush = asyncio.create_task(self._flush(key, batch, rate.period_seconds + 1, now))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        position = batch.size
        batch.size += 1
        total = await asyncio.shield(batch.future)
        if total is None:
            return None
        count = total - batch.size + position + 1
        reset = math.ceil((window + 1) * rate.period_seconds - now)
        return Decision(count <= rate.count, rate.count, max(0, rate.count - count), max(reset, 1))

    async def _flush(self, key: str, batch: _Batch, ttl_seconds: int, now: float) -> None:
        total: int | None = None
        try:
            await asyncio.sleep(0)  # let the requests already scheduled in this turn join the batch
            self._close(key, batch)
            started = time.perf_counter()
            try:
                total = int(await self._count(keys=[key], args=[ttl_seconds, batch.size]))
            finally:
                elapsed = time.perf_counter() - started
                _REDIS_CALL.observe(elapsed)
                if tracing.enabled and tracing.recording_parent():
                    tracing.record_client_span("redis rate_limit", elapsed, {"db.system.name": "redis"})
            self.breaker.success()
        except (RedisError, OSError) as error:
            self.breaker.failure()
            DEPENDENCY_ERRORS.labels("redis", "rate_limit").inc()
            if now - self._last_warning > 10:  # one line per 10 s, not one per request
                self._last_warning = now
                logger.warning("rate limit store unavailable", extra={"error": repr(error)})
        finally:
            # Whatever happened (even cancellation at shutdown), nobody waits forever.
            self._close(key, batch)
            if not batch.future.done():
                batch.future.set_result(total)

    def _close(self, key: str, batch: _Batch) -> None:
        """Later requests start a new batch (only if this one is still the open one)."""
        if self._batches.get(key) is batch:
            del self._batches[key]


class RateLimitMiddleware:
    """Limits requests under /v1/: `reads` for GET/HEAD/OPTIONS, `writes` for the rest."""

    def __init__(self, app: ASGIApp, *, reads: Rate, writes: Rate, fail_open: bool) -> None:
        self.app = app
        self.reads = reads
        self.writes = writes
        self.fail_open = fail_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        limiter: RateLimiter | None = scope["state"].get("limiter")
        if limiter is None:
            await self.app(scope, receive, send)
            return

        safe = scope["method"] in _SAFE_METHODS
        decision = await limiter.hit(f"{_identity(scope)}:{'r' if safe else 'w'}", self.reads if safe else self.writes)
        if decision is None:
            _SKIPPED.inc()
            if not self.fail_open:
                await ServiceUnavailable("Rate limiting is unavailable; retry shortly.").to_response()(
                    scope, receive, send
                )
                return
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            _REJECTED.inc()
            rejection = TooManyRequests(
                f"Limit of {decision.limit} requests per window reached; retry in {decision.reset_seconds} s.",
                headers={"Retry-After": str(decision.reset_seconds)},
            ).to_response()
            rejection.raw_headers.extend(decision.headers())
            await rejection(scope, receive, send)
            return
        _ALLOWED.inc()
        extra = decision.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _identity(scope: Scope) -> str:
    """The API key's name when a valid key is presented, else the client address.

    Only a key that authenticates counts: otherwise anyone could dodge the
    per-IP limit by sending a new made-up key with every request. The client
    address is the proxy-resolved one (see TRUSTED_PROXIES).
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            keys: KeyRing = scope["state"]["keys"]
            principal = keys.authenticate(token) if token else None
            if principal is not None:
                return f"key:{principal.name}"
            break
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"
