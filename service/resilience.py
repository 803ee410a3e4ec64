"""Circuit breaker and bulkhead: stop hammering a dependency that is down; cap heavy work per pod.

A breaker is closed (calls go through) until `failure_threshold` consecutive
calls fail; then it is open for `reset_seconds` (callers fail or degrade at
once, without waiting for a timeout); then one trial call is let through
(half-open): success closes it, failure opens it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.metrics import BREAKER_OPEN, BULKHEAD_REJECTIONS

logger = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._trial_started_at = 0.0
        BREAKER_OPEN.labels(name).set(0)

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call be attempted now? (In half-open state, only one trial at a time.)

        A trial that reports neither success nor failure within `reset_seconds`
        (its request was cancelled, its client left) is abandoned: the next caller
        gets a trial, so one cancelled request cannot keep the circuit open for good.
        """
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at < self.reset_seconds:
            return False
        if self._trial_in_flight and now - self._trial_started_at < self.reset_seconds:
            return False
        self._trial_in_flight = True
        self._trial_started_at = now
        return True

    def abandon(self) -> None:
        """The call `allow()` let through ended without an answer (cancelled): free the trial slot."""
        self._trial_in_flight = False

    def success(self) -> None:
        if self._opened_at is not None:
            logger.info("circuit closed", extra={"dependency": self.name})
            BREAKER_OPEN.labels(self.name).set(0)
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def failure(self) -> None:
        self._failures += 1
        reopen = self._trial_in_flight
        self._trial_in_flight = False
        if reopen or (self._opened_at is None and self._failures >= self.failure_threshold):
            if self._opened_at is None:
                logger.warning("circuit opened", extra={"dependency": self.name, "failures": self._failures})
                BREAKER_OPEN.labels(self.name).set(1)
            self._opened_at = self._clock()


class Bulkhead:
    """At most `limit` concurrent holders per process; `try_enter` never waits (one event loop, no lock)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_use = 0
        BULKHEAD_REJECTIONS.labels(name)  # the series exists (at 0) before the first rejection

    def try_enter(self) -> bool:
        if self.in_use >= self.limit:
            BULKHEAD_REJECTIONS.labels(self.name).inc()
            return False
        self.in_use += 1
        return True

    def leave(self) -> None:
        self.in_use -= 1
