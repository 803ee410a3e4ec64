"""Smoke test of a release on a real cluster, after `helm install`.

Two targets:
- another cluster, when KUBECONFIG or CATALOG_URL is set (or in-cluster): the
  release you installed there, reached through your ingress (the README's
  "Deploy to a cluster" shows the whole run on kind);
- otherwise the local cluster of deploy/cluster (`make cluster`), with the
  release tests/fixtures/cluster.py installs, reached through the API Service's
  ClusterIP from the node; it skips where that cluster cannot start.

Environment (another cluster):

    CATALOG_NAMESPACE   namespace of the release (default: catalog)
    CATALOG_RELEASE     release name (default: catalog)
    CATALOG_URL         base URL through the ingress/gateway (default: http://127.0.0.1)
    CATALOG_HOST        Host header the Ingress/HTTPRoute matches (default: catalog.example.com)
    CATALOG_TIMEOUT     seconds to wait for the rollout (default: 300)
    CATALOG_API_KEY     a key with items:write and jobs:write; the write and job checks skip without it
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from tests.fixtures.cluster import LocalCluster, Release

# On the local cluster the first test also waits for it, the image and the install.
pytestmark = pytest.mark.timeout(1500)

TIMEOUT = float(os.environ.get("CATALOG_TIMEOUT", "300"))
ELSEWHERE = bool(os.environ.get("KUBECONFIG") or os.environ.get("CATALOG_URL"))


@dataclass(frozen=True)
class Target:
    namespace: str
    release: str
    url: str
    headers: dict[str, str]  # Host, for an ingress
    writer_key: str | None

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release}"


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest) -> Target:
    if ELSEWHERE:
        return Target(
            os.environ.get("CATALOG_NAMESPACE", "catalog"),
            os.environ.get("CATALOG_RELEASE", "catalog"),
            os.environ.get("CATALOG_URL", "http://127.0.0.1"),
            {"Host": os.environ.get("CATALOG_HOST", "catalog.example.com")},
            os.environ.get("CATALOG_API_KEY"),
        )
    release: Release = request.getfixturevalue("release")
    return Target(release.namespace, release.name, release.service_url(), {}, release.writer_key)


@pytest.fixture(scope="module")
def api_client(target: Target, request: pytest.FixtureRequest) -> Iterator[client.ApiClient]:
    try:
        if ELSEWHERE:
            config.load_kube_config()  # type: ignore[no-untyped-call]  # the client leaves these untyped
        else:
            local: LocalCluster = request.getfixturevalue("local_cluster")
            config.load_kube_config(config_file=str(local.kubeconfig))  # type: ignore[no-untyped-call]
    except (ConfigException, OSError):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except ConfigException:
            pytest.skip("no Kubernetes cluster configured (KUBECONFIG, ~/.kube/config or in-cluster)")
    api = client.ApiClient()
    try:
        client.VersionApi(api).get_code(_request_timeout=5)
    except (ApiException, HTTPError, OSError) as error:
        pytest.skip(f"the configured cluster does not answer: {error}")
    yield api
    api.close()  # type: ignore[no-untyped-call]


def _eventually(check: Callable[[], str | None], what: str) -> None:
    """Poll until check() returns None (all good); fail with its last complaint."""
    deadline = time.monotonic() + TIMEOUT
    complaint = check()
    while complaint is not None and time.monotonic() < deadline:
        time.sleep(3)
        complaint = check()
    assert complaint is None, f"{what}: {complaint}"


def _items(listing: Any) -> list[Any]:
    """The client's models type every field as optional; these tests read them as plain objects."""
    items: list[Any] = listing.items or []
    return items


def _available(deployment: Any) -> bool:
    conditions = {c.type: c.status for c in deployment.status.conditions or []}
    ready = deployment.status.available_replicas or 0
    return conditions.get("Available") == "True" and ready >= (deployment.spec.replicas or 0)


def test_every_deployment_is_available(api_client: client.ApiClient, target: Target) -> None:
    apps = client.AppsV1Api(api_client)
    names = [
        d.metadata.name
        for d in _items(apps.list_namespaced_deployment(target.namespace, label_selector=target.selector))
    ]
    assert any(name.endswith("-api") for name in names), (
        f"no api Deployment for release {target.release} in {target.namespace}"
    )

    def check() -> str | None:
        deployments = _items(apps.list_namespaced_deployment(target.namespace, label_selector=target.selector))
        waiting = [d.metadata.name for d in deployments if not _available(d)]
        return f"not available yet: {waiting}" if waiting else None

    _eventually(check, "Deployments")


def test_migration_job_succeeded(api_client: client.ApiClient, target: Target) -> None:
    jobs = _items(
        client.BatchV1Api(api_client).list_namespaced_job(
            target.namespace, label_selector=f"{target.selector},app.kubernetes.io/component=migrations"
        )
    )
    assert jobs, "the migration hook Job is kept after success (hook-delete-policy before-hook-creation)"
    for job in jobs:
        assert (job.status.succeeded or 0) >= 1, f"{job.metadata.name}: {job.status}"


def test_api_hpa_exists(api_client: client.ApiClient, target: Target) -> None:
    hpas = _items(
        client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(
            target.namespace, label_selector=target.selector
        )
    )
    targets = {hpa.spec.scale_target_ref.name for hpa in hpas}
    assert any(name.endswith("-api") for name in targets), targets


def test_request_through_the_ingress_or_service_succeeds(api_client: client.ApiClient, target: Target) -> None:
    def check() -> str | None:
        try:
            response = httpx.get(f"{target.url}/readyz", headers=target.headers, timeout=5)
        except httpx.HTTPError as error:
            return repr(error)
        if response.status_code != 200:
            return f"{response.status_code} {response.text[:200]}"
        if "x-request-id" not in response.headers:
            return "no X-Request-ID on the response"
        return None

    _eventually(check, f"GET {target.url}/readyz {target.headers}")
    listing = httpx.get(f"{target.url}/v1/items?limit=1", headers=target.headers, timeout=5)
    assert listing.status_code == 200, listing.text
    # The route reaches the http port only: the metrics port's exposition is not served here.
    metrics = httpx.get(f"{target.url}/metrics", headers=target.headers, timeout=5)
    assert "http_server_request_duration_seconds" not in metrics.text


def _writer(target: Target) -> dict[str, str]:
    if target.writer_key is None:
        pytest.skip("CATALOG_API_KEY is not set: no key to write with on that cluster")
    return {**target.headers, "Authorization": f"Bearer {target.writer_key}"}


def test_an_item_written_with_the_secret_s_key_reads_back(api_client: client.ApiClient, target: Target) -> None:
    headers = _writer(target)
    item = {
        "sku": f"smoke-{uuid.uuid4().hex[:10]}",
        "name": "Smoke test",
        "category": "tools",
        "price_cents": 100,
        "stock": 1,
    }
    created = httpx.post(f"{target.url}/v1/items", json=item, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    fetched = httpx.get(f"{target.url}/v1/items/{created.json()['id']}", headers=target.headers, timeout=10)
    assert fetched.status_code == 200, fetched.text
    assert {key: fetched.json()[key] for key in item} == item


def test_a_job_is_run_by_the_worker(api_client: client.ApiClient, target: Target) -> None:
    headers = _writer(target)
    created = httpx.post(
        f"{target.url}/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 50}}, headers=headers, timeout=10
    )
    assert created.status_code == 202, created.text
    job_url = f"{target.url}/v1/jobs/{created.json()['id']}"

    def done() -> str | None:
        state = httpx.get(job_url, headers=headers, timeout=10).json()["state"]
        return None if state == "succeeded" else f"state {state}"

    _eventually(done, "the worker to run the job")
