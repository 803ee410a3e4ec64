"""A rendered container spec turned into the `docker run` a kubelet's runtime would do.

`derive()` reads one container of a rendered Deployment or Job and resolves
what the kubelet resolves: command and args, the environment (each `envFrom`
source in order, then `env`, with ConfigMaps and Secrets looked up in the same
render), the pod's and the container's securityContext merged, `emptyDir`
mounts, resources, probes, the preStop hook and terminationGracePeriodSeconds.
`ContainerRun.docker_run()` turns that into docker flags and adds nothing that
loosens it. Anything the derivation does not know how to run faithfully (other
volume types, exec probes, `$(VAR)` references, ...) raises `Unsupported`
instead of being skipped.

One deviation, forced by running on the host's network namespace (no bridge
here): two containers cannot both listen on 8000, so each named container port
moves to a free port. The setting that chooses the port (PORT for `http`,
METRICS_PORT for `metrics`) must equal the containerPort in the manifest (checked,
so the chart cannot drift), and is then set to the new port; probes follow by name.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.chart import Manifest, Rendered, pod_spec

# The service's settings that choose the port each named container port listens on.
PORT_SETTINGS = {"http": "PORT", "metrics": "METRICS_PORT"}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


class Unsupported(ValueError):
    """The manifest asks for something this derivation cannot reproduce faithfully."""


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    source: str  # "env", "ConfigMap/<name>" or "Secret/<name>"


@dataclass(frozen=True)
class Probe:
    """An httpGet probe: GET http://127.0.0.1:<port><path>, kubelet defaults filled in."""

    path: str
    port: int
    period_seconds: float
    timeout_seconds: float
    failure_threshold: int
    success_threshold: int
    initial_delay_seconds: float

    @property
    def budget_seconds(self) -> float:
        """How long the kubelet lets this probe fail before acting (initial delay + period x threshold)."""
        return self.initial_delay_seconds + self.period_seconds * self.failure_threshold


@dataclass(frozen=True)
class PreStop:
    sleep_seconds: float = 0.0
    exec_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tmpfs:
    path: str
    size_bytes: int | None
    read_only: bool


@dataclass(frozen=True)
class ContainerRun:
    """Everything `docker run` needs to start one container as its pod spec says."""

    workload: str  # "Deployment/rel-catalog-api"
    container: str
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[EnvVar, ...]
    user: int
    group: int
    supplementary_groups: tuple[int, ...]
    read_only_root: bool
    no_new_privileges: bool
    privileged: bool
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    seccomp: str
    tmpfs: tuple[Tmpfs, ...]
    ports: Mapping[str, int]  # container port name -> the port it listens on here
    manifest_ports: Mapping[str, int]  # ... and in the manifest
    probes: Mapping[str, Probe]  # "startup", "readiness", "liveness"
    pre_stop: PreStop | None
    grace_seconds: float
    memory_limit_bytes: int | None
    cpu_request: float | None
    cpu_limit: float | None

    def env_value(self, name: str) -> str:
        return next(var.value for var in self.env if var.name == name)

    def docker_run(self, name: str, env_file: Path) -> list[str]:
        """`docker run` arguments (after `docker`) for a detached container called `name`.

        The environment goes through `env_file` (written here, mode 0600) so no
        secret value appears in the command line or the test output.
        """
        if bad := [var.name for var in self.env if "\n" in var.value]:
            raise Unsupported(f"multi-line values cannot go through an env file: {bad}")
        env_file.write_text("".join(f"{var.name}={var.value}\n" for var in self.env))
        env_file.chmod(0o600)
        flags = ["run", "--detach", "--name", name, "--hostname", name, "--network", "host", "--restart", "no"]
        flags += [*self._security_flags(), *self._mount_flags(), *self._resource_flags()]
        flags += ["--stop-timeout", str(int(self.grace_seconds)), "--env-file", str(env_file)]
        if self.command:
            flags += ["--entrypoint", self.command[0], self.image, *self.command[1:], *self.args]
        else:
            flags += [self.image, *self.args]
        return flags

    def _security_flags(self) -> list[str]:
        flags = ["--user", f"{self.user}:{self.group}"]
        for gid in self.supplementary_groups:
            flags += ["--group-add", str(gid)]
        if self.read_only_root:
            flags.append("--read-only")
        if self.no_new_privileges:
            flags += ["--security-opt", "no-new-privileges"]
        if self.privileged:
            flags.append("--privileged")
        for cap in self.cap_drop:
            flags += ["--cap-drop", cap]
        for cap in self.cap_add:
            flags += ["--cap-add", cap]
        if self.seccomp == "Unconfined":
            flags += ["--security-opt", "seccomp=unconfined"]
        return flags

    def _mount_flags(self) -> list[str]:
        flags = []
        for mount in self.tmpfs:
            # An emptyDir: writable by every user (0777), exec allowed, as Kubernetes creates it.
            options = ["ro" if mount.read_only else "rw", "exec", "mode=777"]
            if mount.size_bytes is not None:
                options.append(f"size={mount.size_bytes}")
            flags += ["--tmpfs", f"{mount.path}:{','.join(options)}"]
        return flags

    def _resource_flags(self) -> list[str]:
        flags = []
        if self.memory_limit_bytes is not None:
            flags += ["--memory", str(self.memory_limit_bytes), "--memory-swap", str(self.memory_limit_bytes)]
        if self.cpu_request is not None:
            flags += ["--cpu-shares", str(max(2, int(self.cpu_request * 1024)))]  # what the kubelet sets
        if self.cpu_limit is not None:
            flags += ["--cpus", str(self.cpu_limit)]
        return flags

    def describe(self, name: str, env_file: Path) -> str:
        """The derived command, and where each variable came from (Secret values masked)."""
        lines = [
            f"{self.workload} container {self.container}:",
            "  docker " + shlex.join(self.docker_run(name, env_file)),
        ]
        for var in self.env:
            shown = "<from the Secret>" if var.source.startswith("Secret/") else var.value
            lines.append(f"    {var.name}={shown}  ({var.source})")
        for kind, probe in self.probes.items():
            lines.append(
                f"  {kind} probe: GET :{probe.port}{probe.path} every {probe.period_seconds:g} s, "
                f"timeout {probe.timeout_seconds:g} s, failureThreshold {probe.failure_threshold}"
            )
        if self.pre_stop is not None:
            lines.append(f"  preStop: sleep {self.pre_stop.sleep_seconds:g} s {shlex.join(self.pre_stop.exec_command)}")
        lines.append(f"  terminationGracePeriodSeconds: {self.grace_seconds:g}")
        return "\n".join(lines)


def quantity(value: object) -> float:
    """A Kubernetes quantity ("500m", "256Mi", 1, 0.5) as a plain number (cores or bytes)."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise Unsupported(f"quantity {value!r}")
    number, suffix = float(match[1]), match[2]
    return number / 1000 if suffix == "m" else number * _FACTORS[suffix]


def _config_data(rendered: Rendered, kind: str, name: str, optional: bool) -> dict[str, str]:
    if not rendered.has(kind, name):
        if optional:
            return {}
        raise Unsupported(f"{kind}/{name} is not in the render (an existing Secret cannot be resolved here)")
    obj = rendered.get(kind, name)
    data = {key: str(value) for key, value in (obj.get("data") or {}).items()}
    if kind == "Secret":
        data = {key: base64.b64decode(value).decode() for key, value in data.items()}
        data.update({key: str(value) for key, value in (obj.get("stringData") or {}).items()})
    return data


def _resolve_env(rendered: Rendered, spec: Manifest) -> dict[str, EnvVar]:
    env: dict[str, EnvVar] = {}
    for source in spec.get("envFrom", []):
        prefix = source.get("prefix", "")
        kind, ref = (
            ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        )
        for key, value in _config_data(rendered, kind, ref["name"], ref.get("optional", False)).items():
            env[prefix + key] = EnvVar(prefix + key, value, f"{kind}/{ref['name']}")
    for item in spec.get("env", []):
        if "value" in item:
            if re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", item["value"]):
                raise Unsupported(f"env {item['name']} refers to another variable")
            env[item["name"]] = EnvVar(item["name"], item["value"], "env")
        elif "valueFrom" in item and {"secretKeyRef", "configMapKeyRef"} & set(item["valueFrom"]):
            kind = "Secret" if "secretKeyRef" in item["valueFrom"] else "ConfigMap"
            ref = item["valueFrom"]["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
            data = _config_data(rendered, kind, ref["name"], ref.get("optional", False))
            if ref["key"] in data:
                env[item["name"]] = EnvVar(item["name"], data[ref["key"]], f"{kind}/{ref['name']}")
        else:
            raise Unsupported(f"env {item['name']}: {item}")
    return env


def _probe(raw: Manifest | None, ports: Mapping[str, int], manifest_ports: Mapping[str, int]) -> Probe | None:
    if raw is None:
        return None
    if "httpGet" not in raw:
        raise Unsupported(f"only httpGet probes are run here, not {sorted(raw)}")
    get = raw["httpGet"]
    if get.get("scheme", "HTTP") != "HTTP" or "host" in get:
        raise Unsupported(f"probe {get}")
    by_number = {number: name for name, number in manifest_ports.items()}
    port = ports[get["port"] if isinstance(get["port"], str) else by_number[int(get["port"])]]
    return Probe(
        path=get.get("path", "/"),
        port=port,
        period_seconds=float(raw.get("periodSeconds", 10)),
        timeout_seconds=float(raw.get("timeoutSeconds", 1)),
        failure_threshold=int(raw.get("failureThreshold", 3)),
        success_threshold=int(raw.get("successThreshold", 1)),
        initial_delay_seconds=float(raw.get("initialDelaySeconds", 0)),
    )


def _pre_stop(spec: Manifest) -> PreStop | None:
    hook = (spec.get("lifecycle") or {}).get("preStop")
    if hook is None:
        return None
    if "sleep" in hook:
        return PreStop(sleep_seconds=float(hook["sleep"]["seconds"]))
    if "exec" in hook:
        return PreStop(exec_command=tuple(hook["exec"]["command"]))
    raise Unsupported(f"preStop {hook}")


def _security(pod: Manifest, spec: Manifest) -> dict[str, Any]:
    pod_ctx = pod.get("securityContext") or {}
    ctx = {**{k: pod_ctx[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile") if k in pod_ctx}}
    ctx.update(spec.get("securityContext") or {})
    if "runAsUser" not in ctx or "runAsGroup" not in ctx:
        raise Unsupported("runAsUser/runAsGroup unset: the image's user would decide")
    if ctx.get("runAsNonRoot") and int(ctx["runAsUser"]) == 0:
        raise Unsupported("runAsNonRoot with runAsUser 0: the kubelet refuses to start this container")
    groups = [int(pod_ctx["fsGroup"])] if "fsGroup" in pod_ctx else []
    groups += [int(g) for g in pod_ctx.get("supplementalGroups", [])]
    ctx["groups"] = tuple(groups)
    seccomp = (ctx.get("seccompProfile") or {}).get("type", "Unconfined")  # the kubelet's default
    if seccomp not in {"RuntimeDefault", "Unconfined"}:
        raise Unsupported(f"seccompProfile {seccomp}")
    return ctx


def derive(
    rendered: Rendered, kind: str, name: str, container_name: str, image: str, free_port: Callable[[], int]
) -> ContainerRun:
    """The run of container `container_name` of `kind`/`name` in `rendered`, with `image` instead of its reference.

    Raises `Unsupported` for anything that cannot be reproduced faithfully, and
    `AssertionError` when a port setting disagrees with its containerPort.
    """
    workload = rendered.get(kind, name)
    pod = pod_spec(workload)
    [spec] = [c for c in pod["containers"] if c["name"] == container_name]
    env = _resolve_env(rendered, spec)

    manifest_ports = {port["name"]: int(port["containerPort"]) for port in spec.get("ports", [])}
    ports: dict[str, int] = {}
    for port_name, number in manifest_ports.items():
        setting = PORT_SETTINGS.get(port_name)
        if setting is None:
            raise Unsupported(f"port {port_name}: no setting known to choose it")
        assert setting in env, f"{kind}/{name}: containerPort {port_name} but no {setting} in the environment"
        assert env[setting].value == str(number), f"{setting}={env[setting].value} but containerPort {number}"
        ports[port_name] = free_port()
        env[setting] = EnvVar(setting, str(ports[port_name]), f"{env[setting].source}, moved from {number}")

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    tmpfs = []
    for mount in spec.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume or "subPath" in mount:
            raise Unsupported(f"volume {volume}")
        size = (volume["emptyDir"] or {}).get("sizeLimit")
        tmpfs.append(Tmpfs(mount["mountPath"], int(quantity(size)) if size else None, bool(mount.get("readOnly"))))

    security = _security(pod, spec)
    capabilities = security.get("capabilities") or {}
    resources = spec.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    probes = {
        kind_: probe
        for kind_ in ("startup", "readiness", "liveness")
        if (probe := _probe(spec.get(f"{kind_}Probe"), ports, manifest_ports)) is not None
    }
    return ContainerRun(
        workload=f"{kind}/{name}",
        container=container_name,
        image=image,
        command=tuple(spec.get("command", ())),
        args=tuple(spec.get("args", ())),
        env=tuple(env.values()),
        user=int(security["runAsUser"]),
        group=int(security["runAsGroup"]),
        supplementary_groups=security["groups"],
        read_only_root=bool(security.get("readOnlyRootFilesystem", False)),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        privileged=bool(security.get("privileged", False)),
        cap_drop=tuple(capabilities.get("drop", ())),
        cap_add=tuple(capabilities.get("add", ())),
        seccomp=(security.get("seccompProfile") or {}).get("type", "Unconfined"),
        tmpfs=tuple(tmpfs),
        ports=ports,
        manifest_ports=manifest_ports,
        probes=probes,
        pre_stop=_pre_stop(spec),
        grace_seconds=float(pod.get("terminationGracePeriodSeconds", 30)),
        memory_limit_bytes=int(quantity(limits["memory"])) if "memory" in limits else None,
        cpu_request=quantity(requests["cpu"]) if "cpu" in requests else None,
        cpu_limit=quantity(limits["cpu"]) if "cpu" in limits else None,
    )
