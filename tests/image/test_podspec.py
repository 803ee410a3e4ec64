"""The derivation follows the rendered manifest, and refuses what it cannot run faithfully.

No container engine needed: these render the chart and read the derived runs.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from tests.fixtures import chart
from tests.fixtures.chart import Manifest, Rendered, container, pod_spec
from tests.fixtures.podspec import Unsupported, derive, quantity

VALUES = {
    "secrets.databaseUrl": "postgresql://catalog@127.0.0.1:5432/catalog",
    "secrets.redisUrl": "redis://127.0.0.1:6379/0",
    "secrets.apiKeys": "[]",
}
_ports = itertools.count(20000)


def _next_port() -> int:
    return next(_ports)


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return chart.render(set_values=VALUES)


def _edited(rendered: Rendered, kind: str, name: str, edit: Manifest) -> Rendered:
    """`rendered` with one workload's first container updated by `edit` (a shallow merge)."""
    objects = copy.deepcopy(list(rendered.objects))
    target = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    pod_spec(target)["containers"][0].update(edit)
    return Rendered(tuple(objects), rendered.text)


def test_the_api_run_carries_every_setting_of_its_container(rendered: Rendered, tmp_path: Path) -> None:
    api = rendered.get("Deployment", chart.name("api"))
    spec = container(api, "api")
    run = derive(rendered, "Deployment", chart.name("api"), "api", "catalog:t", _next_port)
    flags = run.docker_run("api", tmp_path / "api.env")
    assert flags[flags.index("--user") + 1] == "10001:10001"
    assert flags[flags.index("--group-add") + 1] == str(pod_spec(api)["securityContext"]["fsGroup"])
    assert "--read-only" in flags
    assert flags[flags.index("--cap-drop") + 1] == "ALL"
    assert "no-new-privileges" in flags
    assert "--privileged" not in flags
    assert "--cap-add" not in flags
    assert flags[flags.index("--network") + 1] == "host"
    assert flags[flags.index("--tmpfs") + 1].startswith("/tmp:rw,")
    assert f"size={64 * 2**20}" in flags[flags.index("--tmpfs") + 1]
    assert flags[flags.index("--memory") + 1] == str(int(quantity(spec["resources"]["limits"]["memory"])))
    assert flags[flags.index("--stop-timeout") + 1] == str(pod_spec(api)["terminationGracePeriodSeconds"])
    assert flags[flags.index("--entrypoint") + 1 :] == ["gunicorn", "catalog:t", "-c", "python:service.gunicorn_conf"]
    assert run.probes["startup"].path == "/startupz"
    assert run.probes["startup"].port == run.ports["http"] != 8000
    assert run.probes["startup"].failure_threshold == spec["startupProbe"]["failureThreshold"]
    assert run.pre_stop is not None
    assert run.pre_stop.sleep_seconds == spec["lifecycle"]["preStop"]["sleep"]["seconds"]
    env = (tmp_path / "api.env").read_text().splitlines()
    assert f"PORT={run.ports['http']}" in env
    assert "SECRET_KEY=" not in " ".join(flags), "secret values stay in the env file"
    assert (tmp_path / "api.env").stat().st_mode & 0o077 == 0


def test_env_follows_kubernetes_precedence(rendered: Rendered) -> None:
    # The worker sets DB_POOL_MAX_SIZE in env; the ConfigMap it also reads has the API's value.
    run = derive(rendered, "Deployment", chart.name("worker"), "worker", "catalog:t", _next_port)
    config = rendered.get("ConfigMap", chart.name("settings"))["data"]
    worker_env = {
        item["name"]: item["value"]
        for item in container(rendered.get("Deployment", chart.name("worker")), "worker")["env"]
    }
    assert run.env_value("DB_POOL_MAX_SIZE") == worker_env["DB_POOL_MAX_SIZE"] != config["DB_POOL_MAX_SIZE"]
    assert run.env_value("LOG_LEVEL") == config["LOG_LEVEL"]
    assert run.env_value("DATABASE_URL") == VALUES["secrets.databaseUrl"]


@pytest.mark.parametrize(
    ("edit", "flag_present", "flag_absent"),
    [
        (
            {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": False}},
            None,
            "--read-only",
        ),
        (
            {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": True}},
            None,
            "no-new-privileges",
        ),
        (
            {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "capabilities": {"add": ["NET_RAW"]}}},
            "--cap-add",
            "--cap-drop",
        ),
    ],
)
def test_a_changed_manifest_changes_the_run(
    rendered: Rendered, tmp_path: Path, edit: Manifest, flag_present: str | None, flag_absent: str
) -> None:
    # The flags come from the manifest, not from a list of what the chart happens to set today.
    edited = _edited(rendered, "Deployment", chart.name("api"), edit)
    flags = derive(edited, "Deployment", chart.name("api"), "api", "catalog:t", _next_port).docker_run(
        "a", tmp_path / "e"
    )
    assert flag_absent not in flags
    if flag_present:
        assert flag_present in flags


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"env": [{"name": "PORT", "value": "8080"}]}, "PORT=8080 but containerPort 8000"),
        ({"volumeMounts": [{"name": "tmp", "mountPath": "/tmp", "subPath": "x"}]}, "volume"),
        ({"securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": True}}, "runAsNonRoot"),
        ({"livenessProbe": {"exec": {"command": ["true"]}}}, "only httpGet probes"),
        ({"env": [{"name": "X", "value": "$(PORT)"}]}, "refers to another variable"),
    ],
)
def test_what_cannot_be_run_faithfully_is_refused(rendered: Rendered, edit: Manifest, message: str) -> None:
    edited = _edited(rendered, "Deployment", chart.name("api"), edit)
    with pytest.raises((Unsupported, AssertionError), match=message.replace("(", r"\(").replace("$", r"\$")):
        derive(edited, "Deployment", chart.name("api"), "api", "catalog:t", _next_port)


def test_an_existing_secret_cannot_be_resolved(rendered: Rendered) -> None:
    existing = chart.render(set_values={"secrets.existingSecret": "mine"})
    with pytest.raises(Unsupported, match="Secret/mine is not in the render"):
        derive(existing, "Deployment", chart.name("api"), "api", "catalog:t", _next_port)


@pytest.mark.parametrize(("text", "value"), [("500m", 0.5), ("1", 1), (1.5, 1.5), ("256Mi", 256 * 2**20), ("1G", 1e9)])
def test_quantities(text: object, value: float) -> None:
    assert quantity(text) == value
