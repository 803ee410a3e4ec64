"""Evaluate the real Tiltfile with a Starlark interpreter (starlark-pyo3) and recorded Tilt built-ins.

Every built-in the Tiltfile calls, and every symbol it load()s from a Tilt extension,
is a stub that records its arguments; a Tiltfile that calls anything else fails to
evaluate. Stubs return what Tilt would, where the Tiltfile uses the result: `local()`
of a `helm template` command runs the project's real helm (`tests/deploy/chart.py`),
`read_json`/`listdir`/`os.path.exists` read the real files, `k8s_context()` answers
the kind context (or the one a test asks for). Nothing talks to a cluster or a
registry, and Tilt's own assembly of resources is redone in `assemble()` the way
Tilt documents it (workloads by name, Services by selector, objects by fragment).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import starlark
import yaml

from tests.conftest import ROOT
from tests.deploy.chart import Manifest, helm

TILTFILE = ROOT / "Tiltfile"
# Kinds with a pod template: the objects Tilt makes a resource of by themselves.
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


@dataclass(frozen=True)
class Call:
    """One call of a Tilt built-in or extension function."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        if len(self.args) > position:
            return self.args[position]
        return self.kwargs.get(name, default)


@dataclass(frozen=True)
class Blob:
    """What Tilt's local(), read_file() and blob() return: text that k8s_yaml() takes as YAML."""

    text: str


@dataclass(frozen=True)
class PortForward:
    local_port: int
    container_port: int
    name: str = ""


@dataclass(frozen=True)
class Link:
    url: str
    name: str = ""


@dataclass(frozen=True)
class Step:
    """A live_update step: fall_back_on, sync or run."""

    kind: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Evaluation:
    """Everything one evaluation of the Tiltfile did."""

    calls: list[Call] = field(default_factory=list)
    objects: list[Manifest] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)  # files and directories read, watched or passed as paths
    loads: dict[str, set[str]] = field(default_factory=dict)  # extension -> symbols
    helm_commands: list[list[str]] = field(default_factory=list)

    def named(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.name == name]


class _Recorder:
    def __init__(self, flags: Mapping[str, object], context: str) -> None:
        self.evaluation = Evaluation()
        self.flags = dict(flags)
        self.context = context

    def record(self, name: str, result: Callable[..., Any] | None = None) -> Callable[..., Any]:
        def stub(*args: Any, **kwargs: Any) -> Any:
            self.evaluation.calls.append(Call(name, args, kwargs))
            return result(*args, **kwargs) if result else None

        return stub

    def path(self, value: str) -> str:
        self.evaluation.paths.add(value)
        return str(ROOT / value) if not os.path.isabs(value) else value

    # Built-ins whose results the Tiltfile uses.
    def local(self, command: list[str] | str, **_: Any) -> starlark.OpaquePythonObject:
        assert isinstance(command, list), "the Tiltfile passes local() an argv list"
        assert command[:2] == ["helm", "template"], f"unexpected local(): {command}"
        self.evaluation.helm_commands.append(command)
        result = helm(*command[1:])
        assert result.returncode == 0, result.stderr
        return starlark.OpaquePythonObject(Blob(result.stdout))

    def k8s_yaml(self, source: Any, **_: Any) -> None:
        text = source.text if isinstance(source, Blob) else Path(self.path(source)).read_text()
        self.evaluation.objects += [obj for obj in yaml.safe_load_all(text) if obj]

    def namespace_create(self, name: str, labels: list[str] | None = None, **_: Any) -> None:
        """ext://namespace: a Namespace object with `key: value` labels, handed to k8s_yaml()."""
        pairs = dict(label.split(": ", 1) for label in labels or [])
        self.evaluation.objects.append(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": pairs}}
        )

    def read_json(self, path: str, **_: Any) -> Any:
        return json.loads(Path(self.path(path)).read_text())

    def listdir(self, directory: str, **_: Any) -> list[str]:
        return sorted(str(entry) for entry in Path(self.path(directory)).iterdir() if entry.is_file())

    def exists(self, path: str) -> bool:
        return Path(self.path(path)).exists()

    def parse_config(self) -> dict[str, object]:
        return dict(self.flags)

    def watch_file(self, path: str) -> None:
        self.path(path)


def _opaque(factory: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args, **kwargs: starlark.OpaquePythonObject(factory(*args, **kwargs))


_PRELUDE = """
os = struct(
    path = struct(exists = _os_path_exists, basename = _os_path_basename, join = _os_path_join),
    getenv = _os_getenv,
)
config = struct(define_bool = _config_define_bool, define_string = _config_define_string, parse = _config_parse)
v1alpha1 = struct(extension_repo = _v1alpha1_extension_repo)
TRIGGER_MODE_AUTO = "TRIGGER_MODE_AUTO"
TRIGGER_MODE_MANUAL = "TRIGGER_MODE_MANUAL"
"""
# Built-ins that only record (their result is not used by the Tiltfile).
_RECORD_ONLY = (
    "version_settings",
    "k8s_resource",
    "local_resource",
    "docker_build",
    "allow_k8s_contexts",
    "default_registry",
    "update_settings",
    "warn",
)
# What each extension provides (tilt-dev/tilt-extensions at the commit the Tiltfile pins).
EXTENSIONS = {
    "ext://helm_resource": ("helm_resource", "helm_repo"),
    "ext://namespace": ("namespace_create", "namespace_yaml", "namespace_inject"),
}


def evaluate(flags: Mapping[str, object] | None = None, context: str = "kind-catalog") -> Evaluation:
    """Evaluate the Tiltfile as `tilt up -- <flags>` would against `context`."""
    recorder = _Recorder(flags or {}, context)
    record = recorder.record
    module = starlark.Module()
    for name in _RECORD_ONLY:
        module.add_callable(name, record(name))
    module.add_callable("k8s_yaml", record("k8s_yaml", recorder.k8s_yaml))
    module.add_callable("local", record("local", recorder.local))
    module.add_callable("read_json", record("read_json", recorder.read_json))
    module.add_callable("listdir", record("listdir", recorder.listdir))
    module.add_callable("watch_file", record("watch_file", recorder.watch_file))
    module.add_callable("k8s_context", record("k8s_context", lambda: recorder.context))
    module.add_callable("port_forward", record("port_forward", _opaque(PortForward)))
    module.add_callable("link", record("link", _opaque(Link)))
    for step in ("fall_back_on", "sync", "run", "initial_sync", "restart_container"):
        module.add_callable(step, record(step, _opaque(lambda *a, _kind=step, **k: Step(_kind, a, k))))
    module.add_callable("_os_path_exists", record("os.path.exists", recorder.exists))
    module.add_callable("_os_path_basename", record("os.path.basename", os.path.basename))
    module.add_callable("_os_path_join", record("os.path.join", os.path.join))
    module.add_callable("_os_getenv", record("os.getenv", lambda name, default=None: default))
    module.add_callable("_config_define_bool", record("config.define_bool"))
    module.add_callable("_config_define_string", record("config.define_string"))
    module.add_callable("_config_parse", record("config.parse", recorder.parse_config))
    module.add_callable("_v1alpha1_extension_repo", record("v1alpha1.extension_repo"))

    def load_extension(name: str) -> starlark.FrozenModule:
        assert name in EXTENSIONS, f"the Tiltfile loads {name}, which these stubs do not know"
        extension = starlark.Module()
        for symbol in EXTENSIONS[name]:
            behaviour = recorder.namespace_create if symbol == "namespace_create" else None
            extension.add_callable(symbol, record(symbol, behaviour))
        return extension.freeze()

    globals_ = starlark.Globals.extended_by([starlark.LibraryExtension.StructType, starlark.LibraryExtension.Print])
    dialect = starlark.Dialect.extended()
    starlark.eval(module, starlark.parse("prelude", _PRELUDE, dialect), globals_)
    ast = starlark.parse("Tiltfile", TILTFILE.read_text(), dialect)
    for load in ast.loads():
        recorder.evaluation.loads[load.module_id] = set(load.symbols)
    starlark.eval(module, ast, globals_, starlark.FileLoader(load_extension))
    return recorder.evaluation


# --- Tilt's assembly of k8s resources, redone ---------------------------------------------


def _full_name(obj: Manifest) -> tuple[str, str, str]:
    return obj["metadata"]["name"], obj["kind"], obj["metadata"].get("namespace", "")


def _fragments(obj: Manifest) -> set[str]:
    """The selectors that name an object: name, name:kind, name:kind:namespace (case-insensitive)."""
    name, kind, namespace = (part.lower() for part in _full_name(obj))
    return {name, f"{name}:{kind}", f"{name}:{kind}:{namespace or 'default'}"}


def pod_template(obj: Manifest) -> Manifest:
    if obj["kind"] == "Pod":
        return obj
    spec: Manifest = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    template: Manifest = spec["template"]
    return template


def _selects(service: Manifest, workload: Manifest) -> bool:
    selector = service["spec"].get("selector") or {}
    labels = pod_template(workload)["metadata"].get("labels", {})
    same_namespace = service["metadata"].get("namespace") == workload["metadata"].get("namespace")
    return bool(selector) and same_namespace and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class Resource:
    """One Tilt resource: its objects (workload first, when it has one) and its options."""

    name: str
    objects: list[Manifest]
    kind: str  # "k8s", "local", "helm", "helm-repo"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def workload(self) -> Manifest | None:
        return self.objects[0] if self.objects and self.objects[0]["kind"] in WORKLOAD_KINDS else None


def assemble(evaluation: Evaluation) -> tuple[dict[str, Resource], list[Manifest]]:
    """The resources Tilt would show, and the objects left "uncategorized"; fails where Tilt would."""
    unresourced = list(evaluation.objects)
    resources: dict[str, Resource] = {}
    for workload in [obj for obj in unresourced if obj["kind"] in WORKLOAD_KINDS]:
        name = workload["metadata"]["name"]
        assert name not in resources, f"two workloads named {name}: Tilt would name them {name}:kind"
        unresourced.remove(workload)
        services = [obj for obj in unresourced if obj["kind"] == "Service" and _selects(obj, workload)]
        for service in services:
            unresourced.remove(service)
        resources[name] = Resource(name, [workload, *services], "k8s")

    every_object = list(evaluation.objects)
    for call in evaluation.named("k8s_resource"):
        workload_name, new_name = call.arg(0, "workload", ""), call.kwargs.get("new_name", "")
        if workload_name:
            assert workload_name in resources, (
                f"k8s_resource({workload_name!r}): no such workload in {sorted(resources)}"
            )
            resource = resources.pop(workload_name)
        else:
            assert new_name, "a k8s_resource without a workload needs new_name"
            assert call.kwargs.get("objects"), f"k8s_resource({new_name!r}) without a workload needs objects"
            assert new_name not in resources, f"k8s_resource named {new_name!r} already exists"
            resource = Resource(new_name, [], "k8s")
        for fragment in call.kwargs.get("objects", []):
            matches = [obj for obj in every_object if fragment.lower() in _fragments(obj)]
            assert len(matches) == 1, f"{fragment!r} names {len(matches)} objects, Tilt needs exactly one"
            assert matches[0] in unresourced, f"{fragment!r} already belongs to another resource"
            unresourced.remove(matches[0])
            resource.objects.append(matches[0])
        for option, value in call.kwargs.items():
            if option not in {"objects", "new_name"}:
                resource.options.setdefault(option, []).extend(value if isinstance(value, list) else [value])
        resource.name = new_name or resource.name
        resources[resource.name] = resource

    for call in evaluation.named("local_resource") + evaluation.named("helm_repo") + evaluation.named("helm_resource"):
        kind = {"local_resource": "local", "helm_repo": "helm-repo", "helm_resource": "helm"}[call.name]
        name = call.kwargs.get("resource_name") or call.args[0] if call.name == "helm_repo" else call.args[0]
        assert name not in resources, f"two resources named {name}"
        resources[name] = Resource(name, [], kind, dict(call.kwargs))
    return resources, unresourced


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
