"""Two-level read-through cache of pre-serialised bytes: in-process L1, Redis L2.

The guarantee: once a write has answered, no read on any pod returns data
older than that write, through Redis outages, circuit-breaker states and lost
pub/sub messages.

- Every entry (L1 and L2) is stamped `<trust token>:<key version>`. A write
  bumps the key's version in Redis and deletes L2 before it answers. A read
  that misses L1 (or holds no L1 lease, below) asks Redis for the trust token
  and the key's version in one MGET (the value too when L1 has none) and
  serves only an entry whose stamp matches.
- **L1 hits do no I/O while the pod holds an L1 lease** (CACHE_L1_LEASE_SECONDS,
  L; 0 turns leases off and every L1 hit is checked by that MGET). Each pod
  subscribes, on one connection, to the invalidation channel and to a channel
  of its own, and every L/4 runs a heartbeat script that records the pod in a
  sorted set of lease holders (score: Redis time + L) and publishes, on the
  pod's channel, the pod's monotonic send time with the trust token and its
  remaining milliseconds. Redis delivers a connection's messages in the order
  it ran the PUBLISHes, so once that heartbeat arrives the pod has seen every
  invalidation published before it: it serves L1 hits stamped with that token,
  without asking Redis, until `sent + L` (and before the token's expiry, less
  CLOCK_SKEW_SECONDS). A write publishes `key|writer pod|sequence` and, in the
  same script, reads the holders whose lease may still run; each pod drops the
  key on the message and acknowledges it, and the write answers once every
  holder acknowledged, or once the last holder's lease has run out (at most L,
  when a pod is frozen or cut off). So after a write answers, no pod serves an
  L1 entry older than it (this assumes Redis's clock and the pods' advance at
  the same rate over one lease, not that they agree). A fill of L1 that an invalidation (or a token change,
  or a re-subscription) overtook is not stored (an epoch counter).
  Lost subscription: the lease ends at once, L1 is cleared, and reads are
  checked by MGET until a new heartbeat comes back over the new subscription.
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
  harmless. They are on Redis's clock as each pod knows it from `TIME`
  (service/redisclock.py: the earliest it can read, so a lease never runs
  long), never on the pod's wall clock: pods' clocks may disagree by any
  amount. CLOCK_SKEW_SECONDS is the margin for clocks *running* at different
  rates over one lease (and Redis's millisecond expiry).
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
from typing import Any, TypeVar, cast

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from service.db import UNAVAILABLE_ERRORS, Pool
from service.errors import ServiceUnavailable
from service.metrics import CACHE_REQUESTS, DEPENDENCY_ERRORS
from service.redisclock import RedisClock
from service.resilience import CircuitBreaker, CircuitOpen, DependencyCall, cancel_until_done

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Bound once: `.labels()` on every lookup would cost more than an L1 hit itself.
_L1_HIT, _L1_MISS = CACHE_REQUESTS.labels("l1", "hit"), CACHE_REQUESTS.labels("l1", "miss")
_L2_HIT, _L2_MISS = CACHE_REQUESTS.labels("l2", "hit"), CACHE_REQUESTS.labels("l2", "miss")
_REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
_REDIS_OPERATIONS = ("get", "fill", "invalidate", "trust", "lease")

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


# L1 leases (see above). KEYS[1] the trust key, KEYS[2] the lease holders (sorted set).
# ARGV: this pod's id, the lease (ms), this pod's channel, the pod's monotonic send time.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
redis.call('PEXPIRE', KEYS[2], 120000)
local token = redis.call('GET', KEYS[1]) or ''
redis.call('PUBLISH', ARGV[3], 'hb|' .. ARGV[4] .. '|' .. token .. '|' .. redis.call('PTTL', KEYS[1]))
return 1
"""

# KEYS[1] the lease holders. ARGV: the invalidation channel, the message `key|writer|sequence`.
# Publishes, and returns at the same instant every holder whose lease may still run, and for how
# long at most: {ms left, pod, pod, ...}.
_ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PUBLISH', ARGV[1], ARGV[2])
local holders = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local result = {0}
for i = 1, #holders, 2 do
  table.insert(result, holders[i])
  local left = tonumber(holders[i + 1]) - now
  if left > result[1] then result[1] = left end
end
return result
"""


class _AckWait:
    """One write waiting for the lease holders to confirm they dropped its key."""

    __slots__ = ("acked", "done", "holders")

    def __init__(self) -> None:
        self.acked: set[bytes] = set()
        self.holders: set[bytes] | None = None  # known once the announcement answered
        self.done = asyncio.get_running_loop().create_future()

    def ack(self, pod: bytes) -> None:
        self.acked.add(pod)
        if self.holders is not None and self.holders <= self.acked and not self.done.done():
            self.done.set_result(None)


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
        l1_lease_seconds: float = 0.0,
        clock: RedisClock | None = None,
    ) -> None:
        self.redis = client
        self.breaker = breaker
        # Redis's clock: the trust token's absolute expiry is on it, never on this pod's wall clock.
        self.clock = clock or RedisClock(client, breaker)
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
        # L1 leases (see the module docstring).
        self.l1_lease_seconds = l1_lease_seconds
        self.pod_id = secrets.token_hex(6).encode()
        self.pod_channel = f"{namespace}:cache-pod:{self.pod_id.decode()}"
        self.lease_holders_key = f"{namespace}:cache-lease-holders"
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._announce = client.register_script(_ANNOUNCE)
        self._lease_until = 0.0  # monotonic: L1 hits are served without I/O before this
        self._lease_stamp = b""  # `<token>:` the lease vouches for
        self._epoch = 0  # bumped by every invalidation received, token change and re-subscription
        self._writes = 0
        self._ack_waits: dict[int, _AckWait] = {}
        self._acks_sent: set[asyncio.Task[None]] = set()

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self.namespace}:c:{key}", f"{self.namespace}:v:{key}"

    async def get(self, key: str, load: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The bytes for `key`, validated against Redis, or `load()`'s (None: nothing to cache, e.g. not found)."""
        local = self.l1.get(key)
        if local is not None and time.monotonic() < self._lease_until and local.startswith(self._lease_stamp):
            _L1_HIT.inc()  # leased: every invalidation published before the last heartbeat was applied
            return local[local.index(b"|") + 1 :]
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
        epoch = self._epoch  # an invalidation received from now on makes what this read saw unfit for L1
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
                self._keep_local(key, stored, epoch)
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
            self._keep_local(key, entry, epoch)
        return value

    def _keep_local(self, key: str, entry: bytes, epoch: int) -> None:
        if self._epoch == epoch:
            self.l1.set(key, entry)

    def _drop(self, key: str) -> None:
        self.l1.delete(key)
        self._epoch += 1

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

        Redis reachable: bump the version, delete L2, publish the key, and wait
        until every L1 lease holder dropped it (at most one lease, when a holder
        does not answer). Otherwise: record the key in `cache_debt` and wait out
        the trust lease (TRUST_SECONDS + CLOCK_SKEW_SECONDS); 503 if even that
        cannot be recorded.
        """
        self._drop(key)
        value_key, version_key = self._keys(key)
        self._writes += 1
        sequence = self._writes
        wait = self._ack_waits[sequence] = _AckWait()

        async def bump_delete_publish() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(version_key)
            pipe.pexpire(version_key, self.version_ttl_ms)
            pipe.delete(value_key)
            message = b"%s|%s|%d" % (key.encode(), self.pod_id, sequence)
            await self._announce(keys=[self.lease_holders_key], args=[self.channel, message], client=pipe)
            return await pipe.execute()

        try:
            done = await self._redis("invalidate", bump_delete_publish)
            if done is not None:
                # A read of this pod that started before the bump may have passed the first drop.
                self._drop(key)
                left_ms, *holders = done[-1]
                wait.holders = set(holders) - {self.pod_id}
                wait.ack(self.pod_id)
                if not wait.done.done():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(int(left_ms) / 1000):
                            await wait.done
                return
        finally:
            del self._ack_waits[sequence]
        if self.debt_pool is None:
            return
        try:
            await self.debt_pool.execute("INSERT INTO cache_debt (key) VALUES ($1)", key)
        except _DATABASE_FAILURES as error:
            logger.warning("cache invalidation could not be recorded", extra={"error": repr(error)})
            raise ServiceUnavailable("The change was saved, but caches could not be invalidated; retry.") from None
        await asyncio.sleep(TRUST_SECONDS + CLOCK_SKEW_SECONDS)

    async def refresh_trust(self) -> bool:
        """Read `cache_debt`, apply it in Redis and extend (or renew) the trust token. False if it could not.

        The token expires TRUST_SECONDS after the read began, on Redis's clock: its earliest
        possible reading at that instant (service/redisclock.py), so the lease never runs
        longer than TRUST_SECONDS whatever this pod's wall clock says (a pod 3 s behind used
        to set expiries in the past, and every pod's entries died with each new token).
        """
        started = time.monotonic()  # before the read: the lease is measured from what this read could see
        if not self.clock.synced and not await self.clock.sample():
            return False  # Redis unreachable: no extension, the token lapses and reads go to PostgreSQL
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
        earliest = self.clock.earliest(started)
        assert earliest is not None  # synced above
        expire_at_ms = int((earliest + TRUST_SECONDS) * 1000)
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
        """Run for the life of the process: drop L1 entries other pods invalidated; hold the L1 lease.

        While the subscription is down, messages may be missed, so L1 is cleared
        and the lease ends on every loss and (re)subscription; until a heartbeat
        comes back, L1 hits are checked against Redis.
        """
        task = asyncio.current_task()
        while True:
            heartbeat: asyncio.Task[None] | None = None
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel, self.pod_channel)
                    while True:
                        # A bounded wait (not listen()) so the client's health check runs
                        # and a silently dead connection is noticed.
                        message = await pubsub.get_message(timeout=1.0)
                        if task is not None and task.cancelling():
                            # redis-py's get_message can swallow a cancellation that lands in its
                            # read timeout (seen: shutdown waiting forever for this task).
                            raise asyncio.CancelledError
                        if message is None:
                            continue
                        if message["type"] == "message":
                            self._received(message["channel"], message["data"])
                        elif message["type"] == "subscribe" and message["channel"] == self.channel.encode():
                            # From here on every invalidation reaches this pod, in order.
                            self._forget_all()
                            if self.l1_lease_seconds > 0 and heartbeat is None:
                                heartbeat = asyncio.create_task(self._beat(), name="cache-l1-lease")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                DEPENDENCY_ERRORS.labels("redis", "cache_subscribe").inc()
                logger.warning("cache invalidation subscription lost", extra={"error": repr(error)})
            finally:
                self._forget_all()
                if heartbeat is not None:
                    await cancel_until_done(heartbeat)
                    # Writers need not wait for this pod any more (at shutdown too): best effort,
                    # else its lease simply runs out.
                    with contextlib.suppress(RedisError, OSError, TimeoutError):
                        async with asyncio.timeout(0.2):
                            await self.redis.zrem(self.lease_holders_key, self.pod_id)
            await asyncio.sleep(retry_seconds)

    @property
    def leased(self) -> bool:
        """Does this pod hold an L1 lease now (L1 hits served without asking Redis)?"""
        return time.monotonic() < self._lease_until

    def _forget_all(self) -> None:
        """No lease, an empty L1, and no fill in flight may store what it read."""
        self._lease_until = 0.0
        self.l1.clear()
        self._epoch += 1

    def _received(self, channel: bytes, data: bytes) -> None:
        if channel == self.channel.encode():  # `key|writer pod|sequence`
            key, writer, sequence = data.rsplit(b"|", 2)
            self._drop(key.decode())
            if writer != self.pod_id:
                ack = asyncio.create_task(self._ack(writer, sequence))
                self._acks_sent.add(ack)
                ack.add_done_callback(self._acks_sent.discard)
            return
        kind, _, rest = data.partition(b"|")
        if kind == b"ack":  # `ack|sequence|pod`
            sequence, _, pod = rest.partition(b"|")
            wait = self._ack_waits.get(int(sequence))
            if wait is not None:
                wait.ack(pod)
        elif kind == b"hb":  # `hb|monotonic send time|token|token's ms left`
            sent, token, left_ms = rest.split(b"|")
            if not token or int(left_ms) < 0:
                self._lease_until = 0.0
                return
            stamp = token + b":"
            if stamp != self._lease_stamp:  # a new token: every older entry is void
                self._forget_all()
                self._lease_stamp = stamp
            lease_end = float(sent) + self.l1_lease_seconds
            self._lease_until = min(lease_end, float(sent) + int(left_ms) / 1000 - CLOCK_SKEW_SECONDS)

    async def _ack(self, writer: bytes, sequence: bytes) -> None:
        channel = f"{self.namespace}:cache-pod:{writer.decode()}"
        await self._redis("lease", lambda: self.redis.publish(channel, b"ack|%s|%s" % (sequence, self.pod_id)))

    async def _beat(self) -> None:
        lease_ms = int(self.l1_lease_seconds * 1000)

        async def beat() -> object:
            # The send time is read here, just before the script goes out: the lease runs from it.
            sent = repr(time.monotonic())
            return await self._heartbeat(
                keys=[self.trust_key, self.lease_holders_key], args=[self.pod_id, lease_ms, self.pod_channel, sent]
            )

        task = asyncio.current_task()
        while True:
            await self._redis("lease", beat)
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # redis-py may have turned our cancellation into a timeout
            await asyncio.sleep(self.l1_lease_seconds / 4)
