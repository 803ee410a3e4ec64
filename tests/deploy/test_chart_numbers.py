"""Numbers reach environment variables and manifest fields as written.

helm reads every number in a values file as a float64, and Go's default
formatting of a float64 writes 1000000 as "1e+06": a pod given
CACHE_L1_MAX_ITEMS=1e+06 exits at startup, and a field such as
`terminationGracePeriodSeconds: 1e+06` is refused. `--set` reads integers as
int64 instead, so both paths are rendered and compared here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import chart
from tests.fixtures.chart import Manifest, Rendered, container, pod_spec

# Numbers written the way a user writes them, where each one lands, and the text it must render as.
EXTRA_ENV = {
    "CACHE_L1_MAX_ITEMS": 1000000,
    "BIG_INT": 123456789012,
    "TEN_MILLION": 10000000,
    "HALF": 0.5,
    "SMALL": 0.001,
    "ZERO": 0,
    "NEGATIVE": -7,
    "WORDS": "1.0e+06",  # a string stays the string it is
}
VALUES: dict[str, Any] = {
    "secrets": {"databaseUrl": "postgresql://catalog@db.example.internal/catalog"},
    "settings": {
        "extraEnv": EXTRA_ENV,
        "maxBodyBytes": 10000000,
        "requestTimeoutSeconds": 12.5,
        "redisCommandTimeoutSeconds": 0.25,
        "shutdownDrainSeconds": 2.5,
        "gracefulTimeoutSeconds": 1000,
    },
    "api": {
        "extraEnv": {"API_ONLY": 2000000},
        "replicas": 1000000,
        "preStopSleepSeconds": 100,
        "terminationGracePeriodSeconds": 1000000,
        "autoscaling": {"enabled": False},
        "startupProbe": {"failureThreshold": 1000000},
        "service": {"port": 65535},
        "resources": {"requests": {"cpu": 0.5, "memory": 1000000000}, "limits": {"memory": 1000000000}},
    },
    "worker": {
        "extraEnv": {"WORKER_ONLY": 3000000},
        "autoscaling": {"enabled": False},
        "replicas": 2000000,
        "concurrency": 200,
        "shutdownGraceSeconds": 1000000,
        "terminationGracePeriodSeconds": 1000005,
        "jobTimeoutSeconds": 86400000,
        "jobLeaseSeconds": 1000000,
        "jobMaxAttempts": 1000000,
        "resources": {"requests": {"cpu": 1.5, "memory": "512Mi"}, "limits": {"memory": "512Mi"}},
    },
    "migrations": {"activeDeadlineSeconds": 1000000, "backoffLimit": 1000000},
    "database": {"port": 65432, "connectionBudget": 1000000000},
    "ingress": {"enabled": True, "rateLimit": {"requestsPerSecond": 1000000, "burstMultiplier": 1000000}},
}
# The same values on the command line. `--set` reads integers as int64 and anything else as a
# string, so the fields the schema wants as numbers take their decimals through `--set-json`.
SET_JSON_FLAGS = [
    "settings.requestTimeoutSeconds=12.5",
    "settings.redisCommandTimeoutSeconds=0.25",
    "settings.shutdownDrainSeconds=2.5",
    "api.resources.requests.cpu=0.5",
    "worker.resources.requests.cpu=1.5",
]
SET_FLAGS = [
    "secrets.databaseUrl=postgresql://catalog@db.example.internal/catalog",
    *(f"settings.extraEnv.{k}={v}" for k, v in EXTRA_ENV.items() if not isinstance(v, str)),
    "settings.extraEnv.WORDS=1.0e+06",
    "settings.maxBodyBytes=10000000",
    "settings.gracefulTimeoutSeconds=1000",
    "api.extraEnv.API_ONLY=2000000",
    "api.replicas=1000000",
    "api.preStopSleepSeconds=100",
    "api.terminationGracePeriodSeconds=1000000",
    "api.autoscaling.enabled=false",
    "api.startupProbe.failureThreshold=1000000",
    "api.service.port=65535",
    "api.resources.requests.memory=1000000000",
    "api.resources.limits.memory=1000000000",
    "worker.extraEnv.WORKER_ONLY=3000000",
    "worker.autoscaling.enabled=false",
    "worker.replicas=2000000",
    "worker.concurrency=200",
    "worker.shutdownGraceSeconds=1000000",
    "worker.terminationGracePeriodSeconds=1000005",
    "worker.jobTimeoutSeconds=86400000",
    "worker.jobLeaseSeconds=1000000",
    "worker.jobMaxAttempts=1000000",
    "migrations.activeDeadlineSeconds=1000000",
    "migrations.backoffLimit=1000000",
    "database.port=65432",
    "database.connectionBudget=1000000000",
    "ingress.enabled=true",
    "ingress.rateLimit.requestsPerSecond=1000000",
    "ingress.rateLimit.burstMultiplier=1000000",
]
# Scientific notation anywhere in a rendered manifest (a number or a quoted value).
EXPONENT = re.compile(r"(?<![\w.])-?\d+(\.\d+)?[eE][+-]?\d+(?![\w.])")


def _from_values_file(tmp_path: Path) -> Rendered:
    path = tmp_path / "numbers-values.yaml"
    path.write_text(yaml.safe_dump(VALUES))
    return chart.render([path])


def _from_set_flags() -> Rendered:
    args = [arg for flag in SET_FLAGS for arg in ("--set", flag)]
    args += [arg for flag in SET_JSON_FLAGS for arg in ("--set-json", flag)]
    return chart.parse(chart.helm("template", chart.RELEASE, str(chart.CHART), "--namespace", chart.NAMESPACE, *args))


def _env(workload: Manifest, name: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(workload, name).get("env", []) if "value" in item}


def _check(rendered: Rendered) -> None:
    config = rendered.get("ConfigMap", chart.name("settings"))["data"]
    api = rendered.get("Deployment", chart.name("api"))
    worker = rendered.get("Deployment", chart.name("worker"))
    job = rendered.get("Job", chart.name("migrations"))
    expected_env = {
        "CACHE_L1_MAX_ITEMS": "1000000",
        "BIG_INT": "123456789012",
        "TEN_MILLION": "10000000",
        "HALF": "0.5",
        "SMALL": "0.001",
        "ZERO": "0",
        "NEGATIVE": "-7",
        "WORDS": "1.0e+06",
        "MAX_BODY_BYTES": "10000000",
        "REQUEST_TIMEOUT_SECONDS": "12.5",
        "REDIS_COMMAND_TIMEOUT_SECONDS": "0.25",
        "SHUTDOWN_DRAIN_SECONDS": "2.5",
        "GRACEFUL_TIMEOUT_SECONDS": "1000",
        "JOB_MAX_ATTEMPTS": "1000000",
    }
    for key, value in expected_env.items():
        assert config[key] == value, (key, config[key])
    migration_env = _env(job, "migrations")
    for key, value in expected_env.items():
        assert migration_env[key] == value, (key, migration_env[key])
    assert _env(api, "api")["API_ONLY"] == "2000000"
    worker_env = _env(worker, "worker")
    assert worker_env["WORKER_ONLY"] == "3000000"
    assert worker_env["WORKER_CONCURRENCY"] == "200"
    assert worker_env["DB_POOL_MAX_SIZE"] == "203"
    assert worker_env["WORKER_SHUTDOWN_GRACE_SECONDS"] == "1000000"
    assert worker_env["JOB_TIMEOUT_SECONDS"] == "86400000"
    assert worker_env["JOB_LEASE_SECONDS"] == "1000000"

    assert api["spec"]["replicas"] == 1000000
    assert worker["spec"]["replicas"] == 2000000
    assert pod_spec(api)["terminationGracePeriodSeconds"] == 1000000
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == 1000005
    assert container(api, "api")["startupProbe"]["failureThreshold"] == 1000000
    assert container(api, "api")["resources"]["requests"] == {"cpu": 0.5, "memory": 1000000000}
    assert container(worker, "worker")["resources"]["requests"]["cpu"] == 1.5
    assert job["spec"]["activeDeadlineSeconds"] == 1000000
    assert job["spec"]["backoffLimit"] == 1000000
    assert rendered.get("Service", chart.name("api"))["spec"]["ports"][0]["port"] == 65535
    ingress = rendered.get("Ingress", chart.name("api"))["metadata"]["annotations"]
    assert ingress["nginx.ingress.kubernetes.io/limit-rps"] == "1000000"
    assert ingress["nginx.ingress.kubernetes.io/limit-burst-multiplier"] == "1000000"
    netpol_ports = [
        port["port"]
        for rule in rendered.get("NetworkPolicy", chart.name("api"))["spec"]["egress"]
        for port in rule.get("ports", [])
    ]
    assert 65432 in netpol_ports
    # Nowhere else either: WORDS (a string the user wrote that way, in the ConfigMap and the job) aside.
    found = [m[0] for m in EXPONENT.finditer(rendered.text)]
    assert found == ["1.0e+06", "1.0e+06"], found


def test_numbers_from_a_values_file_render_as_written(tmp_path: Path) -> None:
    _check(_from_values_file(tmp_path))


def test_numbers_from_set_render_as_written() -> None:
    _check(_from_set_flags())


def test_both_paths_render_the_same_manifests(tmp_path: Path) -> None:
    from_file = _from_values_file(tmp_path)
    from_set = _from_set_flags()
    assert from_file.get("ConfigMap", chart.name("settings")) == from_set.get("ConfigMap", chart.name("settings"))
    for kind, component in [("Deployment", "api"), ("Deployment", "worker"), ("Job", "migrations")]:
        a = pod_spec(from_file.get(kind, chart.name(component)))
        b = pod_spec(from_set.get(kind, chart.name(component)))
        # The checksum of the values differs (the values are the same, their types are not).
        assert a == b, component
    assert [o["metadata"]["name"] for o in from_file.objects] == [o["metadata"]["name"] for o in from_set.objects]
