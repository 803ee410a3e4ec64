"""The worker as rendered: its image and command, resources, grace and PDB, its concurrency,
and how it scales (HPA, or KEDA on ready jobs); the minimal scenario runs without it."""

from __future__ import annotations

import re

import pytest

from service.config import api_connections, worker_connections, worker_pool_max_size
from tests.fixtures.chart import (
    ALL_CRDS,
    CI,
    RELEASE,
    Manifest,
    container,
    defaults,
    env,
    name,
    pod_spec,
    render,
    template,
)

WORKER_CONTRACT_ENV = {"WORKER_CONCURRENCY", "WORKER_SHUTDOWN_GRACE_SECONDS", "METRICS_PORT"}


def worker() -> Manifest:
    return defaults().get("Deployment", name("worker"))


def test_worker_runs_the_same_image_with_the_worker_command() -> None:
    api_image = container(defaults().get("Deployment", name("api")), "api")["image"]
    c = container(worker(), "worker")
    assert c["image"] == api_image
    assert c["command"] == ["python", "-m", "service.worker"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9464}
    assert env(worker(), "worker").keys() >= WORKER_CONTRACT_ENV
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["path"] for p in probes.values()} == {"/startupz", "/readyz", "/livez"}
    assert {p["port"] for p in probes.values()} == {"metrics"}


def test_worker_has_its_own_resources_longer_grace_and_pdb() -> None:
    api_spec = pod_spec(defaults().get("Deployment", name("api")))
    spec = pod_spec(worker())
    variables = env(worker(), "worker")
    assert spec["terminationGracePeriodSeconds"] > api_spec["terminationGracePeriodSeconds"]
    assert spec["terminationGracePeriodSeconds"] >= int(variables["WORKER_SHUTDOWN_GRACE_SECONDS"]) + 5
    resources = container(worker(), "worker")["resources"]
    assert resources != container(defaults().get("Deployment", name("api")), "api")["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    pdb = defaults().get("PodDisruptionBudget", name("worker"))
    assert pdb["spec"]["selector"]["matchLabels"] == worker()["spec"]["selector"]["matchLabels"]
    assert container(worker(), "worker")["securityContext"]["readOnlyRootFilesystem"] is True


def test_worker_concurrency_follows_the_cpu_request() -> None:
    assert env(worker(), "worker")["WORKER_CONCURRENCY"] == "1"
    budget = {"database.connectionBudget": 200}  # more slots per worker pod: more connections
    for cpu, expected in (("2500m", "3"), ("3", "3"), ("250m", "1")):
        rendered = render(set_values={"worker.resources.requests.cpu": cpu, **budget})
        worker_env = env(rendered.get("Deployment", name("worker")), "worker")
        assert worker_env["WORKER_CONCURRENCY"] == expected, cpu
        # Its own pool: a connection per slot + 3, not the API's DB_POOL_MAX_SIZE from the ConfigMap.
        assert worker_env["DB_POOL_MAX_SIZE"] == str(int(expected) + 3), cpu
    explicit = render(set_values={"worker.concurrency": 5, **budget})
    assert env(explicit.get("Deployment", name("worker")), "worker")["WORKER_CONCURRENCY"] == "5"


def test_worker_scales_with_an_hpa_by_default() -> None:
    hpa = defaults().get("HorizontalPodAutoscaler", name("worker"))
    assert hpa["spec"]["scaleTargetRef"]["name"] == name("worker")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "ScaledObject" not in defaults().kinds()


def test_keda_scales_the_worker_on_ready_jobs_instead_of_the_hpa() -> None:
    rendered = render([CI / "keda-values.yaml"])
    assert not rendered.has("HorizontalPodAutoscaler", name("worker"))
    assert rendered.has("HorizontalPodAutoscaler", name("api"))
    scaled = rendered.get("ScaledObject", name("worker"))
    assert scaled["spec"]["scaleTargetRef"]["name"] == name("worker")
    assert scaled["spec"]["minReplicaCount"] == 0
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    assert "FROM jobs" in query
    assert "'queued', 'failed'" in query
    assert "run_at <= now()" in query
    auth = rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": name("settings"), "key": "DATABASE_URL"}
    ]
    assert "replicas" not in rendered.get("Deployment", name("worker"))["spec"]


@pytest.mark.parametrize("scaler", ["worker.keda.enabled", "worker.autoscaling.enabled"])
def test_either_worker_scaler_turned_on_with_default_values_renders_within_the_connection_budget(scaler: str) -> None:
    """A documented toggle flipped on the defaults renders: with KEDA's old maxReplicas (10) the
    connection-budget guard refused it (133 connections against 110)."""
    rendered = render(set_values={scaler: True})
    kind = "ScaledObject" if "keda" in scaler else "HorizontalPodAutoscaler"
    assert rendered.has(kind, name("worker"))


def test_keda_without_its_crd_falls_back_to_the_hpa() -> None:
    without_keda = [api for api in ALL_CRDS if not api.startswith("keda.sh")]
    rendered = render([CI / "keda-values.yaml"], api_versions=without_keda)
    assert "ScaledObject" not in rendered.kinds()
    assert rendered.has("HorizontalPodAutoscaler", name("worker"))


def test_minimal_scenario_has_fixed_replicas_and_no_worker() -> None:
    rendered = render([CI / "minimal-values.yaml"])
    api = rendered.get("Deployment", name("api"))
    assert api["spec"]["replicas"] == 2
    assert container(api, "api")["image"].endswith(
        "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert {obj["metadata"]["name"] for obj in rendered.all("Deployment")} == {name("api")}
    assert "NetworkPolicy" not in rendered.kinds()
    assert "Job" not in rendered.kinds()


def test_the_connection_numbers_are_the_ones_the_service_computes() -> None:
    """DB_POOL_MAX_SIZE and the connection guard's per-pod counts follow service/config.py's functions."""
    for slots in (1, 3, 7):
        rendered = render(set_values={"worker.concurrency": slots, "database.connectionBudget": 1000})
        assert env(rendered.get("Deployment", name("worker")), "worker")["DB_POOL_MAX_SIZE"] == str(
            worker_pool_max_size(slots)
        )
        refused = template((), {"worker.concurrency": slots, "database.connectionBudget": 1}, ALL_CRDS, RELEASE)
        assert refused.returncode != 0
        numbers = {
            key: int(value)
            for key, value in re.findall(
                r"(api max replicas \+ surge|settings\.dbPoolMaxSize|worker max replicas \+ surge) \((\d+)\)",
                refused.stderr,
            )
        }
        total = (
            numbers["api max replicas + surge"] * api_connections(numbers["settings.dbPoolMaxSize"])
            + numbers["worker max replicas + surge"] * worker_connections(slots)
            + 1  # the migration job
        )
        assert f"= {total};" in refused.stderr, refused.stderr
        exact = render(set_values={"worker.concurrency": slots, "database.connectionBudget": total})
        assert exact.has("Deployment", name("worker"))
