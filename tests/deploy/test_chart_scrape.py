"""Scrape objects (ServiceMonitor, PodMonitor): rendered only when asked for and the CRDs exist,
with the release label and the job names the rules select on."""

from __future__ import annotations

from tests.fixtures.chart import ALL_CRDS, CI, defaults, name, render


def test_monitoring_objects_need_values_and_crds() -> None:
    monitoring_kinds = {"ServiceMonitor", "PodMonitor"}
    assert not monitoring_kinds & defaults().kinds(), "off by default"
    on = [CI / "production-values.yaml"]
    assert monitoring_kinds <= render(on).kinds()
    no_operator = [api for api in ALL_CRDS if not api.startswith("monitoring.coreos.com")]
    assert not monitoring_kinds & render(on, api_versions=no_operator).kinds()


def test_scrape_objects_carry_the_release_label_and_the_contract_job_names() -> None:
    rendered = render([CI / "production-values.yaml"])
    monitor = rendered.get("ServiceMonitor", name("api"))
    pod_monitor = rendered.get("PodMonitor", name("worker"))
    for obj in (monitor, pod_monitor):
        assert obj["metadata"]["labels"]["release"] == "prometheus"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "catalog-api"} in endpoint["relabelings"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    metrics_service = rendered.get("Service", name("api-metrics"))
    routed_service = rendered.get("Service", name("api"))
    assert selected.items() <= metrics_service["metadata"]["labels"].items()
    assert not selected.items() <= routed_service["metadata"]["labels"].items()
    [pod_endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "catalog-worker"} in pod_endpoint["relabelings"]
