"""Two-level read-through cache of pre-serialised bytes: in-process L1, Redis L2.

- L1: a small bounded LRU with a short TTL (CACHE_L1_TTL_SECONDS). The TTL is
  the worst-case staleness if an invalidation message is missed.
- L2: Redis, shared by every pod (CACHE_L2_TTL_SECONDS).
- Single flight: concurrent misses for one key in one process wait for one load.
  A waiter never inherits the leader's cancellation (its timeout, its client
  leaving): it loads again itself. The leader's errors are shared.
- Invalidation: after a write commits, the writer bumps the key's version,
  deletes the L2 entry and publishes the key; every pod drops its L1 entry.
  A reader that loaded from PostgreSQL stores into L2 only if the version is
  the one it saw before loading, so a slow reader cannot put back a value
  older than a write that finished meanwhile.
- Redis trouble never fails a read: behind its circuit breaker the cache
  bypasses L2 (PostgreSQL serves) and L1 keeps its short TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from service import tracing
from service.metrics import CACHE_REQUESTS, DEPENDENCY_CALL_DURATION, DEPENDENCY_ERRORS
from service.resilience import CircuitBreaker

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Bound once: `.labels()` on every lookup would cost more than an L1 hit itself.
_L1_HIT, _L1_MISS = CACHE_REQUESTS.labels("l1", "hit"), CACHE_REQUESTS.labels("l1", "miss")
_L2_HIT, _L2_MISS = CACHE_REQUESTS.labels("l2", "hit"), CACHE_REQUESTS.labels("l2", "miss")
_REDIS_SPAN = {"db.system.name": "redis"}
_REDIS_CALLS = {op: DEPENDENCY_CALL_DURATION.labels("redis", f"cache_{op}") for op in ("get", "fill", "invalidate")}

# Set the value only if the version key still holds what the reader saw before loading.
_FILL_IF_UNCHANGED = """
local current = redis.call('GET', KEYS[2]) or ''
if current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
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
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

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
    ) -> None:
        self.redis = client
        self.breaker = breaker
        self.namespace = namespace
        self.l1 = l1
        self.l2_ttl_ms = int(l2_ttl_seconds * 1000)
        self.channel = f"{namespace}:cache-invalidate"
        self._fill = client.register_script(_FILL_IF_UNCHANGED)
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self.namespace}:c:{key}", f"{self.namespace}:v:{key}"

    async def get(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The cached bytes for `key`, or `load()`'s (None: nothing to cache, e.g. not found)."""
        value = self.l1.get(key)
        if value is not None:
            _L1_HIT.inc()
            return value
        _L1_MISS.inc()
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
            del self._inflight[key]

    async def _read_through(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        value_key, version_key = self._keys(key)
        # The client returns bytes (no decode_responses); the version key rides along for the fill.
        found = await self._redis("get", lambda: self.redis.mget(value_key, version_key))
        version = b""
        if found is not None:
            cached, stored_version = cast(list[bytes | None], found)
            if cached is not None:
                _L2_HIT.inc()
                self.l1.set(key, cached)
                return cached
            version = stored_version or b""
        _L2_MISS.inc()
        value = await load()
        if value is not None:
            if found is not None:  # Redis answered a moment ago: worth filling L2
                await self._redis(
                    "fill", lambda: self._fill(keys=[value_key, version_key], args=[value, version, self.l2_ttl_ms])
                )
            self.l1.set(key, value)
        return value

    async def invalidate(self, key: str) -> None:
        """After a committed write: drop `key` here, in Redis, and (by message) in every pod."""
        self.l1.delete(key)
        value_key, version_key = self._keys(key)

        async def bump_delete_publish() -> object:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(version_key)
            pipe.pexpire(version_key, self.l2_ttl_ms * 2)
            pipe.delete(value_key)
            pipe.publish(self.channel, key)
            return await pipe.execute()

        await self._redis("invalidate", bump_delete_publish)

    async def _redis(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        if not self.breaker.allow():
            return None
        started = time.perf_counter()
        try:
            result = await call()
        except (RedisError, OSError) as error:
            _REDIS_CALLS[operation].observe(time.perf_counter() - started)
            if tracing.enabled and tracing.recording_parent():
                tracing.record_client_span(
                    f"redis cache_{operation}", time.perf_counter() - started, _REDIS_SPAN, error
                )
            self.breaker.failure()
            DEPENDENCY_ERRORS.labels("redis", f"cache_{operation}").inc()
            logger.warning("cache bypassed: redis unavailable", extra={"operation": operation, "error": repr(error)})
            return None
        elapsed = time.perf_counter() - started
        _REDIS_CALLS[operation].observe(elapsed)
        if tracing.enabled and tracing.recording_parent():
            tracing.record_client_span(f"redis cache_{operation}", elapsed, _REDIS_SPAN)
        self.breaker.success()
        return result

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
