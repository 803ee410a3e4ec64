"""The rate limiter against a real Redis: exact counts, even when concurrent requests share a round trip."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from service.config import Rate
from service.ratelimit import RateLimiter
from service.resilience import CircuitBreaker
from tests.fixtures.backends import Backends


async def test_concurrent_hits_are_counted_exactly(backends: Backends) -> None:
    client = redis.Redis.from_url(backends.redis_url)
    await client.flushdb()
    try:
        limiter = RateLimiter(client, CircuitBreaker("redis", 3, 1), "t")
        rate = Rate(count=10, period_seconds=3600)
        decisions = await asyncio.gather(*(limiter.hit("ip:1", rate) for _ in range(25)))
        assert all(d is not None for d in decisions)
        assert sum(1 for d in decisions if d and d.allowed) == 10
        assert sorted(d.remaining for d in decisions if d and d.allowed) == list(range(10))
        # A second turn continues the same count, and another identity has its own.
        later = await limiter.hit("ip:1", rate)
        assert later is not None
        assert not later.allowed
        other = await limiter.hit("ip:2", rate)
        assert other is not None
        assert (other.allowed, other.remaining) == (True, 9)
        keys = await client.keys("t:rl:ip:1:*")
        assert len(keys) == 1
        assert 3600 < await client.ttl(keys[0]) <= 3601
    finally:
        await client.aclose()


async def test_an_unreachable_store_gives_no_decision_and_opens_the_breaker() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        breaker = CircuitBreaker("redis", 2, 60)
        limiter = RateLimiter(client, breaker, "t")
        rate = Rate(count=10, period_seconds=60)
        assert await asyncio.gather(*(limiter.hit("ip:1", rate) for _ in range(5))) == [None] * 5
        assert await limiter.hit("ip:1", rate) is None
        assert breaker.is_open
    finally:
        await client.aclose()
