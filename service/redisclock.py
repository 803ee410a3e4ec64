"""Redis's clock, read through this pod's monotonic clock: the one clock every pod shares.

What pods share through Redis must not depend on their wall clocks agreeing: a pod whose
clock ran 30 s ahead counted its rate-limit windows under other keys than its peers (the
write limit admitted 240 of 120 a minute), and one 3 s behind set the cache's trust token
to expire in the past, so every entry it vouched for died (the other pod's cache hits went
from 10 of 10 to 0). Wall clocks differ in practice: NTP slews and steps, VMs pause.

So each pod asks Redis for its time (`TIME`), timing the round trip with `time.monotonic()`:
Redis read its clock somewhere inside that round trip, so from then on Redis's clock is known
to within half the round trip, widened by MAX_DRIFT (how fast two clocks may run apart, 500
ppm: NTP's largest slew) for the time since. The pod samples every RESAMPLE_SECONDS and keeps
the sample that bounds Redis's clock most tightly. A pod's own wall clock plays no part.

**Tolerance.** Pods' wall clocks may be off by any amount. Two pods' estimates of Redis's
clock differ by at most the sum of their uncertainties: half a TIME round trip each (well
under a millisecond on a LAN) plus 5 ms of drift at most between samples. Rate-limit windows
therefore start and end within a few milliseconds of each other on every pod (`now()`); the
trust token's expiry is computed from the lower bound (`earliest()`), so it never outlives
its lease however slow the round trip was: a slow one only makes it end early. Until the
first sample (Redis unreachable since start) `now()` is the wall clock: the limiter fails
open without Redis anyway, and nothing is written to Redis that depends on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import redis.asyncio as redis
from redis.exceptions import RedisError

from service.resilience import CircuitBreaker, CircuitOpen, DependencyCall

logger = logging.getLogger(__name__)

MAX_DRIFT: Final = 500e-6  # seconds per second two clocks may run apart (NTP slews at most 500 ppm)
RESAMPLE_SECONDS: Final = 10.0
_FAILURES: Final = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class Sample:
    """Redis said `redis_seconds` at some monotonic instant between `sent` and `received`."""

    redis_seconds: float
    sent: float
    received: float

    def bounds(self, at: float) -> tuple[float, float]:
        """(earliest, latest) Redis time at monotonic instant `at` (>= received)."""
        drift = MAX_DRIFT * (at - self.sent)
        return self.redis_seconds + (at - self.received) - drift, self.redis_seconds + (at - self.sent) + drift


class RedisClock:
    """Redis's time on this pod; `sample()` reads it, `keep_synced()` keeps reading it (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        breaker: CircuitBreaker,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self._call = DependencyCall("redis", "time", breaker, _FAILURES)
        self._monotonic = monotonic
        self._wall = wall
        self._sample: Sample | None = None

    @property
    def synced(self) -> bool:
        return self._sample is not None

    def uncertainty(self) -> float | None:
        """Seconds between the earliest and latest Redis time possible now; None before the first sample."""
        if self._sample is None:
            return None
        earliest, latest = self._sample.bounds(self._monotonic())
        return latest - earliest

    def now(self, at: float | None = None) -> float:
        """Redis's clock (unix seconds) at monotonic instant `at` (default: now), the middle of its bounds.

        The wall clock before the first sample (see the module docstring)."""
        at = self._monotonic() if at is None else at
        if self._sample is None:
            return self._wall() - (self._monotonic() - at)
        earliest, latest = self._sample.bounds(at)
        return (earliest + latest) / 2

    def earliest(self, at: float | None = None) -> float | None:
        """The earliest Redis's clock can read at monotonic instant `at`; None before the first sample."""
        if self._sample is None:
            return None
        return self._sample.bounds(self._monotonic() if at is None else at)[0]

    async def sample(self) -> bool:
        """Read Redis's TIME once; keep it if it bounds the clock more tightly. False if Redis is unreachable."""
        try:
            with self._call():
                sent = self._monotonic()
                seconds, microseconds = await self.client.time()
                received = self._monotonic()
        except (CircuitOpen, *_FAILURES):
            return False
        fresh = Sample(seconds + microseconds / 1e6, sent, received)
        if self._sample is None:
            self._sample = fresh
            return True
        held_low, held_high = self._sample.bounds(received)
        fresh_low, fresh_high = fresh.bounds(received)
        # Tighter, or the held one cannot be right any more (Redis's own clock was stepped).
        if fresh_high - fresh_low <= held_high - held_low or fresh_high < held_low or fresh_low > held_high:
            self._sample = fresh
        return True

    async def keep_synced(self, every: float = RESAMPLE_SECONDS) -> None:
        """Run for the life of the process: sample every `every` seconds (every second until the first succeeds)."""
        while True:
            await self.sample()
            await asyncio.sleep(every if self.synced else min(every, 1.0))
