"""The worker, the migration hook, autoscaling choices, the ways in, network
policy and the CRD gating, each as rendered."""

from __future__ import annotations

import functools

from tests.deploy.chart import ALL_CRDS, CHART, Manifest, Rendered, container, env, name, pod_spec, render

CI = CHART / "ci"
WORKER_CONTRACT_ENV = {"WORKER_CONCURRENCY", "WORKER_SHUTDOWN_GRACE_SECONDS", "METRICS_PORT"}


@functools.cache
def defaults() -> Rendered:
    return render()


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


def test_keda_without_its_crd_falls_back_to_the_hpa() -> None:
    without_keda = [api for api in ALL_CRDS if not api.startswith("keda.sh")]
    rendered = render([CI / "keda-values.yaml"], api_versions=without_keda)
    assert "ScaledObject" not in rendered.kinds()
    assert rendered.has("HorizontalPodAutoscaler", name("worker"))


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook() -> None:
    job = defaults().get("Job", name("migrations"))
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert container(job, "migrations")["command"] == ["python", "-m", "service.migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert container(job, "migrations")["securityContext"]["readOnlyRootFilesystem"] is True
    # Its Secret is a hook too, created before it (lower weight), since the release's Secret does not exist yet.
    [secret_ref] = container(job, "migrations")["envFrom"]
    secret = defaults().get("Secret", secret_ref["secretRef"]["name"])
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    # The settings are in the job's own env: the ConfigMap is not there yet on first install.
    config = defaults().get("ConfigMap", name("settings"))["data"]
    job_env = env(job, "migrations")
    assert {key: job_env[key] for key in config} == config


def test_ingress_nginx_annotations_follow_the_timeout_chain() -> None:
    rendered = render([CI / "production-values.yaml"])
    ingress = rendered.get("Ingress", name("api"))
    annotations = ingress["metadata"]["annotations"]
    config = rendered.get("ConfigMap", name("settings"))["data"]
    read = int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert read > float(config["REQUEST_TIMEOUT_SECONDS"]) > float(config["DB_STATEMENT_TIMEOUT_SECONDS"])
    assert float(config["REQUEST_TIMEOUT_SECONDS"]) > float(config["REDIS_COMMAND_TIMEOUT_SECONDS"])
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-connect-timeout"]) < read
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1024k"  # MAX_BODY_BYTES
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "catalog-tls"


def test_f5_nginx_ingress_annotations() -> None:
    ingress = render([CI / "nginx-inc-values.yaml"]).get("Ingress", name("api"))
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.org/proxy-read-timeout"] == "30s"
    assert annotations["nginx.org/client-max-body-size"] == "1024k"
    assert not any(key.startswith("nginx.ingress.kubernetes.io/") for key in annotations)


def test_httproute_timeouts_follow_the_chain() -> None:
    rendered = render([CI / "httproute-values.yaml"])
    route = rendered.get("HTTPRoute", name("api"))
    [rule] = route["spec"]["rules"]
    assert rule["timeouts"]["backendRequest"] == "30s"
    assert int(rule["timeouts"]["request"].rstrip("s")) >= 30
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert "Ingress" not in rendered.kinds()
    without = render(set_values={"httpRoute.enabled": True})
    [plain_rule] = without.get("HTTPRoute", name("api"))["spec"]["rules"]
    assert "timeouts" not in plain_rule, "off by default: NGINX Gateway Fabric does not implement them"


def _ports(rule: Manifest) -> set[object]:
    return {port["port"] for port in rule.get("ports", [])}


def test_network_policy_only_the_ingress_controller_reaches_http() -> None:
    rendered = render([CI / "production-values.yaml"])
    policy = rendered.get("NetworkPolicy", name("api"))
    api = rendered.get("Deployment", name("api"))
    assert policy["spec"]["podSelector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    by_port = {frozenset(_ports(rule)): rule["from"] for rule in policy["spec"]["ingress"]}
    assert by_port[frozenset({"http"})] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert frozenset({"metrics"}) in by_port
    assert len(by_port) == 2


def test_network_policy_egress_is_dns_postgres_and_redis_only() -> None:
    rendered = render([CI / "production-values.yaml"])
    api_egress = rendered.get("NetworkPolicy", name("api"))["spec"]["egress"]
    assert [_ports(rule) for rule in api_egress] == [{53}, {5432}, {6379}]
    assert api_egress[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    assert api_egress[2]["to"] == [{"ipBlock": {"cidr": "10.20.1.0/24"}}]
    worker_policy = rendered.get("NetworkPolicy", name("worker"))
    assert [_ports(rule) for rule in worker_policy["spec"]["egress"]] == [{53}, {5432}], "the worker needs no Redis"
    assert [_ports(rule) for rule in worker_policy["spec"]["ingress"]] == [{"metrics"}]


def test_extra_egress_reaches_a_collector_from_the_api_and_the_worker() -> None:
    collector = {"to": [{"podSelector": {"matchLabels": {"app": "otel-collector"}}}], "ports": [{"port": 4318}]}
    rendered = render(
        set_values={
            "networkPolicy.extraEgress[0].to[0].podSelector.matchLabels.app": "otel-collector",
            "networkPolicy.extraEgress[0].ports[0].port": 4318,
        }
    )
    for component in ("api", "worker"):
        egress = rendered.get("NetworkPolicy", name(component))["spec"]["egress"]
        assert egress[-1] == collector, component


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


def _references(pod: Manifest) -> set[tuple[str, str]]:
    refs: set[tuple[str, str]] = set()
    if "serviceAccountName" in pod:
        refs.add(("ServiceAccount", pod["serviceAccountName"]))
    for c in pod["containers"] + pod.get("initContainers", []):
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                refs.add(("Secret", source["secretRef"]["name"]))
            if "configMapRef" in source:
                refs.add(("ConfigMap", source["configMapRef"]["name"]))
        for variable in c.get("env", []):
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in variable.get("valueFrom", {}):
                    refs.add((kind, variable["valueFrom"][key]["name"]))
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
    return refs


def test_hooks_only_reference_what_exists_before_the_release() -> None:
    """A pre-install hook runs before the release's own objects exist: it may use
    hook objects with a lower weight, or objects the user brings, nothing else."""
    for values in ([], *[[path] for path in sorted(CI.glob("*-values.yaml"))]):
        rendered = render(values)
        release_objects = {
            (obj["kind"], obj["metadata"]["name"])
            for obj in rendered.objects
            if "helm.sh/hook" not in obj["metadata"].get("annotations", {})
        }
        for job in rendered.all("Job"):
            weight = int(job["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
            for ref in _references(pod_spec(job)):
                assert ref not in release_objects, f"{job['metadata']['name']} needs {ref}, created after the hook"
                hooks = [o for o in rendered.all(ref[0]) if o["metadata"]["name"] == ref[1]]
                for hook in hooks:
                    assert int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight, ref
    brought = render(set_values={"serviceAccount.create": False, "serviceAccount.name": "mine"})
    assert pod_spec(brought.get("Job", name("migrations")))["serviceAccountName"] == "mine"
