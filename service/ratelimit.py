"""Rate limits that hold across every pod, without a Redis round trip per request: per API key, else per IP.

The algorithm is a fixed window counted in Redis (key `<namespace>:rl:<identity>:<period>:<window>`,
one Lua INCRBY + EXPIRE), as before; what changed is *when* a request pays for it.

- **Far from the limit: counted locally.** Each pod keeps, per counter, the
  window's global count as Redis last reported it (`known`) and the requests it
  admitted since then that Redis has not yet confirmed (`unconfirmed`: pending
  plus in flight). A request is admitted without any I/O while
  `unconfirmed < B` and `known + unconfirmed + 1 <= limit - B`, where the local
  budget is `B = floor(limit x RATE_LIMIT_LOCAL_SHARE)` (default 1 %: 12 of
  1200/minute). A background task reconciles: every `RATE_LIMIT_SYNC_SECONDS`
  (and at once when a counter is new or has used half its budget) it sends every
  counter's pending delta in one pipelined round trip (INCRBY delta) and reads
  the global count back.
- **Near the limit: exact.** Past that point (or when `B` is 0, i.e. limits under
  100 per window at the default share) every request waits for its INCRBY, as
  before; requests of one event-loop turn for the same counter share one round
  trip and each learns its exact position in the window.

**The bound, across pods.** Within one window, the requests admitted by all
pods together number at most `limit + pods x B`. Why: an exact admission
needs its position in Redis to be <= limit, so only local admissions can land
past it; a pod admits locally only while its unconfirmed requests are fewer
than B, and stops for the rest of the window as soon as any of its round trips
reports a count past `limit - B`. Every request of a pod that lands in Redis
after the limit was crossed was therefore unconfirmed at one same instant
(just before that report), so there are fewer than B + 1 of them per pod.
The bound holds whatever the sync interval or the network delay; the interval
only decides how stale the headers are. Below the limit nothing is lost:
requests are refused only once Redis counts more than `limit`, all admitted
but the refused ones, so a client always gets at least `limit` requests.
tests/integration/test_ratelimit.py (two limiters) and tests/e2e/test_request_path.py
(two gunicorn pods, one client) check `limit <= admitted <= limit + 2B`.

**Whose clock.** A window is `floor(t / period)` of Redis's clock as every pod reads it
(service/redisclock.py: `TIME`, timed with the pod's monotonic clock), not of the pod's wall
clock: a pod 30 s ahead used to count under the next minute's key while its peers counted
under this one's, and the bound doubled (240 writes admitted of 120). Pods now agree on
window boundaries to within a few milliseconds whatever their wall clocks say;
tests/e2e/test_clock_skew.py runs two pods, one with its wall clock moved.

**Headers.** `X-RateLimit-Limit` is exact; `-Reset` is the window's end in
seconds (exact); `-Remaining` is exact near the limit and, far from it, this
pod's estimate: it misses what other pods admitted since this pod's last sync
(at most one sync interval of their traffic, and at most B each). A 429 adds
`Retry-After` = `-Reset`.

**Redis down.** Local admission stops while the Redis breaker is open; the
exact path then has no store and the limiter fails open by default
(RATE_LIMIT_FAIL_OPEN): requests are served unlimited, counted in
`rate_limit_decisions_total{decision="store_unavailable"}` and logged at most
every 10 s; set it to false to answer 503 instead. Unsent deltas are kept and
sent when Redis answers again.

**Why not a library** (checked November 2026): slowapi 0.1.10 calls the
`limits` library synchronously (its oldest open issue, laurentS/slowapi#3, is
"convert the code to async"), so with Redis storage every request blocks the
pod's only event loop on a round trip, and its ASGI middleware sends the
response start again on streamed bodies (#249, #260), which would break the CSV
export. `limits` 5.8 has an asyncio API (`limits.aio`, `async+redis://`), but
every `hit` is still one round trip to the store: it has no local counting with
deferred reconciliation. aiolimiter is an in-process leaky bucket (nothing
shared across pods), and redis-rate-limiters (0.5) is a Redis token bucket /
semaphore that waits for capacity instead of refusing, again one round trip per
acquire. None keeps the request path free of I/O far from the limit, so this
is ours, on the app's own Redis client and breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Final, NamedTuple

import redis.asyncio as redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, bearer_token
from service.config import Rate
from service.errors import ServiceUnavailable, TooManyRequests
from service.metrics import RATE_LIMIT_DECISIONS
from service.oidc import InvalidToken, IssuerUnavailable, KeyNotFound, TokenVerifier, looks_like_jwt
from service.resilience import CircuitBreaker, CircuitOpen, DependencyAttempt, DependencyCall

logger = logging.getLogger(__name__)

_COUNT_IN_WINDOW: Final = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_ALLOWED, _REJECTED, _SKIPPED = (RATE_LIMIT_DECISIONS.labels(d) for d in ("allowed", "rejected", "store_unavailable"))
_REDIS_FAILURES: Final = (RedisError, OSError)
DEFAULT_LOCAL_SHARE: Final = 0.01
DEFAULT_SYNC_SECONDS: Final = 0.5
# Counters are kept until their window ends; past this many, idle ones far from their limit are
# forgotten early (about 200 bytes each). A forgotten counter starts again from "unknown".
MAX_IDLE_COUNTERS: Final = 100_000


class Decision(NamedTuple):
    """One request's verdict: allowed or not, the limit, requests left and seconds until the window resets.

    A named tuple: made on every request, and a frozen dataclass's `__init__` costs four `object.__setattr__`.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"%d" % self.remaining),
            (b"x-ratelimit-reset", b"%d" % self.reset_seconds),
        ]


class _Counter:
    """This pod's view of one window's counter."""

    __slots__ = ("budget", "ends_at", "inflight", "key", "known", "limit", "pending", "ttl_seconds", "used")

    def __init__(self, key: str, limit: int, budget: int, ends_at: float, ttl_seconds: int) -> None:
        self.key = key  # the window's Redis key
        self.limit = limit
        self.budget = budget  # B: requests this pod may admit that Redis has not confirmed
        self.ends_at = ends_at  # epoch seconds: the window's end
        self.ttl_seconds = ttl_seconds
        self.known: int | None = None  # the window's global count as Redis last reported it
        self.pending = 0  # admitted here, not sent yet
        self.inflight = 0  # admitted here, sent, not confirmed yet
        self.used = False  # a request since the last sync

    @property
    def near_limit(self) -> bool:
        """Past `limit - B` in this pod's view: every request is decided by Redis from now on."""
        return (self.known or 0) + self.pending + self.inflight + 1 > self.limit - self.budget


class _Batch:
    """Requests for one counter that arrived in the same event-loop turn: one round trip for all."""

    def __init__(self, future: asyncio.Future[int | None]) -> None:
        self.future = future
        self.size = 0


class RateLimiter:
    """Fixed-window counters in Redis, counted locally far from the limit (see the module docstring).

    `local_share` is RATE_LIMIT_LOCAL_SHARE (0 makes every decision exact);
    `sync_seconds` is RATE_LIMIT_SYNC_SECONDS. Call `start()` once the event
    loop runs (it reconciles local counts in a task) and `close()` at shutdown
    (it stops that task and sends what is pending).
    """

    def __init__(
        self,
        client: redis.Redis,
        breaker: CircuitBreaker,
        namespace: str,
        *,
        local_share: float = DEFAULT_LOCAL_SHARE,
        sync_seconds: float = DEFAULT_SYNC_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        # Which window a request falls in: Redis's clock (RedisClock.now) in the app, so pods
        # whose wall clocks disagree still count under the same keys (see the module docstring).
        self.clock = clock
        self.breaker = breaker
        self.namespace = namespace
        self.local_share = local_share
        self.sync_seconds = sync_seconds
        self._count = client.register_script(_COUNT_IN_WINDOW)
        # Breaker, dependency_errors_total, dependency_call_duration_seconds and the client span,
        # as for every other Redis and PostgreSQL call (service/resilience.py).
        self._redis = DependencyCall("redis", "rate_limit", breaker, _REDIS_FAILURES)
        self._last_warning = 0.0
        self._batches: dict[str, _Batch] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        # By (identity, period, window): a tuple is cheaper to hash than the Redis key is to format.
        self._counters: dict[tuple[str, int, int], _Counter] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._reconciler: asyncio.Task[None] | None = None

    def _counter(self, identity: str, rate: Rate, now: float) -> _Counter:
        period = rate.period_seconds
        window = int(now // period)
        counter = self._counters.get((identity, period, window))
        if counter is None:
            counter = self._counters[identity, period, window] = _Counter(
                f"{self.namespace}:rl:{identity}:{period}:{window}",
                rate.count,
                int(rate.count * self.local_share),
                (window + 1) * period,
                period + 1,
            )
        counter.used = True
        return counter

    def admit_locally(self, identity: str, rate: Rate, now: float | None = None) -> Decision | None:
        """Admit one request without I/O if the counter is far from its limit; None means: ask `hit`.

        Never refuses: a refusal is always decided by Redis.
        """
        now = self.clock() if now is None else now
        counter = self._counter(identity, rate, now)
        unconfirmed = counter.pending + counter.inflight
        # (counter.near_limit, inline: this runs on every request)
        near_limit = (counter.known or 0) + unconfirmed + 1 > counter.limit - counter.budget
        if unconfirmed >= counter.budget or near_limit or self.breaker.is_open:
            return None
        counter.pending += 1
        if counter.known is None or 2 * counter.pending >= counter.budget:
            self._wakeup.set()  # learn the global count, or send the deltas, soon
        count = (counter.known or 0) + unconfirmed + 1
        return Decision(True, rate.count, rate.count - count, max(math.ceil(counter.ends_at - now), 1))

    async def hit(self, identity: str, rate: Rate, now: float | None = None) -> Decision | None:
        """Count one request (locally if far from the limit); None when the counter store is unavailable.

        Near the limit, concurrent requests for the same counter share one INCRBY
        (which also carries this pod's pending local count): each learns its exact
        position in the window's sequence, so the limit is as exact as with one
        INCR each, at a fraction of the round trips under load.
        """
        now = self.clock() if now is None else now
        local = self.admit_locally(identity, rate, now)
        if local is not None:
            return local
        counter = self._counter(identity, rate, now)
        key = counter.key
        batch = self._batches.get(key)
        if batch is None:
            try:
                attempt = self._redis()
            except CircuitOpen:
                return None
            batch = self._batches[key] = _Batch(asyncio.get_running_loop().create_future())
            flush = asyncio.create_task(self._flush(key, counter, batch, attempt, now))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        position = batch.size
        batch.size += 1
        total = await asyncio.shield(batch.future)
        if total is None:
            return None
        count = total - batch.size + position + 1
        reset = math.ceil(counter.ends_at - now)
        return Decision(count <= rate.count, rate.count, max(0, rate.count - count), max(reset, 1))

    async def _flush(self, key: str, counter: _Counter, batch: _Batch, attempt: DependencyAttempt, now: float) -> None:
        total: int | None = None
        carried = 0
        try:
            await asyncio.sleep(0)  # let the requests already scheduled in this turn join the batch
            self._close(key, batch)
            # This pod's pending local admissions ride along, counted before the batch.
            carried, counter.pending = counter.pending, 0
            counter.inflight += carried
            with attempt:
                total = int(await self._count(keys=[key], args=[counter.ttl_seconds, carried + batch.size]))
            counter.known = max(counter.known or 0, total)
        except _REDIS_FAILURES as error:
            counter.pending += carried  # not counted in Redis: send it again later
            self._warn(error, now)
        finally:
            counter.inflight -= carried
            # Whatever happened (even cancellation at shutdown), nobody waits forever.
            self._close(key, batch)
            if not batch.future.done():
                batch.future.set_result(total)

    async def sync(self, now: float | None = None) -> None:
        """One reconciliation: send every pending delta and read the global counts back, in one round trip.

        Also forgets counters whose window ended and, past MAX_IDLE_COUNTERS, idle
        counters far from their limit (a pod must remember a counter near its
        limit until the window ends: that memory is what the bound rests on).
        """
        now = self.clock() if now is None else now
        due: list[tuple[str, _Counter, int]] = []
        for index, counter in list(self._counters.items()):
            unconfirmed = counter.pending + counter.inflight
            if counter.pending or (counter.used and counter.budget and counter.ends_at > now):
                due.append((counter.key, counter, counter.pending))
            elif not unconfirmed and (
                counter.ends_at <= now or (len(self._counters) > MAX_IDLE_COUNTERS and not counter.near_limit)
            ):
                del self._counters[index]
            counter.used = False
        if not due:
            return
        try:
            attempt = self._redis()
        except CircuitOpen:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, counter, delta in due:
            counter.pending -= delta
            counter.inflight += delta
            await self._count(keys=[key], args=[counter.ttl_seconds, delta], client=pipe)
        try:
            with attempt:
                totals = await pipe.execute()
        except _REDIS_FAILURES as error:
            for _, counter, delta in due:
                counter.pending += delta
            self._warn(error, now)
            return
        finally:
            for _, counter, delta in due:
                counter.inflight -= delta
        for (_, counter, _), total in zip(due, totals, strict=True):
            counter.known = max(counter.known or 0, int(total))

    def start(self) -> None:
        """Start reconciling in the background: every `sync_seconds`, or sooner when a counter asks."""
        if self._reconciler is None:
            self._reconciler = asyncio.create_task(self._run(), name="rate-limit-sync")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # A timer sets the event, rather than a timeout around the wait: nothing here ever
            # has to tell a timeout from a cancellation (on 3.11 that can swallow a cancel).
            timer = loop.call_later(self.sync_seconds, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()
            self._wakeup.clear()
            try:
                await self.sync()
            except Exception:  # never let the reconciler die: the next turn retries
                logger.exception("rate limit sync failed")

    async def close(self) -> None:
        """At shutdown: stop reconciling, then send what this pod admitted but Redis has not counted yet."""
        self._stopping = True
        self._wakeup.set()
        if self._reconciler is not None:
            with contextlib.suppress(Exception):
                await self._reconciler
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.sync()

    def _warn(self, error: Exception, now: float) -> None:
        """The breaker and the error counter already know (DependencyCall); the log hears of it once per 10 s."""
        if now - self._last_warning > 10:  # one line per 10 s, not one per request
            self._last_warning = now
            logger.warning("rate limit store unavailable", extra={"error": repr(error)})

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
        identity = _identity(scope) + (":r" if safe else ":w")
        rate = self.reads if safe else self.writes
        # Far from the limit this is a dictionary lookup and two comparisons: no await.
        decision = limiter.admit_locally(identity, rate) or await limiter.hit(identity, rate)
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
    """The API key's name or the access token's subject when the credential is valid, else the client address.

    Only a credential that authenticates counts: otherwise anyone could dodge the
    per-IP limit by sending a new made-up key with every request. A token is
    checked without I/O (a token whose key must first be fetched counts by address).
    The client address is the proxy-resolved one (see TRUSTED_PROXIES).
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            if token and looks_like_jwt(token):
                verifier: TokenVerifier | None = scope["state"]["tokens"]
                with contextlib.suppress(InvalidToken, KeyNotFound, IssuerUnavailable):  # the route answers those
                    if verifier is not None:
                        return verifier.verify(token).name
                break
            keys: KeyRing = scope["state"]["keys"]
            principal = keys.authenticate(token) if token else None
            if principal is not None:
                return f"key:{principal.name}"
            break
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"
