"""Settings: the one typed configuration object, read from the environment only.

Every variable the service understands is a field below; the Helm chart
(also under `tilt up`: the Tiltfile deploys it with deploy/kind/dev-values.yaml)
and `make up` set the same names. `load_settings()` turns a
validation failure into one line per bad variable, so a pod that starts with
a broken environment says exactly which variable to fix.
"""

from __future__ import annotations

import enum
import re
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Annotated, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    RedisDsn,
    SecretStr,
    UrlConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import MultiHostUrl
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from service.numbers import ascii_decimal, ascii_int

# A well-known key is acceptable only in development, where `make up` and the
# tests run; production must bring its own.
_DEV_SECRET_KEY = "development-only-secret-key-change-me"  # noqa: S105 - refused in production

Seconds = Annotated[float, Field(gt=0, le=3600)]
# asyncpg speaks only the plain schemes (no SQLAlchemy-style "+driver" suffix).
PostgresUrl = Annotated[
    MultiHostUrl,
    UrlConstraints(allowed_schemes=["postgres", "postgresql"], host_required=True),
]


# Every scope an API key can carry; a key with an unknown scope is a configuration error.
SCOPES = frozenset({"items:read", "items:write", "jobs:read", "jobs:write"})
_RATE = re.compile(r"([0-9]{1,12})/(second|minute|hour)")  # [0-9]: \d would take "٣"
_PERIODS = {"second": 1, "minute": 60, "hour": 3600}


class ApiKeySpec(BaseModel):
    """One API key as configured: its name, the SHA-256 of the key, and its scopes. Never the key."""

    model_config = {"extra": "forbid", "frozen": True}

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[str]

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: frozenset[str]) -> frozenset[str]:
        unknown = scopes - SCOPES
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}")
        return scopes


# Signature algorithms a token may use: asymmetric only. An HMAC algorithm would make the
# issuer's published key a signing secret (anyone could forge with it); "none" signs nothing.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


def check_algorithms(algorithms: list[str]) -> list[str]:
    """`algorithms` when all are asymmetric JWS algorithms; ValueError naming the refused ones otherwise."""
    if not algorithms:
        raise ValueError(f"name at least one of {sorted(ASYMMETRIC_ALGORITHMS)}")
    refused = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
    if refused:
        raise ValueError(
            f"{refused} refused: only asymmetric algorithms are allowed ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}); "
            "HS* would turn the issuer's public key into a signing secret and 'none' verifies nothing"
        )
    return algorithms


def check_issuer_url(url: str) -> str:
    """`url` if it can be an OpenID issuer: https (http only on loopback), a host, no query or fragment.

    Kept exactly as given: a token's `iss` must equal it character for character.
    """
    parsed = urlsplit(url)
    if parsed.scheme not in {"https", "http"} or not parsed.hostname:
        raise ValueError("expected an https:// URL, e.g. https://login.example.com/realms/catalog")
    if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK_HOSTS:
        raise ValueError("must be https:// (plain http is accepted only for a loopback issuer in tests)")
    if parsed.query or parsed.fragment:
        raise ValueError("must not have a query or fragment")
    return url


class Rate(BaseModel):
    """A rate limit such as "120/minute": `count` requests per `period_seconds`."""

    model_config = {"frozen": True}

    count: int = Field(ge=1)
    period_seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{self.period_seconds}s"


def _parse_rate(value: object) -> object:
    if isinstance(value, str):
        match = _RATE.fullmatch(value)
        if match is None:
            raise ValueError('expected "<count>/<second|minute|hour>", e.g. "120/minute"')
        return {"count": int(match[1]), "period_seconds": _PERIODS[match[2]]}
    return value


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class PoolMode(enum.StrEnum):
    """What DATABASE_URL reaches: PostgreSQL (or a session-mode pooler), or a transaction-mode pooler."""

    SESSION = "session"
    TRANSACTION = "transaction"


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class CommonSettings(BaseSettings):
    """What the API and the worker both read: identity, logging, PostgreSQL, the metrics port."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    environment: Environment = Environment.PRODUCTION
    service_name: str = Field("catalog-api", min_length=1, max_length=63)
    log_level: LogLevel = LogLevel.INFO

    # PostgreSQL: the system of record.
    database_url: PostgresUrl
    # `transaction`: DATABASE_URL goes through a transaction-mode pooler (PgBouncer, CloudNativePG's
    # Pooler, a managed pooler): no startup parameters but application_name, no statement cache,
    # no session state (service/db.py). What needs a session (the worker's LISTEN, the migration
    # lock) uses DATABASE_DIRECT_URL when given, else falls back to polling and a per-transaction lock.
    database_pool_mode: PoolMode = PoolMode.SESSION
    database_direct_url: PostgresUrl | None = None
    db_pool_min_size: int = Field(1, ge=0, le=100)
    db_pool_max_size: int = Field(10, ge=1, le=100)
    db_connect_timeout_seconds: Seconds = 5.0
    db_pool_acquire_timeout_seconds: Seconds = 2.0
    db_statement_timeout_seconds: Seconds = 5.0

    # Prometheus metrics on their own port, never through the ingress (0 turns them off).
    # The worker serves its probes on this port too.
    metrics_port: int = Field(9464, ge=0, le=65535)

    # Jobs: attempts allowed per job, stamped on each job when it is enqueued.
    job_max_attempts: int = Field(5, ge=1, le=100)

    @model_validator(mode="after")
    def _check_database(self) -> Self:
        if self.database_direct_url is not None and self.database_pool_mode is PoolMode.SESSION:
            raise ValueError(
                "DATABASE_DIRECT_URL is only used with DATABASE_POOL_MODE=transaction (DATABASE_URL already "
                "gives a session): set DATABASE_POOL_MODE=transaction if DATABASE_URL goes through a "
                "transaction-mode pooler, or unset DATABASE_DIRECT_URL"
            )
        return self

    @property
    def transaction_pooled(self) -> bool:
        """DATABASE_URL goes through a transaction-mode pooler (DATABASE_POOL_MODE=transaction)."""
        return self.database_pool_mode is PoolMode.TRANSACTION

    @property
    def session_database_url(self) -> str | None:
        """Where a session can be had (LISTEN, session advisory locks): DATABASE_URL in session mode,
        DATABASE_DIRECT_URL in transaction mode, None when transaction mode has no direct URL."""
        if not self.transaction_pooled:
            return str(self.database_url)
        return str(self.database_direct_url) if self.database_direct_url is not None else None

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_ascii(cls, value: object, info: ValidationInfo) -> object:
        """A number from the environment is ASCII digits (pydantic alone takes "+1", " 1", "1_000", "1.0")."""
        if info.field_name is None or not isinstance(value, str):
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if annotation is int:
            return ascii_int(value)
        if annotation is float:
            return ascii_decimal(value)
        return value


class Settings(CommonSettings):
    """Configuration of the API process."""

    # Redis: cache and rate limits; never the only copy of anything.
    redis_url: RedisDsn
    redis_connect_timeout_seconds: Seconds = 1.0
    redis_command_timeout_seconds: Seconds = 0.5

    # Share of fast successful requests that get an access line (errors and slow ones always do).
    access_log_sample_rate: float = Field(1.0, ge=0, le=1)

    # HTTP behaviour.
    max_body_bytes: int = Field(1_048_576, ge=1024, le=100 * 1_048_576)
    max_request_line_bytes: int = Field(8190, ge=256, le=65536)
    max_header_count: int = Field(100, ge=10, le=1000)
    max_header_bytes: int = Field(16384, ge=1024, le=262144)
    readiness_timeout_seconds: Seconds = 1.0
    docs_enabled: bool | None = None
    # Development only: `X-Profile: 1` on a request stores its pyinstrument profile (service/profiling.py).
    request_profiling: bool = False
    request_profiling_dir: Path = Path(tempfile.gettempdir()) / "catalog-profiles"
    secret_key: SecretStr = SecretStr(_DEV_SECRET_KEY)
    # The whole request, from arrival to the first response byte; exceeding it is a 503.
    request_timeout_seconds: Seconds = 10.0
    security_headers: bool = True
    hsts_max_age_seconds: int = Field(0, ge=0, le=63072000)
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    # Peers whose X-Forwarded-For is believed (the ingress controller, nginx); CIDRs allowed.
    trusted_proxies: Annotated[list[str], NoDecode] = ["127.0.0.1", "::1"]

    # API keys (JSON list of {"name", "sha256", "scopes"}); make one with `python -m service.apikeys`.
    api_keys: list[ApiKeySpec] = []
    reads_require_key: bool = False

    # Access tokens from an OpenID provider, beside API keys (service/oidc.py, docs/identity.md).
    # Unset issuer: tokens are not accepted. Discovery and the JWKS are fetched at startup and cached.
    oidc_issuer_url: str | None = None
    oidc_audience: str | None = None
    # Claims whose values become scopes ("scope" and "scp": space-separated or a list; a dotted
    # path such as "realm_access.roles" reaches into an object), mapped by OIDC_SCOPE_MAP
    # (a JSON object: value -> list of our scopes). Empty map: a value that is one of ours counts as itself.
    oidc_scope_claims: Annotated[list[str], NoDecode] = ["scope"]
    oidc_scope_map: dict[str, frozenset[str]] = {}
    oidc_algorithms: Annotated[list[str], NoDecode] = ["RS256"]
    oidc_leeway_seconds: float = Field(30.0, ge=0, le=300)
    # The cached JWKS is refetched this often (a removed key is refused at most this long after),
    # and an unknown `kid` triggers at most one extra fetch per OIDC_JWKS_MIN_REFETCH_SECONDS.
    oidc_jwks_refresh_seconds: Seconds = 300.0
    oidc_jwks_min_refetch_seconds: Seconds = 30.0
    oidc_http_timeout_seconds: Seconds = 2.0

    # Rate limits, counted in Redis so they hold across pods; per API key, else per client IP.
    rate_limit_enabled: bool = True
    rate_limit_reads: Annotated[Rate, NoDecode] = Rate(count=1200, period_seconds=60)
    rate_limit_writes: Annotated[Rate, NoDecode] = Rate(count=120, period_seconds=60)
    rate_limit_fail_open: bool = True
    # Far from its limit a counter is counted in the pod and reconciled with Redis in the
    # background; each pod may admit at most floor(limit x share) requests Redis has not
    # confirmed, so the limit holds across pods within pods x that (service/ratelimit.py).
    rate_limit_local_share: float = Field(0.01, ge=0, le=0.1)
    rate_limit_sync_seconds: float = Field(0.5, ge=0.01, le=60)

    # Item cache: in-process L1 in front of Redis L2.
    cache_enabled: bool = True
    cache_l1_ttl_seconds: Seconds = 2.0
    cache_l1_max_items: int = Field(10000, ge=1, le=10_000_000)
    # While a pod holds an L1 lease its L1 hits do no I/O; a write waits for every holder to drop
    # the key, at most this long when one does not answer. 0: every L1 hit is checked in Redis.
    cache_l1_lease_seconds: float = Field(0.5, ge=0, le=10)
    cache_l2_ttl_seconds: Seconds = 60.0

    # Circuit breakers: after this many consecutive failures a dependency is not called
    # for `breaker_reset_seconds`, then one trial call decides.
    breaker_failure_threshold: int = Field(3, ge=1, le=1000)
    breaker_reset_seconds: Seconds = 2.0

    # Bulkhead: concurrent CSV exports per pod; more get 503 at once.
    export_max_concurrent: int = Field(2, ge=1, le=100)
    # An export holds a slot and a database connection while its client reads; one whose client has
    # not read it all by then is cut off (the client sees a truncated body, never a complete one).
    export_max_seconds: Seconds = 300.0

    # Server (read by service/gunicorn_conf.py). The chain: the proxy's
    # upstream keep-alive (60 s) < keepalive; drain + in-flight budget <
    # graceful timeout < the pod's termination grace period.
    host: str = "0.0.0.0"  # noqa: S104 - a pod listens on all its interfaces
    port: int = Field(8000, ge=1, le=65535)
    # Exactly one worker per pod (checked below): see `_one_worker_per_pod`.
    web_concurrency: int = 1
    keepalive_seconds: int = Field(75, ge=1, le=3600)
    graceful_timeout_seconds: int = Field(30, ge=1, le=3600)
    worker_timeout_seconds: int = Field(60, ge=1, le=3600)
    shutdown_drain_seconds: float = Field(5.0, ge=0, le=600)
    # Recycling guards against slow leaks, but with one worker per pod each recycle is
    # a pause of about a second for that pod (the new worker boots): keep it rare.
    max_requests: int = Field(200_000, ge=0)
    max_requests_jitter: int = Field(20_000, ge=0)

    _rates = field_validator("rate_limit_reads", "rate_limit_writes", mode="before")(_parse_rate)

    @field_validator("web_concurrency")
    @classmethod
    def _one_worker_per_pod(cls, value: int) -> int:
        # A second worker would need its own metrics port (the first holds METRICS_PORT), a
        # multiprocess registry to keep counters right, and probes that answer for every worker.
        if value != 1:
            raise ValueError(
                "must be 1: one worker process per pod (metrics, probes and the drain are per process); "
                "scale with replicas instead"
            )
        return value

    _lists = field_validator(
        "cors_allow_origins", "trusted_proxies", "oidc_scope_claims", "oidc_algorithms", mode="before"
    )(_comma_list)

    @field_validator("oidc_issuer_url")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else check_issuer_url(value.strip())

    @field_validator("oidc_algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        return check_algorithms(algorithms)

    @field_validator("oidc_scope_map")
    @classmethod
    def _map_onto_known_scopes(cls, mapping: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        for source, scopes in mapping.items():
            unknown = scopes - SCOPES
            if unknown:
                raise ValueError(f"{source!r} maps onto unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}")
        return mapping

    @model_validator(mode="after")
    def _check_invariants(self) -> Self:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        if self.shutdown_drain_seconds + 1 > self.graceful_timeout_seconds:
            raise ValueError(
                "GRACEFUL_TIMEOUT_SECONDS must exceed SHUTDOWN_DRAIN_SECONDS by at least 1 s "
                "so in-flight requests can finish after the drain"
            )
        if self.request_timeout_seconds <= self.db_statement_timeout_seconds:
            raise ValueError(
                "REQUEST_TIMEOUT_SECONDS must exceed DB_STATEMENT_TIMEOUT_SECONDS so a slow query "
                "is cancelled by PostgreSQL before the request budget runs out"
            )
        self._check_oidc()
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("API_KEYS has two keys with the same name")
        if self.environment is Environment.PRODUCTION and self.request_profiling:
            raise ValueError(
                "REQUEST_PROFILING must be false when ENVIRONMENT=production: a profile exposes the code's "
                "internals to any client that asks and slows the request it profiles"
            )
        if self.environment is Environment.PRODUCTION:
            secret = self.secret_key.get_secret_value()
            if secret == _DEV_SECRET_KEY or len(secret) < 32:
                raise ValueError(
                    "SECRET_KEY must be set to a random value of at least 32 characters when ENVIRONMENT=production"
                )
        return self

    def _check_oidc(self) -> None:
        if self.oidc_issuer_url and not self.oidc_audience:
            raise ValueError(
                "OIDC_AUDIENCE must be set when OIDC_ISSUER_URL is: without an audience check a token "
                "the issuer made for any other application would be accepted here"
            )
        if self.oidc_jwks_min_refetch_seconds > self.oidc_jwks_refresh_seconds:
            raise ValueError("OIDC_JWKS_MIN_REFETCH_SECONDS must not exceed OIDC_JWKS_REFRESH_SECONDS")

    @cached_property
    def openapi_enabled(self) -> bool:
        if self.docs_enabled is not None:
            return self.docs_enabled
        return self.environment is Environment.DEVELOPMENT

    @property
    def in_flight_budget_seconds(self) -> float:
        """Time left after the drain for in-flight requests and closing pools."""
        return max(self.graceful_timeout_seconds - self.shutdown_drain_seconds - 1.0, 1.0)


# A pod's PostgreSQL connections, as the chart's connection budget counts them. A worker pod: one
# per slot (each job's outcome is written on its own), plus the claim loop, the heartbeat and the
# upkeep (reaper, pruner, queue gauges) in the pool, plus the LISTEN connection outside it. The
# chart computes the same numbers in _helpers.tpl (catalog.workerPoolMaxSize,
# catalog.workerConnections, catalog.apiConnections); tests/deploy/test_chart_worker.py keeps the
# two equal.
WORKER_POOL_EXTRA_CONNECTIONS = 3
WORKER_LISTEN_CONNECTIONS = 1
# An API pod's: its request pool (DB_POOL_MAX_SIZE) plus the one connection /readyz has to itself
# (service/db.py create_probe_pool); the chart's catalog.apiConnections says the same.
API_PROBE_CONNECTIONS = 1


def api_connections(pool_max_size: int) -> int:
    """Every connection an API pod opens with DB_POOL_MAX_SIZE=`pool_max_size`."""
    return pool_max_size + API_PROBE_CONNECTIONS


def worker_pool_max_size(slots: int) -> int:
    """The worker's pool size for `slots` job processes (DB_POOL_MAX_SIZE=0, the default)."""
    return slots + WORKER_POOL_EXTRA_CONNECTIONS


def worker_connections(slots: int) -> int:
    """Every connection a worker pod with `slots` job processes opens: its pool and its LISTEN."""
    return worker_pool_max_size(slots) + WORKER_LISTEN_CONNECTIONS


class WorkerSettings(CommonSettings):
    """Configuration of the worker process (`python -m service.worker`); it needs no Redis."""

    service_name: str = Field("catalog-worker", min_length=1, max_length=63)
    db_pool_min_size: int = Field(1, ge=0, le=100)
    db_pool_max_size: int = Field(0, ge=0, le=100)  # 0: worker_pool_max_size(slots)

    # Child processes running jobs; 0 means one per CPU the pod may use (cgroup quota and affinity).
    worker_concurrency: int = Field(0, ge=0, le=256)
    # LISTEN/NOTIFY wakes the worker at once; this poll is the fallback, and how often
    # expired leases are reclaimed, so a lost job is runnable again within lease + poll.
    worker_poll_interval_seconds: Seconds = 2.0
    # A claimed job is leased for this long and the lease is renewed every third of it.
    job_lease_seconds: Seconds = 30.0
    # Hard limit for one attempt: past it the child process is killed.
    job_timeout_seconds: Seconds = 300.0
    job_retry_base_seconds: Seconds = 2.0
    job_retry_max_seconds: Seconds = 600.0
    # Finished jobs (succeeded, dead, cancelled) are deleted this long after they finish.
    job_retention_hours: float = Field(168.0, gt=0, le=24 * 366)
    # On SIGTERM: stop claiming, give running jobs this long, then kill and release them.
    # The pod's terminationGracePeriodSeconds must exceed it.
    worker_shutdown_grace_seconds: float = Field(60.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _check_worker_invariants(self) -> Self:
        if self.job_lease_seconds < 3 * self.worker_poll_interval_seconds / 2:
            raise ValueError("JOB_LEASE_SECONDS must be at least 1.5 x WORKER_POLL_INTERVAL_SECONDS")
        if self.job_retry_base_seconds > self.job_retry_max_seconds:
            raise ValueError("JOB_RETRY_BASE_SECONDS must not exceed JOB_RETRY_MAX_SECONDS")
        if self.db_pool_max_size and self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self


_S = TypeVar("_S", bound=CommonSettings)


class ConfigurationError(SystemExit):
    """Raised (and exits the process) when the environment is invalid."""


def _describe(error: ValidationError) -> str:
    """One line per problem, naming the environment variable to fix."""
    lines = []
    for item in error.errors(include_url=False):
        if not item["loc"]:  # a cross-field rule: its message names the variables
            lines.append(f"configuration error: {item['msg'].removeprefix('Value error, ')}")
            continue
        name = str(item["loc"][0]).upper()
        problem = (
            "is required but not set"
            if item["type"] == "missing"
            else f"is invalid: {item['msg'].removeprefix('Value error, ')}"
        )
        lines.append(f"configuration error: {name} {problem}")
    return "\n".join(lines)


def load_settings() -> Settings:
    """Read the API's settings from the environment; exit with a clear message if they are invalid."""
    return load_settings_of(Settings)


def load_worker_settings() -> WorkerSettings:
    """Read the worker's settings from the environment; exit with a clear message if they are invalid."""
    return load_settings_of(WorkerSettings)


def load_settings_of(cls: type[_S]) -> _S:
    """Read `cls` from the environment; exit with one line per bad variable."""
    try:
        return cls()  # type: ignore[call-arg]
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None
    except SettingsError as error:  # a value that should be JSON is not
        field = re.search(r'field "(\w+)"', str(error))
        name = field[1].upper() if field else "a setting"
        raise ConfigurationError(f"configuration error: {name} is invalid: not valid JSON") from None
