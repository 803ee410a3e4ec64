"""Two-level read-through cache of pre-serialised bytes: in-process L1, Redis L2.

The guarantee: once a write has answered, no read on any pod returns data
older than that write, through Redis outages, circuit-breaker states and lost
pub/sub messages.

- Every entry (L1 and L2) is stamped `<trust token>:<key version>`. A write
  bumps the key's version in Redis (and deletes L2, and publishes the key so
  pods drop L1 early) before it answers. Every read asks Redis for the trust
  token and the key's version in one MGET (the value too when L1 has none)
  and serves only an entry whose stamp matches. That round trip is the price
  of the guarantee on an L1 hit (about 0.1-0.3 ms on loopback; an L1 hit used
  to do no I/O); L1 still saves moving the value, and the request path may
  later share that round trip with the rate limiter's.
- Redis unreachable (or its breaker open): reads go to PostgreSQL; nothing is
  served from either level, since nothing can be validated.
- A write that cannot reach Redis records the key in PostgreSQL's
  `cache_debt` table, then waits out the trust lease (TRUST_SECONDS + skew)
  before answering. The trust token in Redis expires TRUST_SECONDS after the
  moment some pod last read `cache_debt` and found it empty, so by the time
  the write answers, every entry stamped before it is unusable (with the
  token gone, readers go to PostgreSQL). Each pod's keeper
  (`keep_trust`) reads the debt every TRUST_SECONDS / 4: empty, it extends
  the token; not empty, it bumps those keys' versions, deletes their values,
  starts a new token (all old stamps die) and deletes the debt it applied.
  Absolute expiry times (PXAT) make a command delayed in a frozen Redis
  harmless; pods' and Redis's clocks must agree within CLOCK_SKEW_SECONDS.
- Single flight: concurrent misses for one key in one process share one
  load, but only those that arrive before the leader's first I/O (the same
  event-loop turn): a request that arrives later may follow a write the
  leader's read predates. A waiter never inherits the leader's cancellation
  (its timeout, its client leaving): it loads again itself. Errors are shared.
- A reader that loaded from PostgreSQL fills L2 only if the token and the
  version are still those it saw before loading.
- Without PostgreSQL (and the token lapsed), an entry whose version is still
  the current one is served rather than a 503 ("stale if error"): only a
  write whose invalidation failed and whose debt was not yet applied could
  make that stale, which needs Redis and PostgreSQL to fail together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from service.db import UNAVAILABLE_ERRORS, Pool
from service.errors import ServiceUnavailable
from service.metrics import CACHE_REQUESTS, DEPENDENCY_ERRORS
from service.resilience import CircuitBreaker, CircuitOpen, DependencyCall

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Bound once: `.labels()` on every lookup would cost more than an L1 hit itself.
_L1_HIT, _L1_MISS = CACHE_REQUESTS.labels("l1", "hit"), CACHE_REQUESTS.labels("l1", "miss")
_L2_HIT, _L2_MISS = CACHE_REQUESTS.labels("l2", "hit"), CACHE_REQUESTS.labels("l2", "miss")
_REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
_REDIS_OPERATIONS = ("get", "fill", "invalidate", "trust")

_DOWN: tuple[type[BaseException], ...] = (ServiceUnavailable, *UNAVAILABLE_ERRORS)
_DATABASE_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)

# The trust lease: how long a token outlives the last look at `cache_debt` (see above).
TRUST_SECONDS = 1.0
CLOCK_SKEW_SECONDS = 0.25

# Set the value only if the trust token and the version are still what the reader saw before loading.
_FILL_IF_UNCHANGED = """
if redis.call('GET', KEYS[3]) ~= ARGV[4] then return 0 end
local current = redis.call('GET', KEYS[2]) or ''
if current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""

# KEYS[1] the trust key, then (value key, version key) pairs owed an invalidation.
# ARGV: a fresh token, the absolute expiry (unix ms), the version keys' lifetime (ms).
# Debt bumps those versions and starts a new token; none keeps the current one (or starts one).
_KEEP_TRUST = """
for i = 2, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('INCR', KEYS[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[3])
end
local token = redis.call('GET', KEYS[1])
if #KEYS > 1 or not token then token = ARGV[1] end
redis.call('SET', KEYS[1], token, 'PXAT', ARGV[2])
return token
"""


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class LocalTTLCache:
    """L1: at most `max_items` entries, each for at most `ttl_seconds`."""

    def __init__(self, max_items: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items = max_items
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # (expiry, stamp|value)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def set(self, key: str, value: bytes) -> None:
        self._entries[key] = (self._clock() + self.ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class TwoLevelCache:
    def __init__(
        self,
        client: redis.Redis,
        breaker: CircuitBreaker,
        *,
        namespace: str,
        l1: LocalTTLCache,
        l2_ttl_seconds: float,
        debt_pool: Pool | None = None,
    ) -> None:
        self.redis = client
        self.breaker = breaker
        self.namespace = namespace
        self.l1 = l1
        self.l2_ttl_ms = int(l2_ttl_seconds * 1000)
        # A version must outlive every entry stamped with it.
        self.version_ttl_ms = int(max(l2_ttl_seconds, l1.ttl_seconds) * 2000)
        self.channel = f"{namespace}:cache-invalidate"
        self.trust_key = f"{namespace}:cache-trust"
        # Where writes that could not reach Redis record the keys they changed; None only in
        # single-process tests (then nothing makes such a write safe for other processes).
        self.debt_pool = debt_pool
        self._calls = {
            operation: DependencyCall("redis", f"cache_{operation}", breaker, _REDIS_FAILURES)
            for operation in _REDIS_OPERATIONS
        }
        self._fill = client.register_script(_FILL_IF_UNCHANGED)
        self._keep = client.register_script(_KEEP_TRUST)
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self.namespace}:c:{key}", f"{self.namespace}:v:{key}"

    async def get(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The bytes for `key`, validated against Redis, or `load()`'s (None: nothing to cache, e.g. not found)."""
        while (pending := self._inflight.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                # The leader was cancelled (its request timed out or its client left): that
                # is no failure of ours. Unless this request is itself being cancelled, load
                # again (or join whoever took over).
                if not pending.cancelled() or _being_cancelled():
                    raise
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            await asyncio.sleep(0)  # misses arriving in this loop turn join; later ones do not
            del self._inflight[key]
            value = await self._read_through(key, load)
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved here: waiters re-raise it, nobody else needs to
            raise
        except BaseException:
            future.cancel()  # waiters retry rather than inherit this request's cancellation
            raise
        else:
            future.set_result(value)
            return value
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _read_through(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        value_key, version_key = self._keys(key)
        local = self.l1.get(key)
        # One round trip: the token and version validate L1; the value is fetched only if L1 has none.
        keys = (self.trust_key, version_key) if local is not None else (self.trust_key, version_key, value_key)
        found = await self._redis("get", lambda: self.redis.mget(*keys))
        if found is None:  # Redis unavailable: nothing can be validated, PostgreSQL serves
            _L1_MISS.inc()
            return await load()
        token, version, stored = (*cast(list[bytes | None], found), None)[:3]
        version = version or b"0"
        if token is None:  # the trust lease lapsed (a write may not have reached Redis): PostgreSQL serves
            _L1_MISS.inc()
            return await self._load_or_stale(key, version, local, load)
        stamp = token + b":" + version
        if local is not None:
            local_stamp, _, body = local.partition(b"|")
            if local_stamp == stamp:
                _L1_HIT.inc()
                return body
            _L1_MISS.inc()
            stored = None  # not fetched: L1 held a stale entry; go to PostgreSQL
        else:
            _L1_MISS.inc()
        if stored is not None:
            stored_stamp, _, body = stored.partition(b"|")
            if stored_stamp == stamp:
                _L2_HIT.inc()
                self.l1.set(key, stored)
                return body
        _L2_MISS.inc()
        value = await load()
        if value is not None:
            entry = stamp + b"|" + value
            await self._redis(
                "fill",
                lambda: self._fill(
                    keys=[value_key, version_key, self.trust_key],
                    args=[entry, version if version != b"0" else b"", self.l2_ttl_ms, token],
                ),
            )
            self.l1.set(key, entry)
        return value

    async def _load_or_stale(
        self, key: str, version: bytes, local: bytes | None, load: Callable[[], Awaitable[bytes | None]]
    ) -> bytes | None:
        try:
            return await load()
        except _DOWN:
            # PostgreSQL is down too: an entry no successful invalidation has passed is still served.
            if local is not None:
                local_stamp, _, body = local.partition(b"|")
                if local_stamp.rpartition(b":")[2] == version:
                    _L1_HIT.inc()
                    return body
            raise

    async def invalidate(self, key: str) -> None:
        """After a committed write, before it answers: no read anywhere may return the old value.

        Redis reachable: bump the version, delete L2, tell every pod to drop L1.
        Otherwise: record the key in `cache_debt` and wait out the trust lease
        (TRUST_SECONDS + CLOCK_SKEW_SECONDS); 503 if even that cannot be recorded.
        """
        self.l1.delete(key)
        value_key, version_key = self._keys(key)

        async def bump_delete_publish() -> object:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(version_key)
            pipe.pexpire(version_key, self.version_ttl_ms)
            pipe.delete(value_key)
            pipe.publish(self.channel, key)
            return await pipe.execute()

        if await self._redis("invalidate", bump_delete_publish) is not None:
            return
        if self.debt_pool is None:
            return
        try:
            await self.debt_pool.execute("INSERT INTO cache_debt (key) VALUES ($1)", key)
        except _DATABASE_FAILURES as error:
            logger.warning("cache invalidation could not be recorded", extra={"error": repr(error)})
            raise ServiceUnavailable("The change was saved, but caches could not be invalidated; retry.") from None
        await asyncio.sleep(TRUST_SECONDS + CLOCK_SKEW_SECONDS)

    async def refresh_trust(self, clock: Callable[[], float] = time.time) -> bool:
        """Read `cache_debt`, apply it in Redis and extend (or renew) the trust token. False if it could not."""
        started = clock()  # before the read: the lease is measured from what this read could see
        debt: list[tuple[int, str]] = []
        if self.debt_pool is not None:
            try:
                rows = await self.debt_pool.fetch("SELECT id, key FROM cache_debt ORDER BY id LIMIT 1000")
            except _DATABASE_FAILURES:
                return False  # no extension: the token lapses and reads go to PostgreSQL
            debt = [(row["id"], row["key"]) for row in rows]
        keys = [self.trust_key]
        for _, key in debt:
            keys.extend(self._keys(key))
        expire_at_ms = int((started + TRUST_SECONDS) * 1000)
        token = secrets.token_hex(8).encode()
        done = await self._redis(
            "trust", lambda: self._keep(keys=keys, args=[token, expire_at_ms, self.version_ttl_ms])
        )
        if done is None:
            return False
        if debt and self.debt_pool is not None:
            logger.info("cache debt applied", extra={"keys": len(debt)})
            with contextlib.suppress(*_DATABASE_FAILURES):
                await self.debt_pool.execute(
                    "DELETE FROM cache_debt WHERE id = ANY($1::bigint[])", [i for i, _ in debt]
                )
        return True

    async def keep_trust(self) -> None:
        """Run for the life of the process: refresh the trust token every TRUST_SECONDS / 4."""
        while True:
            await self.refresh_trust()
            await asyncio.sleep(TRUST_SECONDS / 4)

    async def _redis(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """The result of one Redis call, or None when Redis is unavailable (the cache steps aside)."""
        try:
            with self._calls[operation]():
                return await call()
        except CircuitOpen:
            return None
        except _REDIS_FAILURES as error:
            logger.warning("cache bypassed: redis unavailable", extra={"operation": operation, "error": repr(error)})
            return None

    async def listen_for_invalidations(self, *, retry_seconds: float = 1.0) -> None:
        """Run for the life of the process: drop L1 entries other pods invalidated.

        While the subscription is down, messages may be missed, so L1 is cleared
        on every (re)subscription; until then its TTL bounds staleness.
        """
        task = asyncio.current_task()
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.l1.clear()
                    while True:
                        # A bounded wait (not listen()) so the client's health check runs
                        # and a silently dead connection is noticed.
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if task is not None and task.cancelling():
                            # redis-py's get_message can swallow a cancellation that lands in its
                            # read timeout (seen: shutdown waiting forever for this task).
                            raise asyncio.CancelledError
                        if message is not None and message["type"] == "message":
                            self.l1.delete(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                DEPENDENCY_ERRORS.labels("redis", "cache_subscribe").inc()
                logger.warning("cache invalidation subscription lost", extra={"error": repr(error)})
                self.l1.clear()
            await asyncio.sleep(retry_seconds)
