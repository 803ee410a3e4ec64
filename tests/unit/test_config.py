"""Settings: validated at startup, one clear line naming each bad variable."""

from __future__ import annotations

import os

import pytest

from service.config import ConfigurationError, Environment, load_settings

GOOD = {
    "DATABASE_URL": "postgresql://app@db.internal:5432/catalog",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "ENVIRONMENT": "development",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def error_lines(env: pytest.MonkeyPatch) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    return str(caught.value.code).splitlines()


def test_good_environment_loads(env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.environment is Environment.DEVELOPMENT
    assert settings.web_concurrency == 1
    assert settings.openapi_enabled


def test_missing_database_url_names_it(env: pytest.MonkeyPatch) -> None:
    env.delenv("DATABASE_URL")
    assert error_lines(env) == ["configuration error: DATABASE_URL is required but not set"]


@pytest.mark.parametrize(
    "bad", ["not a url", "mysql://app@db/catalog", "postgresql+asyncpg://app@db/catalog", "postgresql:///catalog"]
)
def test_malformed_database_url_names_it(env: pytest.MonkeyPatch, bad: str) -> None:
    env.setenv("DATABASE_URL", bad)
    [line] = error_lines(env)
    assert line.startswith("configuration error: DATABASE_URL is invalid:")


def test_secrets_in_a_bad_url_are_not_echoed(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "mysql://app:hunter2-secret@db/catalog")
    assert "hunter2" not in "\n".join(error_lines(env))


def test_every_bad_variable_is_reported_at_once(env: pytest.MonkeyPatch) -> None:
    env.delenv("REDIS_URL")
    env.setenv("DB_POOL_MAX_SIZE", "zero")
    env.setenv("LOG_LEVEL", "LOUD")
    lines = error_lines(env)
    assert len(lines) == 3
    assert {line.split()[2] for line in lines} == {"REDIS_URL", "DB_POOL_MAX_SIZE", "LOG_LEVEL"}


def test_production_refuses_the_development_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("ENVIRONMENT", "production")
    [line] = error_lines(env)
    assert "SECRET_KEY" in line
    env.setenv("SECRET_KEY", "x" * 40)
    settings = load_settings()
    assert not settings.openapi_enabled


def test_drain_must_leave_time_for_in_flight_requests(env: pytest.MonkeyPatch) -> None:
    env.setenv("SHUTDOWN_DRAIN_SECONDS", "30")
    env.setenv("GRACEFUL_TIMEOUT_SECONDS", "30")
    [line] = error_lines(env)
    assert "GRACEFUL_TIMEOUT_SECONDS" in line
    assert "SHUTDOWN_DRAIN_SECONDS" in line


def test_pool_bounds_are_checked(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_POOL_MIN_SIZE", "20")
    env.setenv("DB_POOL_MAX_SIZE", "10")
    [line] = error_lines(env)
    assert "DB_POOL_MIN_SIZE" in line
