"""Circuit breaker states, dependency calls and the local TTL cache, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from service.cache import LocalTTLCache
from service.resilience import Bulkhead, CircuitBreaker, CircuitOpen, DependencyCall


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker("dep", failure_threshold=3, reset_seconds=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert not breaker.is_open
    breaker.success()  # a success resets the count
    for _ in range(3):
        breaker.failure()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()  # no second one while it is in flight
    breaker.failure()  # the trial failed: open again, for a full period
    assert not breaker.allow()
    clock.now += 5.1
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open
    assert breaker.allow()
    assert breaker.allow()


def test_local_cache_expires_and_evicts_least_recently_used() -> None:
    clock = Clock()
    cache = LocalTTLCache(max_items=2, ttl_seconds=2, clock=clock)
    cache.set("a", b"1")
    cache.set("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recently used
    cache.set("c", b"3")
    assert cache.get("b") is None
    assert cache.get("a") == b"1"
    clock.now += 2.01
    assert cache.get("a") is None
    assert len(cache) == 1  # c is still stored until it is read or evicted
    cache.clear()
    assert len(cache) == 0


def test_bulkhead_refuses_beyond_its_limit_and_frees_on_leave() -> None:
    bulkhead = Bulkhead("export", 2)
    assert bulkhead.try_enter()
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()
    bulkhead.leave()
    assert bulkhead.try_enter()


def test_a_trial_that_never_reports_back_does_not_keep_the_circuit_open() -> None:
    """The half-open trial's request was cancelled: neither success() nor failure() ever came."""
    clock = Clock()
    breaker = CircuitBreaker("dep", failure_threshold=1, reset_seconds=2, clock=clock)
    breaker.failure()
    clock.now += 2
    assert breaker.allow()  # the trial goes out... and its caller is cancelled
    assert not breaker.allow()  # one trial at a time
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # abandoned after reset_seconds: a new trial
    breaker.success()
    assert not breaker.is_open


def test_an_abandoned_trial_frees_the_slot_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker("dep", failure_threshold=1, reset_seconds=2, clock=clock)
    breaker.failure()
    clock.now += 2
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()
    assert breaker.is_open  # abandoning says nothing about the dependency


def _errors(operation: str) -> float:
    value = REGISTRY.get_sample_value("dependency_errors_total", {"dependency": "unit", "operation": operation})
    return value or 0.0


def test_a_dependency_call_accounts_for_failures_answers_and_cancellations() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failure_threshold=2, reset_seconds=5, clock=clock)
    call = DependencyCall("unit", "op", breaker, (OSError,))
    before = _errors("op")
    for _ in range(2):
        with pytest.raises(ConnectionResetError), call():
            raise ConnectionResetError  # an OSError: the dependency failed
    assert _errors("op") == before + 2
    assert breaker.is_open
    with pytest.raises(CircuitOpen):
        call()  # refused at once, nothing attempted
    clock.now += 5
    with pytest.raises(asyncio.CancelledError), call():
        raise asyncio.CancelledError  # the half-open trial's request went away: neither answer
    assert breaker.is_open
    with pytest.raises(KeyError), call():  # the next caller gets the trial; a non-failure ending is an answer
        raise KeyError("not the dependency's fault")
    assert not breaker.is_open
    assert _errors("op") == before + 2


def test_a_dependency_call_without_an_operation_counts_errors_by_type() -> None:
    breaker = CircuitBreaker("unit", failure_threshold=5, reset_seconds=5)
    before = _errors("TimeoutError")
    with pytest.raises(TimeoutError), DependencyCall("unit", None, breaker, (OSError,), timed=False)():
        raise TimeoutError
    assert _errors("TimeoutError") == before + 1
