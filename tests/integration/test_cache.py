"""The two-level cache against a real Redis: single flight, invalidation across pods, races, outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from service.cache import LocalTTLCache, TwoLevelCache
from service.resilience import CircuitBreaker, cancel_until_done
from tests.fixtures.backends import Backends


class Loader:
    """A stand-in for the database read: counts calls; can be held open to widen races."""

    def __init__(self, value: bytes | None = b'{"v":1}') -> None:
        self.value = value
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> bytes | None:
        self.calls += 1
        value = self.value
        if self.gate is not None:
            await self.gate.wait()
        return value


@contextlib.asynccontextmanager
async def pod(
    url: str, namespace: str = "t", l1_ttl: float = 60.0, l1_lease: float = 0.0
) -> AsyncIterator[TwoLevelCache]:
    """One pod's cache: its own Redis client, L1, trust keeper and invalidation listener (and L1 lease)."""
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    cache = TwoLevelCache(
        client,
        CircuitBreaker("redis", 3, 1.0),
        namespace=namespace,
        l1=LocalTTLCache(100, l1_ttl),
        l2_ttl_seconds=60,
        l1_lease_seconds=l1_lease,
    )
    tasks = [
        asyncio.create_task(cache.listen_for_invalidations(retry_seconds=0.1)),
        asyncio.create_task(cache.keep_trust()),
    ]
    await asyncio.sleep(0.1)  # subscribed, trusted
    if l1_lease:
        await until(lambda: cache.leased, "the first heartbeat")
    try:
        yield cache
    finally:
        for task in tasks:
            await cancel_until_done(task)
        await client.aclose()


async def until(condition: Callable[[], bool], what: str, seconds: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"no {what} within {seconds} s"
        await asyncio.sleep(0.01)


async def redis_calls(url: str, command: str) -> int:
    probe = redis.Redis.from_url(url)
    stats = await probe.info("commandstats")
    await probe.aclose()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


LEASE = 0.4


@pytest.fixture
async def flushed(backends: Backends) -> str:
    client = redis.Redis.from_url(backends.redis_url)
    await client.flushdb()
    await client.aclose()
    return backends.redis_url


async def test_concurrent_misses_load_once(flushed: str) -> None:
    async with pod(flushed) as cache:
        loader = Loader()
        loader.gate = asyncio.Event()
        readers = [asyncio.create_task(cache.get("item:1", loader)) for _ in range(50)]
        await asyncio.sleep(0.05)
        loader.gate.set()
        assert set(await asyncio.gather(*readers)) == {b'{"v":1}'}
        assert loader.calls == 1


async def test_a_second_pod_reads_from_redis_not_the_database(flushed: str) -> None:
    async with pod(flushed) as first, pod(flushed) as second:
        loader = Loader()
        await first.get("item:1", loader)
        assert await second.get("item:1", loader) == b'{"v":1}'
        assert loader.calls == 1


@pytest.mark.parametrize("lease", [0.0, LEASE], ids=["checked", "leased"])
async def test_invalidation_reaches_every_pod(flushed: str, lease: float) -> None:
    async with pod(flushed, l1_lease=lease) as writer, pod(flushed, l1_lease=lease) as reader:
        await reader.get("item:1", Loader(b"old"))
        assert await reader.get("item:1", Loader(b"unused")) == b"old"  # L1 hit
        await writer.invalidate("item:1")
        if not lease:  # the message crosses Redis (with leases, the write waited for it)
            await until(lambda: reader.l1.get("item:1") is None, "invalidation message")
        assert await reader.get("item:1", Loader(b"new")) == b"new"


@pytest.mark.parametrize("lease", [0.0, LEASE], ids=["checked", "leased"])
async def test_a_slow_reader_cannot_put_back_a_value_older_than_a_write(flushed: str, lease: float) -> None:
    async with pod(flushed, l1_lease=lease) as cache:
        slow = Loader(b"before-the-write")
        slow.gate = asyncio.Event()
        reading = asyncio.create_task(cache.get("item:1", slow))
        await until(lambda: slow.calls == 1, "read")  # the reader has the old row and is about to fill L2
        await cache.invalidate("item:1")  # a write committed meanwhile
        slow.gate.set()
        assert await reading == b"before-the-write"  # this caller sees what it read...
        cache.l1.clear()
        # ...but Redis was not filled with it: the next reader goes to the database.
        fresh = Loader(b"after-the-write")
        assert await cache.get("item:1", fresh) == b"after-the-write"
        assert fresh.calls == 1


async def test_not_found_is_not_cached(flushed: str) -> None:
    async with pod(flushed) as cache:
        loader = Loader(None)
        assert await cache.get("item:9", loader) is None
        assert await cache.get("item:9", loader) is None
        assert loader.calls == 2


async def test_a_loader_error_reaches_every_waiter_and_is_not_cached(flushed: str) -> None:
    async with pod(flushed) as cache:
        gate = asyncio.Event()

        async def failing() -> bytes | None:
            await gate.wait()
            raise RuntimeError("database said no")

        waiters = [asyncio.create_task(cache.get("item:1", failing)) for _ in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(result, RuntimeError) for result in results)
        assert await cache.get("item:1", Loader(b"later")) == b"later"


async def test_redis_down_means_reads_go_to_the_database_quickly() -> None:
    async with pod("redis://127.0.0.1:1/0") as cache:
        loader = Loader()
        started = asyncio.get_running_loop().time()
        for _ in range(20):
            cache.l1.clear()
            assert await cache.get("item:1", loader) == b'{"v":1}'
        await cache.invalidate("item:1")  # does not raise either
        elapsed = asyncio.get_running_loop().time() - started
        assert loader.calls == 20
        assert cache.breaker.is_open  # after 3 failures Redis is not even tried
        assert elapsed < 1.0


async def test_a_pod_that_missed_the_invalidation_message_still_reads_the_write(flushed: str) -> None:
    """Pub/sub lost: the reader's L1 entry is checked against the version in Redis on every read."""
    async with pod(flushed) as writer:
        client = redis.Redis.from_url(flushed, socket_timeout=0.5)
        deaf = TwoLevelCache(  # no listener: every invalidation message is lost
            client, CircuitBreaker("redis", 3, 1.0), namespace="t", l1=LocalTTLCache(100, 60), l2_ttl_seconds=60
        )
        try:
            assert await deaf.get("item:1", Loader(b"old")) == b"old"
            assert await deaf.get("item:1", Loader(b"unused")) == b"old"  # L1 hit, validated
            await writer.invalidate("item:1")
            assert await deaf.get("item:1", Loader(b"new")) == b"new"  # at once, not after the L1 TTL
        finally:
            await client.aclose()


async def test_without_a_trust_token_nothing_is_served_from_the_cache(flushed: str) -> None:
    """The token lapses when no pod could confirm that no write missed Redis: reads go to the loader."""
    async with pod(flushed) as cache:
        assert await cache.get("item:1", Loader(b"cached")) == b"cached"
        probe = redis.Redis.from_url(flushed)
        await probe.delete(cache.trust_key)
        fresh = Loader(b"from-postgres")
        assert await cache.get("item:1", fresh) == b"from-postgres"
        assert fresh.calls == 1
        await probe.aclose()


async def test_a_leased_l1_hit_asks_redis_nothing(flushed: str) -> None:
    async with pod(flushed, l1_lease=LEASE) as cache:
        loader = Loader()
        assert await cache.get("item:1", loader) == b'{"v":1}'
        before = await redis_calls(flushed, "mget")
        for _ in range(200):
            assert await cache.get("item:1", loader) == b'{"v":1}'
        assert await redis_calls(flushed, "mget") == before
        assert loader.calls == 1


async def test_a_write_answers_once_every_lease_holder_dropped_the_key(flushed: str) -> None:
    """Both pods hold leases and the key in L1: the write waits for the other pod's acknowledgement only."""
    async with pod(flushed, l1_lease=LEASE) as writer, pod(flushed, l1_lease=LEASE) as reader:
        for cache in (writer, reader):
            assert await cache.get("item:1", Loader(b"old")) == b"old"
            assert await cache.get("item:1", Loader(b"unused")) == b"old"
        started = asyncio.get_running_loop().time()
        await writer.invalidate("item:1")
        elapsed = asyncio.get_running_loop().time() - started
        # No sleep: the moment the write answers, neither pod serves the old bytes.
        assert await reader.get("item:1", Loader(b"new")) == b"new"
        assert await writer.get("item:1", Loader(b"unused")) == b"new"
        assert elapsed < LEASE / 2, f"the write waited {elapsed:.3f} s: the acknowledgement did not end the wait"


async def test_a_write_waits_for_a_slow_holder_to_drop_the_key(flushed: str) -> None:
    """Every message reaches the reader 0.1 s late (in order): the write answers only after its acknowledgement."""
    async with pod(flushed, l1_lease=LEASE) as writer, pod(flushed, l1_lease=LEASE) as reader:
        assert await reader.get("item:1", Loader(b"old")) == b"old"
        received, loop = reader._received, asyncio.get_running_loop()

        def late(channel: bytes, data: bytes) -> None:
            loop.call_later(0.1, received, channel, data)

        reader._received = late  # type: ignore[method-assign]
        await asyncio.sleep(LEASE / 2)  # the lease now rests on late heartbeats
        started = loop.time()
        await writer.invalidate("item:1")
        elapsed = loop.time() - started
        assert await reader.get("item:1", Loader(b"new")) == b"new"
        assert 0.1 <= elapsed < LEASE


async def test_a_holder_that_stops_answering_delays_a_write_by_at_most_its_lease(flushed: str) -> None:
    """A frozen pod (no message reaches it) neither acknowledges nor renews: the write outwaits its lease."""
    async with pod(flushed, l1_lease=LEASE) as writer, pod(flushed, l1_lease=LEASE) as frozen:
        assert await frozen.get("item:1", Loader(b"old")) == b"old"
        frozen._received = lambda channel, data: None  # type: ignore[method-assign]  # deaf from here on
        started = asyncio.get_running_loop().time()
        await writer.invalidate("item:1")
        elapsed = asyncio.get_running_loop().time() - started
        assert await frozen.get("item:1", Loader(b"new")) == b"new"  # its lease ended: checked in Redis
        # It waited for the lease the frozen pod held (renewed every LEASE / 4), and no longer.
        assert LEASE / 2 <= elapsed <= LEASE + 0.1


async def test_a_new_trust_token_voids_leased_entries_within_one_heartbeat(flushed: str) -> None:
    """The debt keeper starts a new token when a write missed Redis: leased L1 entries stop being served."""
    async with pod(flushed, l1_lease=LEASE) as cache:
        assert await cache.get("item:1", Loader(b"cached")) == b"cached"
        probe = redis.Redis.from_url(flushed)
        await probe.set(cache.trust_key, b"a-new-token", px=60_000)
        await probe.aclose()
        await asyncio.sleep(LEASE / 4 + 0.1)  # one heartbeat
        fresh = Loader(b"from-postgres")
        assert await cache.get("item:1", fresh) == b"from-postgres"
        assert fresh.calls == 1


async def test_a_lost_subscription_ends_the_lease(flushed: str) -> None:
    async with pod(flushed, l1_lease=LEASE) as cache:
        assert await cache.get("item:1", Loader(b"cached")) == b"cached"
        probe = redis.Redis.from_url(flushed)
        await probe.client_kill_filter(_type="pubsub")
        await probe.aclose()
        await until(lambda: not cache.leased, "end of the lease")
        assert len(cache.l1) == 0
        before = await redis_calls(flushed, "mget")
        assert await cache.get("item:1", Loader(b"unused")) == b"cached"  # from L2, checked
        assert await redis_calls(flushed, "mget") == before + 1
        await until(lambda: cache.leased, "a new lease over the new subscription")


async def test_a_pod_that_shut_down_is_not_waited_for(flushed: str) -> None:
    async with pod(flushed, l1_lease=LEASE) as writer:
        async with pod(flushed, l1_lease=LEASE) as leaving:
            assert await leaving.get("item:1", Loader(b"old")) == b"old"
        started = asyncio.get_running_loop().time()
        await writer.invalidate("item:1")
        assert asyncio.get_running_loop().time() - started < LEASE / 2  # it left the lease holders on the way out
