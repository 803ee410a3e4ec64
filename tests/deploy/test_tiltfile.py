"""The Tiltfile, evaluated for real (starlark-pyo3) with recorded Tilt built-ins (tests/fixtures/tilt.py):
every path it names exists; every chart workload it configures is in the chart rendered with
the development values by the real helm, and every object ends up in a resource; dependencies
run backends -> migrations -> API/worker; port forwards reach container ports; live update
syncs to where the image keeps the code and the chart's file watcher looks; the remote charts
are pinned and wired to the names our chart expects; it loads nothing from outside the
repository. Three variants: kind with the HPAs, kind with --keda, and the cluster of
`make cluster` (--platform=none, host backends, images imported). Tilt itself runs in
tests/tilt/ where that cluster runs.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import starlark
import yaml

from tests.fixtures import tilt
from tests.fixtures.chart import Manifest, helm
from tests.fixtures.paths import ROOT

# Variant -> (Tiltfile arguments, kubectl context).
VARIANTS: dict[str, tuple[dict[str, object], str]] = {
    "hpa": ({}, "kind-catalog"),
    "keda": ({"keda": True}, "kind-catalog"),
    "cluster": ({}, tilt.CLUSTER_CONTEXT),
}
# Files every run of the Tiltfile must reference (a check that the path collection below works).
EXPECTED_PATHS = {
    "Dockerfile",
    "deploy/helm/catalog",
    "deploy/kind/catalog-values.yaml",
    "deploy/kind/dev-values.yaml",
    "deploy/kind/backends.yaml",
    "deploy/nginx/ingress-nginx-values.yaml",
    "deploy/kind/ingress-nginx-values.yaml",
    "deploy/kind/kube-prometheus-stack-values.yaml",
    "deploy/kind/load_burst.py",
    "tests/cluster",
    "service",
}
SEMVER = re.compile(r"\d+\.\d+\.\d+")


@functools.cache
def _evaluate(variant: str | bool) -> tilt.Evaluation:
    """The Tiltfile evaluated as `variant` (True/False: kind with or without --keda)."""
    if isinstance(variant, bool):
        variant = "keda" if variant else "hpa"
    flags, context = VARIANTS[variant]
    return tilt.evaluate(flags, context)


@functools.cache
def _assembled(variant: str | bool) -> tuple[dict[str, tilt.Resource], list[Manifest]]:
    return tilt.assemble(_evaluate(variant))


@pytest.fixture(params=[False, True], ids=["hpa", "keda"])
def keda(request: pytest.FixtureRequest) -> bool:
    flag: bool = request.param
    return flag


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _docker_build() -> tilt.Call:
    [build] = _evaluate(False).named("docker_build")
    return build


def _steps(kind: str) -> list[tilt.Step]:
    return [step for step in _docker_build().kwargs["live_update"] if step.kind == kind]


def _helm_install(call: tilt.Call) -> dict[str, Any]:
    """What the `helm upgrade --install` of a k8s_custom_deploy does: release, chart, namespace, version, values."""
    command: list[str] = call.kwargs["apply_cmd"]
    start = command.index("helm")
    assert command[start : start + 3] == ["helm", "upgrade", "--install"], command
    words = command[start + 3 :]

    def options(flag: str) -> list[str]:
        return [words[i + 1] for i, word in enumerate(words) if word == flag]

    [namespace], [version] = options("--namespace"), options("--version")
    return {
        "release": words[0],
        "chart": words[1],
        "namespace": namespace,
        "version": version,
        "values": options("--values"),
        "context": options("--kube-context"),
        "words": words,
    }


def _releases(variant: str | bool) -> dict[str, dict[str, Any]]:
    return {call.args[0]: _helm_install(call) for call in _evaluate(variant).named("k8s_custom_deploy")}


def _referenced_paths(evaluation: tilt.Evaluation) -> set[str]:
    """Every repository path the Tiltfile hands to Tilt, helm, kubectl or a command."""
    paths = {str(Path(p).relative_to(ROOT)) if Path(p).is_absolute() else p for p in evaluation.paths}
    [build] = evaluation.named("docker_build") or evaluation.named("custom_build")
    if build.name == "docker_build":
        paths |= {build.arg(1, "context"), build.kwargs["dockerfile"], *build.kwargs["only"]}
    for step in build.kwargs["live_update"]:
        if step.kind == "fall_back_on":
            paths |= set(step.args[0])
        elif step.kind == "sync":
            paths.add(step.args[0])
        elif step.kind == "run":
            paths |= set(step.kwargs.get("trigger", []))
    for command in evaluation.helm_commands:
        paths.add(command[3])  # helm template RELEASE CHART
        paths |= {command[i + 1] for i, word in enumerate(command) if word == "--values"}
    for call in evaluation.named("custom_build"):
        paths |= set(call.kwargs["deps"])
        paths |= set(re.findall(r"deploy/\S+", call.arg(1, "command")))
    for call in evaluation.named("k8s_custom_deploy"):
        paths |= set(call.kwargs.get("deps", []))
        paths |= set(_helm_install(call)["values"])
    for call in evaluation.named("local_resource"):
        paths |= {word for word in call.kwargs.get("cmd", []) if re.match(r"(deploy|tests|service|monitoring)/", word)}
        # (serve_cmd may hold kubectl arguments such as service/NAME, which are not paths.)
        paths |= {word for word in call.kwargs.get("serve_cmd", []) if re.match(r"(deploy|tests|monitoring)/", word)}
    paths.discard(".tools/uv/bin/uv")  # optional: `make install` puts uv there when none is on PATH
    paths.discard(".run/tilt/backends")  # made by the backends it holds
    return paths


# --- It evaluates, and what it references exists ---------------------------------------------------


def test_the_tiltfile_evaluates_with_and_without_keda(keda: bool) -> None:
    evaluation = _evaluate(keda)
    assert evaluation.named("version_settings")[0].kwargs["constraint"] == ">=0.37.0 <0.38.0"
    assert len(evaluation.helm_commands) == 1
    assert evaluation.objects, "the chart and the backends were handed to k8s_yaml"


def test_it_refuses_any_cluster_but_the_kind_one_and_make_clusters() -> None:
    with pytest.raises(starlark.StarlarkError, match=r"make kind-up.*make cluster"):
        tilt.evaluate(context="kind-somebody-elses")
    with pytest.raises(starlark.StarlarkError, match="make cluster"):
        tilt.evaluate(context="production-eu")
    # Tilt refuses a context it does not know as local unless allowed: exactly make cluster's.
    assert [c.args for c in _evaluate("cluster").named("allow_k8s_contexts")] == [(tilt.CLUSTER_CONTEXT,)]
    assert _evaluate("hpa").named("allow_k8s_contexts") == [], "kind contexts are local to Tilt already"


def test_every_path_it_references_exists(variant: str) -> None:
    paths = _referenced_paths(_evaluate(variant))
    if variant != "cluster":
        assert paths >= EXPECTED_PATHS, EXPECTED_PATHS - paths
    else:
        cluster_files = {f"deploy/cluster/{name}" for name in ("tilt-values.yaml", "tilt-image.sh", "tilt_backends.py")}
        assert paths >= cluster_files, cluster_files - paths
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert missing == []


def test_it_loads_nothing_from_outside_the_repository(variant: str) -> None:
    """No ext:// extension (fetched from GitHub at load time) and no extension repository."""
    evaluation = _evaluate(variant)
    assert evaluation.loads == {}
    assert "ext://" not in tilt.TILTFILE.read_text()
    assert not [call for call in evaluation.calls if call.name.startswith("v1alpha1.")]


# --- Resources: the chart's workloads, nothing uncategorized, the right order ------------------------


def _chart_workloads(variant: str | bool) -> set[str]:
    """The workloads of the chart rendered by the real helm exactly as the Tiltfile asks."""
    [command] = _evaluate(variant).helm_commands
    result = helm(*command[1:])
    assert result.returncode == 0, result.stderr
    return {
        obj["metadata"]["name"]
        for obj in yaml.safe_load_all(result.stdout)
        if obj and obj["kind"] in tilt.WORKLOAD_KINDS
    }


def test_every_k8s_resource_names_a_workload_of_the_chart_or_the_backends(variant: str) -> None:
    evaluation = _evaluate(variant)
    backends = {
        obj["metadata"]["name"]
        for obj in yaml.safe_load_all((ROOT / "deploy/kind/backends.yaml").read_text())
        if obj["kind"] in tilt.WORKLOAD_KINDS
    }
    releases = {call.args[0] for call in evaluation.named("k8s_custom_deploy")}
    named = {call.arg(0, "workload", "") for call in evaluation.named("k8s_resource")} - {""} - releases
    chart = _chart_workloads(variant)
    assert chart == {"catalog-api", "catalog-worker", "catalog-migrations"}
    expected = chart if variant == "cluster" else chart | backends  # make cluster: backends on the host
    assert named == expected, "each workload is configured (labels, dependencies), and only those"


def test_every_object_belongs_to_a_labelled_resource(variant: str) -> None:
    resources, uncategorized = _assembled(variant)
    assert [f"{obj['kind']}/{obj['metadata']['name']}" for obj in uncategorized] == [], (
        "Tilt would show them as uncategorized"
    )
    for resource in resources.values():
        assert resource.options.get("labels"), f"{resource.name} has no label group"
    k8s = [r for r in resources.values() if r.kind == "k8s"]
    assert sum(len(r.objects) for r in k8s) == len(_evaluate(variant).objects)


def _assert_dependencies_exist(resources: dict[str, tilt.Resource]) -> None:
    for resource in resources.values():
        for dep in resource.options.get("resource_deps", []):
            assert dep in resources, f"{resource.name} depends on unknown {dep}"
        assert resource.name not in _depends_on(resources, resource.name), f"{resource.name} depends on itself"


def _depends_on(resources: dict[str, tilt.Resource], name: str) -> set[str]:
    """Every resource `name` waits for, directly or not."""
    seen: set[str] = set()
    todo = list(resources[name].options.get("resource_deps", []))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo += resources[dep].options.get("resource_deps", [])
    return seen


def test_dependencies_exist_and_run_backends_then_migrations_then_the_app(keda: bool) -> None:
    resources, _ = _assembled(keda)
    _assert_dependencies_exist(resources)
    assert {"postgres", "catalog-config", "namespaces"} <= _depends_on(resources, "migrations")
    for app in ("api", "worker"):
        assert "migrations" in _depends_on(resources, app)
    assert "redis" in _depends_on(resources, "api")
    # The Ingress goes with the API; ingress-nginx's admission webhook refuses it until the controller runs.
    assert any(obj["kind"] == "Ingress" for obj in resources["api"].objects)
    assert "ingress-nginx" in _depends_on(resources, "api")
    assert "kube-prometheus-stack" in _depends_on(resources, "catalog-monitoring")
    assert ("keda" in _depends_on(resources, "worker")) is keda
    for button in ("smoke-tests", "load-burst"):
        assert {"api", "worker", "ingress-nginx"} <= _depends_on(resources, button)
        assert resources[button].options["auto_init"] is False
        assert resources[button].options["trigger_mode"] == "TRIGGER_MODE_MANUAL"


def test_worker_scaling_follows_the_keda_flag(keda: bool) -> None:
    resources, _ = _assembled(keda)
    kinds = {obj["kind"] for obj in resources["worker"].objects}
    assert ("ScaledObject" in kinds) is keda
    assert ("HorizontalPodAutoscaler" in kinds) is not keda
    assert ("keda" in resources) is keda


# --- Port forwards and links ------------------------------------------------------------------------


def _container_ports(workload: Manifest) -> set[int]:
    spec = tilt.pod_template(workload)["spec"]
    return {port["containerPort"] for container in spec["containers"] for port in container.get("ports", [])}


def _serve_port_forwards(resource: tilt.Resource) -> list[tuple[int, str]]:
    """(local port, service) of a local_resource that runs `kubectl port-forward service/NAME LOCAL:REMOTE`."""
    command = resource.options.get("serve_cmd") or []
    if "port-forward" not in command:
        return []
    service = next(word for word in command if word.startswith("service/"))
    return [(int(word.split(":")[0]), service) for word in command if re.fullmatch(r"\d+:\d+", word)]


def test_port_forwards_reach_container_ports_and_local_ports_are_unique(variant: str) -> None:
    resources, _ = _assembled(variant)
    local_ports: list[int] = []
    checked = 0
    for resource in resources.values():
        for forward in resource.options.get("port_forwards", []):
            assert isinstance(forward, tilt.PortForward), f"{resource.name}: use port_forward(local, container)"
            assert resource.workload is not None, resource.name
            assert forward.container_port in _container_ports(resource.workload), (resource.name, forward)
            local_ports.append(forward.local_port)
            checked += 1
        local_ports += [port for port, _ in _serve_port_forwards(resource)]
    if variant == "cluster":  # the backends listen on the node address themselves
        assert checked == 3, "api (http, metrics), worker (metrics)"
        assert len(local_ports) == len(set(local_ports)) == 3, local_ports
    else:
        assert checked == 5, "api (http, metrics), worker (metrics), postgres, redis"
        assert len(local_ports) == len(set(local_ports)) == 7, local_ports


def test_localhost_links_point_at_ports_their_resource_forwards(variant: str) -> None:
    resources, _ = _assembled(variant)
    for resource in resources.values():
        forwarded = {f.local_port for f in resource.options.get("port_forwards", [])}
        forwarded |= {port for port, _ in _serve_port_forwards(resource)}
        for link in resource.options.get("links", []):
            match = re.match(r"http://localhost:(\d+)/", link.url)
            assert match, link.url
            assert int(match[1]) in forwarded, f"{resource.name}: {link.url} is not forwarded"
    api_links = {link.url for link in resources["api"].options["links"]}
    assert "http://localhost:8000/docs" in api_links


def test_grafana_links_every_dashboard_the_chart_ships() -> None:
    resources, _ = _assembled(False)
    dashboards = sorted((ROOT / "deploy/helm/catalog/files/grafana/dashboards").glob("*.json"))
    uids = {yaml.safe_load(path.read_text())["uid"] for path in dashboards}
    linked = {link.url.rsplit("/", 1)[1] for link in resources["grafana-ui"].options["links"]}
    assert linked == uids
    assert len(uids) >= 4


# --- The image and live update ------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1]) for line in lines]


def _image_layout(target: str) -> dict[str, str]:
    """Where the files the build COPYs from the context end up in `target` (following FROM <stage>)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for keyword, args in _dockerfile():
        if keyword == "FROM":
            words = args.split()
            current = words[2] if len(words) == 3 else ""
            stages[current] = [(keyword, args)]
        elif stages:  # ARGs before the first FROM belong to no stage
            stages[current].append((keyword, args))
    layout: dict[str, str] = {}
    stage = target
    while stage in stages:
        workdir = "/"
        for keyword, args in stages[stage]:
            if keyword == "WORKDIR":
                workdir = args
            elif keyword == "COPY" and not args.startswith("--from"):
                *sources, destination = args.split()
                base = destination if destination.startswith("/") else f"{workdir}/{destination}"
                for source in sources:
                    layout[source] = str(Path(base.replace("/./", "/")) / (source if base.endswith("/") else ""))
        stage = stages[stage][0][1].split()[0]
    return layout


def test_the_image_is_the_dockerfile_dev_target_and_the_chart_uses_its_name() -> None:
    build = _docker_build()
    assert build.arg(1, "context") == "."
    assert build.kwargs["target"] == "dev"
    assert any(k == "FROM" and a.split()[-1] == "dev" for k, a in _dockerfile())
    admitted = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    assert set(build.kwargs["only"]) == admitted
    [command] = _evaluate(False).helm_commands
    result = helm(*command[1:])
    images = {
        container["image"]
        for obj in yaml.safe_load_all(result.stdout)
        if obj and obj["kind"] in tilt.WORKLOAD_KINDS and obj["metadata"]["name"].startswith("catalog-")
        for container in tilt.pod_template(obj)["spec"]["containers"]
    }
    assert {image.split(":")[0] for image in images} == {build.arg(0, "ref")}, "Tilt replaces only matching images"


def test_sync_targets_are_where_the_dev_image_keeps_the_code() -> None:
    layout = _image_layout("dev")
    syncs = _steps("sync")
    assert syncs, "live update syncs code"
    for step in syncs:
        source, target = step.args
        assert layout.get(source) == target, f"{source} is at {layout.get(source)} in the dev image, not {target}"


def test_dependency_files_fall_back_to_a_rebuild() -> None:
    [fall_back] = _steps("fall_back_on")
    layout = _image_layout("dev")
    # The files the dependency layer is built from (COPY before `uv sync`).
    assert set(fall_back.args[0]) == {"pyproject.toml", "uv.lock"}
    assert all(name in layout for name in fall_back.args[0])
    steps = _docker_build().kwargs["live_update"]
    assert steps[0].kind == "fall_back_on", "Tilt requires fall_back_on first"


def test_run_steps_trigger_only_on_synced_files() -> None:
    syncs = [step.args[0] for step in _steps("sync")]
    for step in _steps("run"):
        for trigger in step.kwargs["trigger"]:
            assert any(trigger == s or trigger.startswith(s + "/") for s in syncs), trigger
            assert (ROOT / trigger).is_dir() or (ROOT / trigger).is_file()


def _chart_objects() -> list[Manifest]:
    [command] = _evaluate(False).helm_commands
    result = helm(*command[1:])
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def test_the_processes_restart_when_a_synced_file_changes() -> None:
    """The chart (development.liveUpdate in the dev values) runs api and worker under watchfiles,
    watching the directory live update writes to, in a container whose root filesystem it may write."""
    targets = {step.args[1] for step in _steps("sync")}
    deployments = {obj["metadata"]["name"]: obj for obj in _chart_objects() if obj["kind"] == "Deployment"}
    for name, program in (("catalog-api", "gunicorn"), ("catalog-worker", "python -m service.worker")):
        [container] = tilt.pod_template(deployments[name])["spec"]["containers"]
        command: list[str] = container["command"]
        assert command[0] == "watchfiles", command
        assert command[-1] in targets
        assert command[-2].startswith(program)
        assert container["securityContext"]["readOnlyRootFilesystem"] is False
        assert container["securityContext"]["runAsUser"] == 10001


def test_without_the_dev_values_the_same_chart_stays_production_shaped() -> None:
    """Only the dev values switch live update on: the kind values alone keep read-only roots and plain commands."""
    result = helm("template", "catalog", "deploy/helm/catalog", "--values", "deploy/kind/catalog-values.yaml")
    assert result.returncode == 0, result.stderr
    for obj in yaml.safe_load_all(result.stdout):
        if obj and obj["kind"] in tilt.WORKLOAD_KINDS:
            for container in tilt.pod_template(obj)["spec"]["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True
                assert container["command"][0] != "watchfiles"


# --- The development values and the cluster services around the chart ---------------------------------


def _dev_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((ROOT / "deploy/kind/dev-values.yaml").read_text())
    return values


def test_dev_values_lint_strictly_on_top_of_the_kind_values() -> None:
    [command] = _evaluate(False).helm_commands
    values = [command[i + 1] for i, word in enumerate(command) if word == "--values"]
    assert values == ["deploy/kind/catalog-values.yaml", "deploy/kind/dev-values.yaml"]
    result = helm("lint", "--strict", "deploy/helm/catalog", *[f"--values={v}" for v in values])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_development_key_in_the_tiltfile_is_the_one_the_chart_accepts() -> None:
    evaluation = _evaluate(False)
    [burst] = [c for c in evaluation.named("local_resource") if c.args[0] == "load-burst"]
    key = burst.kwargs["env"]["API_KEY"]
    entries = yaml.safe_load(_dev_values()["secrets"]["apiKeys"])
    [entry] = [e for e in entries if e["sha256"] == tilt.sha256(key)]
    assert {"items:write", "jobs:write"} <= set(entry["scopes"])
    assert _dev_values()["settings"]["environment"] == "development"


def test_remote_charts_are_pinned_and_come_from_repos_it_adds(keda: bool) -> None:
    resources, _ = _assembled(keda)
    # helm_repo(): a local_resource running `helm repo add NAME URL --force-update`.
    repo_adds = [c for c in _evaluate(keda).named("local_resource") if c.args[0].startswith("helm-repo-")]
    repos = {call.arg(1, "cmd")[3]: call.args[0] for call in repo_adds}
    for call in repo_adds:
        assert call.arg(1, "cmd")[:3] == ["helm", "repo", "add"]
        assert call.arg(1, "cmd")[4].startswith("https://")
    releases = _releases(keda)
    assert set(releases) == {"ingress-nginx", "kube-prometheus-stack", "metrics-server"} | ({"keda"} if keda else set())
    for name, install in releases.items():
        assert install["release"] == name
        assert SEMVER.fullmatch(install["version"]), (name, install["version"])
        assert install["context"] == ["kind-catalog"], "helm talks to the cluster Tilt deploys to"
        repo = install["chart"].split("/")[0]
        assert repo in repos, install["chart"]
        assert repos[repo] in resources[name].options["resource_deps"]
        # A change to a values file re-runs the upgrade; `tilt down` uninstalls the release.
        deploy = next(c for c in _evaluate(keda).named("k8s_custom_deploy") if c.args[0] == name)
        assert set(install["values"]) <= set(deploy.kwargs["deps"])
        assert deploy.kwargs["delete_cmd"][:2] == ["helm", "uninstall"]
        assert deploy.kwargs["delete_cmd"][-1] == name


def test_helm_releases_print_their_objects_for_tilt_to_follow() -> None:
    """The apply command's stdout is the release's objects (Tilt tracks their pods); helm's output goes to stderr."""
    deploy = next(c for c in _evaluate(False).named("k8s_custom_deploy") if c.args[0] == "ingress-nginx")
    shell, flag, script, name, *install = deploy.kwargs["apply_cmd"]
    assert (shell, flag, name) == ("sh", "-c", "helm-release")
    assert script.startswith('"$@" >&2 && helm get manifest')
    assert "| kubectl get" in script
    assert "--output yaml --filename -" in script
    env = deploy.kwargs["apply_env"]
    assert env == {"C": "kind-catalog", "N": "ingress-nginx", "R": "ingress-nginx"}
    assert install[:3] == ["helm", "upgrade", "--install"]


def _release(name: str) -> dict[str, Any]:
    return _releases(False)[name]


def test_monitoring_objects_carry_the_labels_kube_prometheus_stack_selects() -> None:
    stack = _release("kube-prometheus-stack")
    release_name = stack["release"]
    stack_values = yaml.safe_load((ROOT / "deploy/kind/kube-prometheus-stack-values.yaml").read_text())
    resources, _ = _assembled(False)
    monitoring = resources["catalog-monitoring"].objects
    operator_objects = [o for o in monitoring if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in operator_objects} == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    for obj in operator_objects:
        assert obj["metadata"]["labels"]["release"] == release_name
    dashboards = [o for o in monitoring if o["kind"] == "ConfigMap"]
    assert len(dashboards) >= 4
    for obj in dashboards:
        assert obj["metadata"]["namespace"] == stack["namespace"], "next to Grafana"
        assert obj["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert obj["metadata"]["annotations"]["grafana_folder"] == "Catalog"
    assert stack_values["grafana"]["sidecar"]["dashboards"]["folderAnnotation"] == "grafana_folder"


def test_network_policies_admit_the_namespaces_the_tiltfile_installs_into() -> None:
    policies = {o["metadata"]["name"]: o for o in _chart_objects() if o["kind"] == "NetworkPolicy"}
    ingress_from = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policies["catalog-api"]["spec"]["ingress"]
        for peer in rule.get("from", [])
    ]
    assert _release("ingress-nginx")["namespace"] in ingress_from
    assert _release("kube-prometheus-stack")["namespace"] in ingress_from


def test_the_ingress_controller_is_configured_from_deploy_nginx() -> None:
    values = _release("ingress-nginx")["values"]
    assert values == ["deploy/nginx/ingress-nginx-values.yaml", "deploy/kind/ingress-nginx-values.yaml"]


def test_the_smoke_test_button_targets_the_release_tilt_deploys() -> None:
    [smoke] = [c for c in _evaluate(False).named("local_resource") if c.args[0] == "smoke-tests"]
    env = smoke.kwargs["env"]
    [command] = _evaluate(False).helm_commands
    assert (env["CATALOG_RELEASE"], env["CATALOG_NAMESPACE"]) == (command[2], command[command.index("--namespace") + 1])
    catalog_values = yaml.safe_load((ROOT / "deploy/kind/catalog-values.yaml").read_text())
    assert env["CATALOG_HOST"] == catalog_values["ingress"]["host"]
    cluster = list(yaml.safe_load_all((ROOT / "deploy/kind/cluster.yaml").read_text()))[1]
    [control_plane] = [n for n in cluster["kindV1Alpha4Cluster"]["nodes"] if n["role"] == "control-plane"]
    http = next(m for m in control_plane["extraPortMappings"] if m["containerPort"] == 80)
    assert env["CATALOG_URL"] == f"http://127.0.0.1:{http['hostPort']}"
    assert "tests/cluster" in smoke.kwargs["cmd"]


# --- The cluster of `make cluster`: no registry, no internet, backends on the host ------------------


def _cluster_objects(variant: str = "cluster") -> list[Manifest]:
    [command] = _evaluate(variant).helm_commands
    result = helm(*command[1:])
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def test_on_make_cluster_the_image_is_imported_with_the_same_live_update() -> None:
    evaluation = _evaluate("cluster")
    assert evaluation.named("docker_build") == []
    [build] = evaluation.named("custom_build")
    assert build.args[0] == _docker_build().arg(0, "ref") == "catalog"
    assert build.arg(1, "command") == 'bash deploy/cluster/tilt-image.sh "$EXPECTED_REF"'
    # Tilt neither pushes nor looks for the image in docker: the script puts it into containerd.
    assert build.kwargs["disable_push"] is True
    assert build.kwargs["skips_local_docker"] is True
    assert set(build.kwargs["deps"]) == set(_docker_build().kwargs["only"]) | {"Dockerfile"}
    assert "**/__pycache__" in build.kwargs["ignore"], "as .dockerignore: bytecode the tests write triggers nothing"
    same = [(step.kind, step.args, step.kwargs) for step in build.kwargs["live_update"]]
    assert same == [(step.kind, step.args, step.kwargs) for step in _docker_build().kwargs["live_update"]]
    script = (ROOT / "deploy/cluster/tilt-image.sh").read_text()
    assert "--target dev" in script
    assert "images import" in script


def test_on_make_cluster_no_remote_chart_and_the_backends_run_on_the_host() -> None:
    evaluation = _evaluate("cluster")
    resources, _ = _assembled("cluster")
    _assert_dependencies_exist(resources)
    assert evaluation.named("k8s_custom_deploy") == []
    assert sorted(resources) == ["api", "backends", "catalog-config", "migrations", "namespaces", "worker"]
    [backends] = [c for c in evaluation.named("local_resource") if c.args[0] == "backends"]
    command = backends.kwargs["serve_cmd"]
    assert "deploy/cluster/tilt_backends.py" in command
    address = command[command.index("--address") + 1]
    database_port = command[command.index("--database-port") + 1]
    redis_port = command[command.index("--redis-port") + 1]
    assert (address, database_port, redis_port) == ("198.19.255.1", "15432", "16379")
    assert backends.kwargs["readiness_probe"].kwargs["tcp_socket"] == (address, int(redis_port))
    for app in ("migrations", "api", "worker"):
        assert "backends" in _depends_on(resources, app)
    objects = _cluster_objects()
    [secret] = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "catalog-settings"]
    values = secret.get("stringData") or {}
    assert values["DATABASE_URL"] == f"postgresql://postgres@{address}:{database_port}/catalog"
    assert values["REDIS_URL"] == f"redis://{address}:{redis_port}/0"
    kinds = {o["kind"] for o in objects}
    assert "Ingress" not in kinds, "no ingress controller runs there"
    assert "HorizontalPodAutoscaler" not in kinds, "no metrics-server feeds one"
    assert {o["spec"]["replicas"] for o in objects if o["kind"] == "Deployment"} == {1}
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not [o for o in objects if o["metadata"].get("namespace") == "monitoring"], "no monitoring namespace"
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    egress = policies["catalog-api"]["spec"]["egress"]
    egress_ports = {port["port"] for rule in egress for port in rule.get("ports", [])}
    assert {int(database_port), int(redis_port)} <= egress_ports


def test_settings_namespace_ports_and_forwards() -> None:
    flags = {"namespace": "catalog-dev-me", "no-port-forwards": True, "database-port": "25432", "redis-port": "26379"}
    evaluation = tilt.evaluate(flags, tilt.CLUSTER_CONTEXT)
    [command] = evaluation.helm_commands
    assert command[command.index("--namespace") + 1] == "catalog-dev-me"
    [namespace] = [o for o in evaluation.objects if o["kind"] == "Namespace"]
    assert namespace["metadata"] == {
        "name": "catalog-dev-me",
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
    }
    assert "secrets.databaseUrl=postgresql://postgres@198.19.255.1:25432/catalog" in command
    resources, uncategorized = tilt.assemble(evaluation)
    assert uncategorized == []
    for resource in resources.values():
        assert not resource.options.get("port_forwards"), resource.name
        assert not resource.options.get("links"), resource.name


@pytest.mark.parametrize(
    ("flags", "context", "refusal"),
    [
        ({"keda": True}, tilt.CLUSTER_CONTEXT, "--keda .* needs --platform=remote"),
        ({"platform": "remote"}, tilt.CLUSTER_CONTEXT, "pulls no image"),
        ({"platform": "local"}, "kind-catalog", "--platform must be remote or none"),
        ({"keda": True, "platform": "none"}, "kind-catalog", "needs --platform=remote"),
    ],
)
def test_it_refuses_settings_that_cannot_work(flags: dict[str, object], context: str, refusal: str) -> None:
    with pytest.raises(starlark.StarlarkError, match=refusal):
        tilt.evaluate(flags, context)


def test_kind_without_the_remote_charts_keeps_its_backends_and_drops_the_ingress() -> None:
    evaluation = tilt.evaluate({"platform": "none"}, "kind-catalog")
    resources, uncategorized = tilt.assemble(evaluation)
    assert uncategorized == []
    _assert_dependencies_exist(resources)
    assert sorted(resources) == ["api", "catalog-config", "migrations", "namespaces", "postgres", "redis", "worker"]
    assert not [o for o in evaluation.objects if o["kind"] == "Ingress"]


def test_the_assembly_check_can_fail() -> None:
    """The redone assembly refuses what Tilt refuses: an unknown workload, an ambiguous object."""
    evaluation = _evaluate(False)
    broken = tilt.Evaluation(
        calls=[*evaluation.calls, tilt.Call("k8s_resource", ("catalog-frontend",), {})], objects=evaluation.objects
    )
    with pytest.raises(AssertionError, match="no such workload"):
        tilt.assemble(broken)
    ambiguous = tilt.Evaluation(
        calls=[tilt.Call("k8s_resource", (), {"new_name": "x", "objects": ["catalog-migrations"]})],
        objects=evaluation.objects,
    )
    with pytest.raises(AssertionError, match="names 3 objects"):
        tilt.assemble(ambiguous)
