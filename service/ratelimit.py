"""Rate limits counted in Redis, so they hold across every pod: per API key, else per client IP.

Why not slowapi: its limit check (`Limiter.hit` through the `limits` library)
is synchronous, so with Redis storage every request would block the pod's
only event loop on a network round trip (laurentS/slowapi#3, #130), and its
ASGI middleware keeps per-request state on the shared middleware instance.
This is the same fixed-window algorithm as slowapi's default, done with one
async round trip (a Lua INCR + EXPIRE) on the app's own Redis client.

If Redis is unavailable the limiter fails open by default
(RATE_LIMIT_FAIL_OPEN): requests are served unlimited, counted in
`rate_limit_decisions_total{decision="store_unavailable"}` and logged; set it
to false to answer 503 instead.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, bearer_token
from service.config import Rate
from service.errors import ServiceUnavailable, TooManyRequests
from service.metrics import DEPENDENCY_ERRORS, RATE_LIMIT_DECISIONS
from service.resilience import CircuitBreaker

logger = logging.getLogger(__name__)

_COUNT_IN_WINDOW: Final = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


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


class RateLimiter:
    def __init__(self, client: redis.Redis, breaker: CircuitBreaker, namespace: str) -> None:
        self.breaker = breaker
        self.namespace = namespace
        self._count = client.register_script(_COUNT_IN_WINDOW)
        self._last_warning = 0.0

    async def hit(self, identity: str, rate: Rate, now: float | None = None) -> Decision | None:
        """Count one request; None when the counter store is unavailable."""
        now = time.time() if now is None else now
        window = int(now // rate.period_seconds)
        key = f"{self.namespace}:rl:{identity}:{rate.period_seconds}:{window}"
        if not self.breaker.allow():
            return None
        try:
            count = int(await self._count(keys=[key], args=[rate.period_seconds + 1]))
        except (RedisError, OSError) as error:
            self.breaker.failure()
            DEPENDENCY_ERRORS.labels("redis", "rate_limit").inc()
            if now - self._last_warning > 10:  # one line per 10 s, not one per request
                self._last_warning = now
                logger.warning("rate limit store unavailable", extra={"error": repr(error)})
            return None
        self.breaker.success()
        reset = math.ceil((window + 1) * rate.period_seconds - now)
        return Decision(count <= rate.count, rate.count, max(0, rate.count - count), max(reset, 1))


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
            RATE_LIMIT_DECISIONS.labels("store_unavailable").inc()
            if not self.fail_open:
                await ServiceUnavailable("Rate limiting is unavailable; retry shortly.").to_response()(
                    scope, receive, send
                )
                return
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            RATE_LIMIT_DECISIONS.labels("rejected").inc()
            rejection = TooManyRequests(
                f"Limit of {decision.limit} requests per window reached; retry in {decision.reset_seconds} s.",
                headers={"Retry-After": str(decision.reset_seconds)},
            ).to_response()
            rejection.raw_headers.extend(decision.headers())
            await rejection(scope, receive, send)
            return
        RATE_LIMIT_DECISIONS.labels("allowed").inc()
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
