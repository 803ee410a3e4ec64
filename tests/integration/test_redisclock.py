"""Redis's clock as a pod reads it (service/redisclock.py), against a real Redis; and what rests on it."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as redis

from service.cache import TRUST_SECONDS, LocalTTLCache, TwoLevelCache
from service.config import Rate
from service.ratelimit import RateLimiter
from service.redisclock import RedisClock
from service.resilience import CircuitBreaker
from tests.fixtures.backends import Backends


async def _redis_seconds(client: redis.Redis) -> float:
    seconds, microseconds = await client.time()
    return float(seconds) + microseconds / 1e6


async def test_the_bounds_hold_redis_s_time_whatever_the_pod_s_wall_clock(backends: Backends) -> None:
    client = redis.Redis.from_url(backends.redis_url)
    try:
        # A wall clock an hour ahead: used only until the first sample.
        clock = RedisClock(client, CircuitBreaker("redis", 3, 1), wall=lambda: time.time() + 3600)
        assert not clock.synced
        assert clock.now() - time.time() > 3599
        assert clock.earliest() is None
        assert await clock.sample()
        uncertainty = clock.uncertainty()
        assert uncertainty is not None
        assert uncertainty < 0.1
        for _ in range(20):
            before = time.monotonic()
            actual = await _redis_seconds(client)
            after = time.monotonic()
            earliest = clock.earliest(before)
            assert earliest is not None
            assert earliest <= actual  # the lower bound never runs ahead of Redis
            assert abs(clock.now((before + after) / 2) - actual) <= uncertainty + (after - before)
    finally:
        await client.aclose()


async def test_an_unreachable_redis_leaves_the_clock_unsynced_and_counts_against_the_breaker() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        breaker = CircuitBreaker("redis", 2, 60)
        clock = RedisClock(client, breaker)
        assert not await clock.sample()
        assert not await clock.sample()
        assert breaker.is_open
        assert not clock.synced
        assert not await clock.sample()  # at once: the breaker is open
    finally:
        await client.aclose()


async def test_the_trust_token_lasts_its_lease_on_a_pod_whose_wall_clock_is_behind(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the expiry was this pod's time.time() + 1 s as an absolute Redis time, so a pod 3 s
    # behind wrote an expiry already past, and the token vanished at once.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3)
    client = redis.Redis.from_url(backends.redis_url)
    try:
        cache = TwoLevelCache(
            client, CircuitBreaker("redis", 3, 1), namespace="skew", l1=LocalTTLCache(10, 1), l2_ttl_seconds=60
        )
        assert await cache.refresh_trust()
        left = await client.pttl(cache.trust_key)
        assert TRUST_SECONDS * 1000 - 100 < left <= TRUST_SECONDS * 1000
    finally:
        await client.aclose()


async def test_the_limiter_s_windows_follow_the_clock_it_is_given(backends: Backends) -> None:
    client = redis.Redis.from_url(backends.redis_url)
    try:
        clock = RedisClock(client, CircuitBreaker("redis", 3, 1), wall=lambda: time.time() + 1800)
        assert await clock.sample()
        limiter = RateLimiter(client, clock.breaker, "skew-window", local_share=0, clock=clock.now)
        assert await limiter.hit("ip:1", Rate(count=5, period_seconds=3600)) is not None
        [key] = await client.keys("skew-window:rl:ip:1:*")
        window = int((key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1])
        assert window == int(await _redis_seconds(client) // 3600)  # Redis's hour, not the wall clock's
        await client.delete(key)
    finally:
        await client.aclose()
