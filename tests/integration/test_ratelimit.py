"""The rate limiter against a real Redis: exact counts, even when concurrent requests share a round trip."""

from __future__ import annotations

import asyncio
import random

import pytest
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


async def test_far_from_the_limit_requests_are_counted_locally_and_reconciled_later(backends: Backends) -> None:
    client = redis.Redis.from_url(backends.redis_url)
    await client.flushdb()
    try:
        rate = Rate(count=1000, period_seconds=3600)  # budget per pod: 10 % of 1000 = 100
        first = RateLimiter(client, CircuitBreaker("redis", 3, 1), "t", local_share=0.1)
        second = RateLimiter(client, CircuitBreaker("redis", 3, 1), "t", local_share=0.1)
        decisions = [first.admit_locally("ip:1", rate) for _ in range(41)]
        assert all(d is not None and d.allowed for d in decisions)
        assert [d.remaining for d in decisions if d] == list(range(999, 958, -1))
        assert await client.keys("t:rl:*") == []  # nothing reached Redis yet
        await first.sync()
        [key] = await client.keys("t:rl:ip:1:*")
        assert int(await client.get(key) or 0) == 41
        assert 3600 < await client.ttl(key) <= 3601

        for _ in range(30):
            assert second.admit_locally("ip:1", rate) is not None
        await second.sync()  # sends 30, learns 71
        assert int(await client.get(key) or 0) == 71
        await first.sync()  # idle since its last sync: nothing to send or refresh
        assert int(await client.get(key) or 0) == 71
        assert first.admit_locally("ip:1", rate) is not None  # its view: 42
        await first.sync()  # sends 1, learns 72
        later = first.admit_locally("ip:1", rate)
        assert later is not None
        assert later.remaining == 1000 - 73
        # Another identity has its own counter.
        other = first.admit_locally("ip:2", rate)
        assert other is not None
        assert other.remaining == 999
    finally:
        await client.aclose()


async def test_near_the_limit_every_request_is_decided_by_redis(backends: Backends) -> None:
    client = redis.Redis.from_url(backends.redis_url)
    await client.flushdb()
    try:
        rate = Rate(count=100, period_seconds=3600)  # budget 10: local only up to 90
        limiter = RateLimiter(client, CircuitBreaker("redis", 3, 1), "t", local_share=0.1)
        for _ in range(9):
            assert limiter.admit_locally("ip:1", rate) is not None
        await limiter.sync()
        # A budget of 10 unconfirmed requests per pod: the 11th must wait for Redis.
        assert [limiter.admit_locally("ip:1", rate) is not None for _ in range(11)] == [True] * 10 + [False]
        await limiter.sync()  # Redis: 19
        await client.incrby((await client.keys("t:rl:ip:1:*"))[0], 74)  # another pod's traffic: 93
        stale = limiter.admit_locally("ip:1", rate)  # this pod has not heard of them yet
        assert stale is not None
        assert stale.remaining == 100 - 20
        await limiter.sync()  # sends 1, learns 94
        assert limiter.admit_locally("ip:1", rate) is None  # 94 + 1 > 100 - 10: exact from here
        decisions = await asyncio.gather(*(limiter.hit("ip:1", rate) for _ in range(10)))
        assert [d.allowed for d in decisions if d] == [True] * 6 + [False] * 4
        assert [d.remaining for d in decisions if d][:6] == list(range(5, -1, -1))
    finally:
        await client.aclose()


@pytest.mark.parametrize("sync_seconds", [0.01, 60.0])
async def test_two_pods_one_client_admit_at_most_limit_plus_pods_times_budget(
    backends: Backends, sync_seconds: float
) -> None:
    """The stated bound: limit <= admitted <= limit + pods x floor(limit x share), whatever the sync interval."""
    client = redis.Redis.from_url(backends.redis_url)
    await client.flushdb()
    rate = Rate(count=300, period_seconds=3600)
    budget = 30  # 10 % of 300
    pods = [
        RateLimiter(client, CircuitBreaker("redis", 3, 1), "t", local_share=0.1, sync_seconds=sync_seconds)
        for _ in range(2)
    ]
    for pod in pods:
        pod.start()
    try:
        rng = random.Random(14)
        admitted = refused = 0
        for _ in range(60):  # 900 requests in bursts of 15, each to a random pod
            wave = await asyncio.gather(*(pods[rng.randrange(2)].hit("ip:1", rate) for _ in range(15)))
            assert all(d is not None for d in wave)
            admitted += sum(1 for d in wave if d and d.allowed)
            refused += sum(1 for d in wave if d and not d.allowed)
            await asyncio.sleep(rng.choice((0, 0, 0.002)))
        assert admitted + refused == 900
        assert rate.count <= admitted <= rate.count + len(pods) * budget
        for pod in pods:
            await pod.close()
        [key] = await client.keys("t:rl:ip:1:*")
        assert int(await client.get(key) or 0) >= admitted  # every admission reached Redis
    finally:
        for pod in pods:
            await pod.close()
        await client.aclose()
