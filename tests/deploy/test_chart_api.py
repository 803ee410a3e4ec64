"""The rendered API pod, read as a reviewer would: probes, shutdown arithmetic,
security context, resources, spreading, rollout and what the routes expose."""

from __future__ import annotations

import pytest
import yaml

from tests.fixtures.chart import CHART, Manifest, Rendered, container, defaults, env, name, pod_spec, render

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def api() -> Manifest:
    return defaults().get("Deployment", name("api"))


def test_one_gunicorn_worker_per_pod_on_the_contract_ports() -> None:
    c = container(api(), "api")
    assert c["command"] == ["gunicorn", "-c", "python:service.gunicorn_conf"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "metrics": 9464}
    variables = env(api(), "api")
    assert variables["WEB_CONCURRENCY"] == "1"
    assert variables["PORT"] == "8000"
    assert variables["METRICS_PORT"] == "9464"


def test_three_distinct_probes_on_the_http_port() -> None:
    c = container(api(), "api")
    paths = {kind: c[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/startupz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    assert {c[kind]["httpGet"]["port"] for kind in paths} == {"http"}
    # Liveness must not restart pods while startup is still running or a dependency is down:
    # it is checked less often and tolerates more failures than readiness.
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] > (
        c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"]
    )
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 30


def test_shutdown_arithmetic() -> None:
    spec = pod_spec(api())
    c = container(api(), "api")
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    settings = defaults().get("ConfigMap", name("settings"))["data"]
    graceful = int(settings["GRACEFUL_TIMEOUT_SECONDS"])
    drain = float(settings["SHUTDOWN_DRAIN_SECONDS"])
    assert pre_stop > 0, "the ingress needs time to drop the pod before it stops accepting"
    assert drain + 1 <= graceful, "the drain happens inside the graceful timeout"
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + graceful
    # The edge keeps idle connections shorter than the app does.
    assert int(settings["KEEPALIVE_SECONDS"]) > VALUES["proxy"]["upstreamKeepaliveTimeoutSeconds"]


def test_zero_downtime_rollout() -> None:
    strategy = api()["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1


def test_restricted_pod_security() -> None:
    spec = pod_spec(api())
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec
    assert "hostPID" not in spec
    sc = container(api(), "api")["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001, "the Dockerfile's fixed uid"
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    # The only writable place is an emptyDir on /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container(api(), "api")["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["tmp"]


def test_service_account_token_is_not_mounted() -> None:
    sa = defaults().get("ServiceAccount", name())
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec(api())["serviceAccountName"] == name()


def test_resources_memory_limit_equals_request_and_no_cpu_limit() -> None:
    resources = container(api(), "api")["resources"]
    assert resources["requests"]["cpu"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert "cpu" not in resources["limits"]
    # The reason is written next to the value.
    values_text = (CHART / "values.yaml").read_text()
    assert "No CPU limit by default" in values_text
    assert "throttle" in values_text


def test_spread_across_nodes_and_zones() -> None:
    constraints = pod_spec(api())["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    selector = api()["spec"]["selector"]["matchLabels"]
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"] == selector


def test_hpa_scales_on_cpu_with_slow_scale_down() -> None:
    hpa = defaults().get("HorizontalPodAutoscaler", name("api"))
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == name("api")
    assert hpa["spec"]["minReplicas"] >= 2
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"]
    assert hpa["spec"]["behavior"]["scaleUp"]["policies"]
    assert "replicas" not in api()["spec"], "the HPA owns the replica count"


def test_pdb_selects_the_api_pods() -> None:
    pdb = defaults().get("PodDisruptionBudget", name("api"))
    assert pdb["spec"]["selector"]["matchLabels"] == api()["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_routed_service_exposes_http_only_and_metrics_service_is_headless() -> None:
    service = defaults().get("Service", name("api"))
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http")]
    metrics = defaults().get("Service", name("api-metrics"))
    assert metrics["spec"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["metrics"]


@pytest.mark.parametrize("scenario", ["production-values.yaml", "nginx-inc-values.yaml", "httproute-values.yaml"])
def test_routes_never_reach_the_metrics_port(scenario: str) -> None:
    rendered = render([CHART / "ci" / scenario])
    routed: list[tuple[str, object]] = []
    for ingress in rendered.all("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                routed.append((backend["name"], backend["port"].get("name", backend["port"].get("number"))))
    for route in rendered.all("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            routed += [(ref["name"], ref["port"]) for ref in rule["backendRefs"]]
    assert routed, "the scenario routes traffic"
    service = rendered.get("Service", name("api"))
    for service_name, port in routed:
        assert service_name == name("api")
        assert port in {"http", service["spec"]["ports"][0]["port"]}
        assert port not in {"metrics", 9464}


def test_config_changes_roll_the_pods() -> None:
    def checksum(rendered: Rendered, component: str) -> str:
        annotations = rendered.get("Deployment", name(component))["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    changed_setting = render(set_values={"settings.logLevel": "DEBUG"})
    changed_secret = render(set_values={"secrets.redisUrl": "redis://other:6379/0"})
    for component in ("api", "worker"):
        before = checksum(defaults(), component)
        assert before == checksum(render(), component), "stable when nothing changes"
        assert checksum(changed_setting, component) != before
        assert checksum(changed_secret, component) != before


def test_settings_reach_the_pods_through_configmap_and_secret() -> None:
    c = container(api(), "api")
    sources = [next(iter(source.values()))["name"] for source in c["envFrom"]]
    assert sources == [name("settings"), name("settings")]  # the ConfigMap, then the Secret
    data = defaults().get("ConfigMap", name("settings"))["data"]
    assert data["ENVIRONMENT"] == "production"
    assert data["REQUEST_TIMEOUT_SECONDS"] == "10"
    secret = defaults().get("Secret", name("settings"))
    assert len(secret["stringData"]["SECRET_KEY"]) >= 32


def test_existing_secret_replaces_the_chart_secret() -> None:
    rendered = render(set_values={"secrets.existingSecret": "mine"})
    assert not rendered.has("Secret", name("settings"))
    assert not rendered.has("Secret", name("migrations"))
    c = container(rendered.get("Deployment", name("api")), "api")
    assert {"secretRef": {"name": "mine"}} in c["envFrom"]
    job = rendered.get("Job", name("migrations"))
    assert container(job, "migrations")["envFrom"] == [{"secretRef": {"name": "mine"}}]
