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


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("DB_POOL_MAX_SIZE", "²"),
        ("DB_POOL_MAX_SIZE", "\u0663"),  # Arabic-Indic three: int() would take it
        ("DB_POOL_MAX_SIZE", "\uff11"),  # full-width one
        ("DB_POOL_MAX_SIZE", "+1"),
        ("DB_POOL_MAX_SIZE", " 1"),
        ("DB_POOL_MAX_SIZE", "1_0"),
        ("DB_POOL_MAX_SIZE", "1.0"),
        ("DB_POOL_MAX_SIZE", "-1"),
        ("DB_POOL_MAX_SIZE", ""),
        ("MAX_REQUESTS", str(2**63)),
        ("MAX_REQUESTS", "9" * 5000),
        ("PORT", "\u0668\u0660\u0660\u0660"),
        ("REQUEST_TIMEOUT_SECONDS", "\u0661\u0660"),
        ("REQUEST_TIMEOUT_SECONDS", "1_0"),
        ("REQUEST_TIMEOUT_SECONDS", "1e1"),
        ("REQUEST_TIMEOUT_SECONDS", "+10"),
        ("REQUEST_TIMEOUT_SECONDS", "inf"),
        ("REQUEST_TIMEOUT_SECONDS", "nan"),
        ("SHUTDOWN_DRAIN_SECONDS", "-1"),
        ("RATE_LIMIT_READS", "\u0663/minute"),
        ("RATE_LIMIT_READS", "+3/minute"),
        ("RATE_LIMIT_READS", "1_000/minute"),
        ("RATE_LIMIT_READS", "9999999999999/minute"),
    ],
)
def test_numbers_are_ascii_digits_and_a_bad_one_is_named(env: pytest.MonkeyPatch, variable: str, text: str) -> None:
    env.setenv(variable, text)
    [line] = error_lines(env)
    assert line.startswith(f"configuration error: {variable} is invalid:"), line


def test_plain_numbers_still_load(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_POOL_MAX_SIZE", "7")
    env.setenv("REQUEST_TIMEOUT_SECONDS", "12.5")
    env.setenv("SHUTDOWN_DRAIN_SECONDS", "0")
    env.setenv("RATE_LIMIT_READS", "600/minute")
    settings = load_settings()
    assert (settings.db_pool_max_size, settings.request_timeout_seconds) == (7, 12.5)
    assert settings.rate_limit_reads.count == 600


def test_pool_mode_is_session_or_transaction(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_POOL_MODE", "statement")
    [line] = error_lines(env)
    assert line.startswith("configuration error: DATABASE_POOL_MODE is invalid:")
    assert "'session' or 'transaction'" in line


def test_a_direct_url_without_transaction_mode_is_refused_naming_both(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_DIRECT_URL", "postgresql://app@db-rw.internal:5432/catalog")
    [line] = error_lines(env)
    assert "DATABASE_DIRECT_URL" in line
    assert "DATABASE_POOL_MODE=transaction" in line
    env.setenv("DATABASE_POOL_MODE", "transaction")
    settings = load_settings()
    assert settings.session_database_url == "postgresql://app@db-rw.internal:5432/catalog"


def test_where_a_session_is_had(env: pytest.MonkeyPatch) -> None:
    assert load_settings().session_database_url == GOOD["DATABASE_URL"]
    env.setenv("DATABASE_POOL_MODE", "transaction")
    settings = load_settings()
    assert settings.transaction_pooled
    assert settings.session_database_url is None  # the worker polls, migrations lock per transaction


def test_a_malformed_direct_url_names_it(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_POOL_MODE", "transaction")
    env.setenv("DATABASE_DIRECT_URL", "mysql://app@db/catalog")
    [line] = error_lines(env)
    assert line.startswith("configuration error: DATABASE_DIRECT_URL is invalid:")
