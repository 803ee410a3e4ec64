"""Smoke test of a release on a real cluster, after `helm install`.

Runs where a kubeconfig (KUBECONFIG or ~/.kube/config) or an in-cluster
service account is available, and skips otherwise. The README's "Deploy to a
cluster" section shows the whole run on kind. Environment:

    CATALOG_NAMESPACE   namespace of the release (default: catalog)
    CATALOG_RELEASE     release name (default: catalog)
    CATALOG_URL         base URL through the ingress/gateway (default: http://127.0.0.1)
    CATALOG_HOST        Host header the Ingress/HTTPRoute matches (default: catalog.example.com)
    CATALOG_TIMEOUT     seconds to wait for the rollout (default: 300)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

NAMESPACE = os.environ.get("CATALOG_NAMESPACE", "catalog")
RELEASE = os.environ.get("CATALOG_RELEASE", "catalog")
URL = os.environ.get("CATALOG_URL", "http://127.0.0.1")
HOST = os.environ.get("CATALOG_HOST", "catalog.example.com")
TIMEOUT = float(os.environ.get("CATALOG_TIMEOUT", "300"))
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"


@pytest.fixture(scope="module")
def api_client() -> Iterator[client.ApiClient]:
    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]  # the client leaves these untyped
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


def test_every_deployment_is_available(api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    names = [d.metadata.name for d in _items(apps.list_namespaced_deployment(NAMESPACE, label_selector=SELECTOR))]
    assert any(name.endswith("-api") for name in names), f"no api Deployment for release {RELEASE} in {NAMESPACE}"

    def check() -> str | None:
        deployments = _items(apps.list_namespaced_deployment(NAMESPACE, label_selector=SELECTOR))
        waiting = [d.metadata.name for d in deployments if not _available(d)]
        return f"not available yet: {waiting}" if waiting else None

    _eventually(check, "Deployments")


def test_migration_job_succeeded(api_client: client.ApiClient) -> None:
    jobs = _items(
        client.BatchV1Api(api_client).list_namespaced_job(
            NAMESPACE, label_selector=f"{SELECTOR},app.kubernetes.io/component=migrations"
        )
    )
    assert jobs, "the migration hook Job is kept after success (hook-delete-policy before-hook-creation)"
    for job in jobs:
        assert (job.status.succeeded or 0) >= 1, f"{job.metadata.name}: {job.status}"


def test_api_hpa_exists(api_client: client.ApiClient) -> None:
    hpas = _items(
        client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(
            NAMESPACE, label_selector=SELECTOR
        )
    )
    targets = {hpa.spec.scale_target_ref.name for hpa in hpas}
    assert any(name.endswith("-api") for name in targets), targets


def test_request_through_the_ingress_succeeds(api_client: client.ApiClient) -> None:
    def check() -> str | None:
        try:
            response = httpx.get(f"{URL}/readyz", headers={"Host": HOST}, timeout=5)
        except httpx.HTTPError as error:
            return repr(error)
        if response.status_code != 200:
            return f"{response.status_code} {response.text[:200]}"
        if "x-request-id" not in response.headers:
            return "no X-Request-ID on the response"
        return None

    _eventually(check, f"GET {URL}/readyz (Host: {HOST})")
    listing = httpx.get(f"{URL}/v1/items?limit=1", headers={"Host": HOST}, timeout=5)
    assert listing.status_code == 200, listing.text
    # The route reaches the http port only: the metrics port's exposition is not served here.
    metrics = httpx.get(f"{URL}/metrics", headers={"Host": HOST}, timeout=5)
    assert "http_server_request_duration_seconds" not in metrics.text
