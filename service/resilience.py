"""Circuit breaker, dependency calls and bulkhead: stop hammering a dependency that is down; cap heavy work per pod.

A breaker is closed (calls go through) until `failure_threshold` consecutive
calls fail; then it is open for `reset_seconds` (callers fail or degrade at
once, without waiting for a timeout); then one trial call is let through
(half-open): success closes it, failure opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service import tracing
from service.metrics import BREAKER_OPEN, BULKHEAD_REJECTIONS, DEPENDENCY_CALL_DURATION, DEPENDENCY_ERRORS

logger = logging.getLogger(__name__)


async def cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end, cancelling again every second until it does.

    A library that swallows one cancellation (redis-py turns a cancellation that lands as
    its read timeout expires into its own TimeoutError, which a retry loop then catches)
    must not keep shutdown waiting forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task


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


class CircuitOpen(Exception):
    """A dependency_call refused at once: the dependency's breaker is open (not the half-open trial)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(f"{breaker.name} circuit open")
        self.breaker = breaker


class DependencyCall:
    """One kind of call to a dependency (PostgreSQL, Redis), accounted for the same way everywhere.

        with cache_get():              # CircuitOpen at once while the breaker is open
            value = await redis.get(key)

    On the way out, a call that raised one of `failures` counts against the
    breaker and in `dependency_errors_total{dependency,operation}` (the
    exception's type name when `operation` is None); any other ending counts
    as an answer (success). A cancelled call (its request went away) counts as
    neither, and frees the half-open trial slot if it held it. With `timed`,
    the call's seconds go to `dependency_call_duration_seconds` and, when the
    request is traced, to a client span named "<dependency> <operation>". The
    exception itself is re-raised: degrading (the cache) or failing (the
    database) is the caller's choice.

    Built once per (dependency, operation): the metric children are resolved
    here, so a call costs one small object and two clock reads.
    """

    __slots__ = ("breaker", "dependency", "duration", "failures", "operation", "span_attributes", "span_name")

    def __init__(
        self,
        dependency: str,
        operation: str | None,
        breaker: CircuitBreaker,
        failures: tuple[type[BaseException], ...],
        *,
        timed: bool = True,
    ) -> None:
        self.breaker = breaker
        self.failures = failures
        self.duration = DEPENDENCY_CALL_DURATION.labels(dependency, operation) if timed and operation else None
        self.dependency = dependency
        self.operation = operation
        self.span_name = f"{dependency} {operation}"
        self.span_attributes = {"db.system.name": "postgresql" if dependency == "postgres" else dependency}

    def __call__(self) -> DependencyAttempt:
        if not self.breaker.allow():
            raise CircuitOpen(self.breaker)
        return DependencyAttempt(self, trial=self.breaker.is_open)  # let through while open: the half-open trial


class DependencyAttempt:
    __slots__ = ("call", "started", "trial")

    def __init__(self, call: DependencyCall, *, trial: bool) -> None:
        self.call = call
        self.trial = trial
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        call = self.call
        breaker = call.breaker
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            if self.trial:
                breaker.abandon()
            return
        failed = kind is not None and issubclass(kind, call.failures)
        if call.duration is not None:
            elapsed = time.perf_counter() - self.started
            call.duration.observe(elapsed)
            if tracing.enabled and tracing.recording_parent():
                tracing.record_client_span(call.span_name, elapsed, call.span_attributes, error if failed else None)
        if failed:
            breaker.failure()
            DEPENDENCY_ERRORS.labels(call.dependency, call.operation or type(error).__name__).inc()
        else:
            breaker.success()
