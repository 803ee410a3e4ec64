"""The two topology pictures' facts, read from what runs them, never typed in.

- `local_graph()`: the processes `make up` starts (deploy/local/stack.py's component
  list, their ports and the environment each gets: which PostgreSQL/Redis port a pod's
  DATABASE_URL/REDIS_URL names draws its arrow), what Prometheus scrapes (the targets
  stack.py writes) and evaluates (monitoring/prometheus/rules), with the defaults a
  plain `make up` uses.
- `cluster_graph(objects)`: the objects `helm template` renders for the chart's
  production scenario with KEDA on; an arrow is a reference between them (a Service's
  selector matching a pod template's labels, an HPA's scaleTargetRef, an envFrom, a
  monitor's selector, a NetworkPolicy's podSelector).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import yaml

from docs.images.graph import Edge, Graph, Node

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))
import stack as local_stack  # noqa: E402  (deploy/local/stack.py: stdlib only)

CHART = ROOT / "deploy" / "helm" / "catalog"
# The scenario drawn: a production release (ingress, monitoring, network peers) with the worker on KEDA.
CLUSTER_VALUES = [CHART / "ci" / "production-values.yaml"]
CLUSTER_SET = {"worker.keda.enabled": True}
RELEASE = "rel"
# What a cluster with prometheus-operator and KEDA reports, so the chart renders those objects.
API_VERSIONS = [
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1",
    "keda.sh/v1alpha1/ScaledObject",
    "keda.sh/v1alpha1/TriggerAuthentication",
]

Object = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# make up


def _default_environment() -> dict[str, str]:
    """This process's environment without anything that changes what `make up` starts or where."""
    variables = {*local_stack.PORT_VARIABLES.values(), "DATABASE_URL", "REDIS_URL", "PGBOUNCER", "REPLICA", "RUN_DIR"}
    clean = {key: value for key, value in os.environ.items() if key not in variables}
    clean["API_KEYS"] = "[]"  # app_environment would otherwise create a development key file
    return clean


def _default_stack() -> local_stack.Stack:
    """The Stack a plain `make up` builds (call under `_default_environment()`)."""
    stack = local_stack.Stack.from_environment()
    stack.database_url = stack.postgres().url(local_stack.DATABASE_NAME)
    stack.redis_url = stack.redis().url()
    return stack


def _rule_counts() -> tuple[int, int]:
    """(alerting, recording) rules in monitoring/prometheus/rules/."""
    alerts = records = 0
    for path in sorted((ROOT / "monitoring" / "prometheus" / "rules").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            alerts += sum("alert" in rule for rule in group["rules"])
            records += sum("record" in rule for rule in group["rules"])
    return alerts, records


def _targets(env: Mapping[str, str], ports: Mapping[int, str]) -> Iterator[tuple[str, str]]:
    """(component, variable) for each server the URLs in `env` name that `make up` runs."""
    for variable in ("DATABASE_URL", "REDIS_URL"):
        port = urlsplit(env.get(variable, "")).port
        if port is not None and port in ports:
            yield ports[port], variable


def local_graph() -> Graph:
    """`make up` with every setting at its default (the environment of this process is set aside)."""
    with mock.patch.dict(os.environ, _default_environment(), clear=True):
        return _local_graph(_default_stack())


def _local_graph(stack: local_stack.Stack) -> Graph:
    components = local_stack._components(stack)
    ports = {port: component for component in components for port, _ in local_stack._ports(stack, component)}
    interval = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())["global"]
    alerts, records = _rule_counts()
    dashboards = sorted((ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))
    graph = Graph(
        "make up: the topology on one machine (every process real, on loopback)",
        ["clients", "edge and monitoring", "API pods and worker", "data"],
        note=(
            "Solid: requests and queries. Dashed arrow: a scrape or a query for metrics. Dashed box: not started "
            "by make up.\nDrawn from deploy/local/stack.py (components, ports, each process's DATABASE_URL and "
            "REDIS_URL) by make docs-images."
        ),
    )
    graph.nodes.append(Node("client", "client", ("curl, browser, make loadtest",), 0, "edge"))
    graph.nodes.append(
        Node(
            "grafana",
            "Grafana",
            (f"{len(dashboards)} dashboards:", *(f"  {path.stem}" for path in dashboards)),
            0,
            "monitoring",
            dashed=True,
        )
    )
    graph.edges.append(Edge("client", "nginx", f":{stack.api_port}"))
    graph.edges.append(Edge("grafana", "prometheus", "PromQL", dashed=True))
    for component in components:
        listens = ", ".join(f":{port}" for port, _ in local_stack._ports(stack, component))
        if component.startswith("api-"):
            index = int(component.removeprefix("api-"))
            pod, metrics = stack.pod_ports[index - 1], stack.metrics_ports[index - 1]
            lines: tuple[str, ...] = ("gunicorn + 1 uvicorn worker", f"HTTP :{pod}, metrics :{metrics}")
            graph.nodes.append(Node(component, f"API pod {component}", lines, 2, "api"))
            graph.edges.append(Edge("nginx", component, f":{pod}"))
            graph.edges.append(Edge("prometheus", component, f"scrape :{metrics}", dashed=True))
            env = local_stack.app_environment(stack, pod, metrics)
            for target, variable in _targets(env, ports):
                graph.edges.append(Edge(component, target, variable.removesuffix("_URL").lower()))
        elif component == "worker":
            lines = ("python -m service.worker", "jobs in child processes", f"probes + metrics {listens}")
            graph.nodes.append(Node(component, "job worker", lines, 2, "worker"))
            graph.edges.append(Edge("prometheus", component, f"scrape {listens}", dashed=True))
            for target, variable in _targets(local_stack.worker_environment(stack), ports):
                graph.edges.append(Edge(component, target, variable.removesuffix("_URL").lower()))
        elif component == "nginx":
            lines = (f"{listens}, keep-alive upstream", f"round robin over {len(stack.pod_ports)} pods")
            graph.nodes.append(Node(component, "nginx (edge)", lines, 1, "edge"))
        elif component == "prometheus":
            lines = (
                f"{listens}, scrape every {interval['scrape_interval']}",
                f"{alerts} alerts, {records} recording rules",
                "monitoring/prometheus/rules",
            )
            graph.nodes.append(Node(component, "Prometheus", lines, 1, "monitoring"))
        else:
            names = {
                "postgres": "PostgreSQL",
                "redis": "Redis",
                "pgbouncer": "PgBouncer",
                "postgres-replica": "replica",
            }
            roles = {"postgres": "system of record, job queue", "redis": "cache, rate limits (may be lost)"}
            lines = (listens, *([roles[component]] if component in roles else []))
            graph.nodes.append(Node(component, names[component], lines, 3, "data"))
    return graph


# ---------------------------------------------------------------------------------------------
# the chart


def render_chart(helm: str) -> list[Object]:
    """The chart's objects for the scenario drawn, rendered by the real helm."""
    command = [helm, "template", RELEASE, str(CHART), "--namespace", "shop"]
    for path in CLUSTER_VALUES:
        command += ["--values", str(path)]
    for key, value in CLUSTER_SET.items():
        command += ["--set-json", f"{key}={json.dumps(value)}"]
    for api in API_VERSIONS:
        command += ["--api-versions", api]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{result.stderr}")
    return [item for item in yaml.safe_load_all(result.stdout) if item]


def _short(name: str) -> str:
    return name.removeprefix(f"{RELEASE}-catalog").removeprefix("-") or "(release)"


def _key(item: Object) -> str:
    return f"{item['kind']}/{item['metadata']['name']}"


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _pod_labels(item: Object) -> dict[str, str]:
    labels: dict[str, str] = item["spec"]["template"]["metadata"].get("labels", {})
    return labels


def _workload_lines(item: Object) -> tuple[str, ...]:
    container = item["spec"]["template"]["spec"]["containers"][0]
    requests = container.get("resources", {}).get("requests", {})
    ports = ", ".join(f"{p['name']} :{p['containerPort']}" for p in container.get("ports", []))
    lines = [f"requests cpu {requests.get('cpu', '-')}, memory {requests.get('memory', '-')}"]
    if ports:
        lines.append(ports)
    if item["kind"] == "Job":
        lines.append("helm hook: " + item["metadata"].get("annotations", {}).get("helm.sh/hook", "-"))
    elif "replicas" in item["spec"]:
        lines.append(f"replicas {item['spec']['replicas']}")
    return tuple(lines)


def _scaler_lines(item: Object) -> tuple[str, str]:
    spec = item["spec"]
    if item["kind"] == "HorizontalPodAutoscaler":
        metrics = [
            f"{m['resource']['name']} {m['resource']['target'].get('averageUtilization', '?')} %"
            for m in spec.get("metrics", [])
            if m["type"] == "Resource"
        ]
        return f"{spec['minReplicas']}..{spec['maxReplicas']} replicas", "on " + ", ".join(metrics)
    triggers = [f"{t['type']} ({t['metadata'].get('targetQueryValue', '?')} per pod)" for t in spec["triggers"]]
    return f"{spec.get('minReplicaCount', 0)}..{spec['maxReplicaCount']} replicas", "on " + ", ".join(triggers)


def _network_lines(item: Object) -> tuple[str, ...]:
    spec = item["spec"]
    inbound = [
        f"{peer['namespaceSelector']['matchLabels'].get('kubernetes.io/metadata.name', '?')} :{port['port']}"
        for rule in spec.get("ingress", [])
        for peer in rule.get("from", [])
        if "namespaceSelector" in peer
        for port in rule.get("ports", [])
    ]
    outbound = sorted({str(port["port"]) for rule in spec.get("egress", []) for port in rule.get("ports", [])})
    return ("in: " + (", ".join(inbound) or "nothing"), "out: ports " + ", ".join(outbound))


@dataclass
class _Rendered:
    """The rendered objects, with the ones other objects point at picked out."""

    objects: list[Object]
    graph: Graph
    secrets: set[str] = field(default_factory=set)  # Secrets the workloads read (envFrom)

    @property
    def workloads(self) -> list[Object]:
        return [item for item in self.objects if item["kind"] in {"Deployment", "Job"}]

    def pods_selected(self, selector: Mapping[str, str]) -> list[str]:
        return [_key(w) for w in self.workloads if _selects(selector, _pod_labels(w))]

    def services_selected(self, selector: Mapping[str, str]) -> list[str]:
        return [_key(s) for s in self.objects if s["kind"] == "Service" and _selects(selector, _labels(s))]

    def add(self, node: Node, *edges: Edge) -> None:
        self.graph.nodes.append(node)
        self.graph.edges.extend(edges)


def _workload(item: Object, rendered: _Rendered) -> None:
    key, name = _key(item), item["metadata"]["name"]
    tone = "worker" if "worker" in name or item["kind"] == "Job" else "api"
    edges = []
    for source in item["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
        if "configMapRef" in source:
            edges.append(Edge(key, f"ConfigMap/{source['configMapRef']['name']}", "envFrom", dashed=True))
        if "secretRef" in source:
            rendered.secrets.add(source["secretRef"]["name"])
            edges.append(Edge(key, f"Secret/{source['secretRef']['name']}", "envFrom", dashed=True))
    rendered.add(Node(key, f"{item['kind']} {_short(name)}", _workload_lines(item), 2, tone), *edges)


def _service(item: Object, rendered: _Rendered) -> None:
    key, spec = _key(item), item["spec"]
    ports = ", ".join(f"{p['port']} -> {p['targetPort']}" for p in spec["ports"])
    deployments = [target for target in rendered.pods_selected(spec.get("selector", {})) if target.startswith("Dep")]
    node = Node(key, f"Service {_short(item['metadata']['name'])}", (ports,), 1, "edge")
    rendered.add(node, *(Edge(key, target) for target in deployments))


def _route(item: Object, rendered: _Rendered) -> None:
    key, spec, kind = _key(item), item["spec"], item["kind"]
    if kind == "Ingress":
        hosts = tuple(rule.get("host", "*") for rule in spec.get("rules", []))
        backends = [
            (f"Service/{path['backend']['service']['name']}", f"path {path['path']}")
            for rule in spec.get("rules", [])
            for path in rule["http"]["paths"]
        ]
    else:  # HTTPRoute
        hosts = tuple(spec.get("hostnames", []))
        backends = [
            (f"Service/{backend['name']}", "")
            for rule in spec.get("rules", [])
            for backend in rule.get("backendRefs", [])
        ]
    node = Node(key, f"{kind} {_short(item['metadata']['name'])}", hosts, 0, "edge")
    rendered.add(node, *(Edge(key, target, label) for target, label in backends))


def _monitor(item: Object, rendered: _Rendered) -> None:
    key, spec, kind = _key(item), item["spec"], item["kind"]
    endpoint = (spec.get("endpoints") or spec.get("podMetricsEndpoints") or [{}])[0]
    lines = (f"port {endpoint.get('port', '?')} every {endpoint.get('interval', '?')}",)
    selector = spec["selector"].get("matchLabels", {})
    found = rendered.services_selected(selector) if kind == "ServiceMonitor" else rendered.pods_selected(selector)
    node = Node(key, f"{kind} {_short(item['metadata']['name'])}", lines, 0, "monitoring")
    rendered.add(node, *(Edge(key, target, "scrape", dashed=True) for target in found))


def _prometheus_rule(item: Object, rendered: _Rendered) -> None:
    rules = [rule for group in item["spec"]["groups"] for rule in group["rules"]]
    lines = (f"{sum('alert' in r for r in rules)} alerts, {sum('record' in r for r in rules)} recording",)
    rendered.add(Node(_key(item), f"PrometheusRule {_short(item['metadata']['name'])}", lines, 0, "monitoring"))


def _scaler(item: Object, rendered: _Rendered) -> None:
    key, spec = _key(item), item["spec"]
    title = "HPA" if item["kind"] == "HorizontalPodAutoscaler" else "ScaledObject (KEDA)"
    edges = [Edge(key, f"Deployment/{spec['scaleTargetRef']['name']}", "scales", dashed=True)]
    edges += [
        Edge(key, f"TriggerAuthentication/{trigger['authenticationRef']['name']}", "auth", dashed=True)
        for trigger in spec.get("triggers", [])
        if "authenticationRef" in trigger
    ]
    rendered.add(Node(key, f"{title} {_short(item['metadata']['name'])}", _scaler_lines(item), 3, "policy"), *edges)


def _trigger_authentication(item: Object, rendered: _Rendered) -> None:
    lines = tuple(f"{p['parameter']} from {p['name']}" for p in item["spec"].get("secretTargetRef", []))
    name = _short(item["metadata"]["name"])
    rendered.add(Node(_key(item), f"TriggerAuthentication {name}", lines, 3, "config"))


def _pod_policy(item: Object, rendered: _Rendered) -> None:
    key, spec, name = _key(item), item["spec"], _short(item["metadata"]["name"])
    if item["kind"] == "PodDisruptionBudget":
        budget = f"maxUnavailable {spec['maxUnavailable']}" if "maxUnavailable" in spec else "minAvailable"
        node, selector = Node(key, f"PDB {name}", (budget,), 3, "policy"), spec["selector"]
    else:  # NetworkPolicy
        node, selector = Node(key, f"NetworkPolicy {name}", _network_lines(item), 3, "policy"), spec["podSelector"]
    found = rendered.pods_selected(selector.get("matchLabels", {}))
    rendered.add(node, *(Edge(key, target, dashed=True) for target in found))


def _settings(item: Object, rendered: _Rendered) -> None:
    name = _short(item["metadata"]["name"])
    if "grafana_dashboard" in _labels(item):
        return  # drawn together, below
    if item["kind"] == "ConfigMap":
        rendered.add(Node(_key(item), f"ConfigMap {name}", (f"{len(item.get('data', {}))} settings",), 1))
    else:
        rendered.add(Node(_key(item), f"Secret {name}", (f"{len(item.get('data', {}))} keys",), 1))


_KINDS = {
    "Deployment": _workload,
    "Job": _workload,
    "Service": _service,
    "Ingress": _route,
    "HTTPRoute": _route,
    "ServiceMonitor": _monitor,
    "PodMonitor": _monitor,
    "PrometheusRule": _prometheus_rule,
    "HorizontalPodAutoscaler": _scaler,
    "ScaledObject": _scaler,
    "TriggerAuthentication": _trigger_authentication,
    "PodDisruptionBudget": _pod_policy,
    "NetworkPolicy": _pod_policy,
    "ConfigMap": _settings,
    "Secret": _settings,
}


def cluster_graph(objects: list[Object]) -> Graph:
    """The picture of `objects` (kinds not in _KINDS, such as the ServiceAccount, are left out)."""
    graph = Graph(
        "helm install: the chart's objects (production values, worker on KEDA)",
        ["traffic in and monitoring", "Services and settings", "workloads", "scaling, disruption, network"],
        note=(
            "Arrows are references between rendered objects (selectors, scaleTargetRef, envFrom, backends); "
            "dashed: control and observation.\nDrawn from `helm template` of deploy/helm/catalog with "
            "ci/production-values.yaml and worker.keda.enabled=true by make docs-images."
        ),
    )
    rendered = _Rendered(objects, graph)
    for item in objects:
        if item["kind"] in _KINDS:
            _KINDS[item["kind"]](item, rendered)
    own = {_key(item) for item in objects}
    for name in sorted(rendered.secrets):
        if f"Secret/{name}" not in own:
            lines = ("yours (secrets.existingSecret):", "DATABASE_URL, REDIS_URL, ...")
            graph.nodes.append(Node(f"Secret/{name}", f"Secret {name}", lines, 1, dashed=True))
    dashboards = [item for item in objects if item["kind"] == "ConfigMap" and "grafana_dashboard" in _labels(item)]
    if dashboards:
        names = [next(iter(item.get("data", {})), "?").removesuffix(".json") for item in dashboards]
        namespace = dashboards[0]["metadata"].get("namespace", "?")
        listed = (f"{len(dashboards)} ConfigMaps in {namespace}:", *(f"  {n}" for n in names))
        graph.nodes.append(Node("dashboards", "Grafana dashboards", listed, 0, "monitoring"))
    return graph


def _labels(item: Object) -> dict[str, str]:
    labels: dict[str, str] = item["metadata"].get("labels", {})
    return labels
