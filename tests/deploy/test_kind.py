"""deploy/kind: the ctlptl config `make kind-up` applies (a kind cluster with a local
registry and the ingress ports on the host), and the script behind `make kind-up` /
`make kind-down`, which stops with a message naming each missing tool. No cluster is
created here: the script is run with stand-ins for the tools on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.paths import ROOT

KIND = ROOT / "deploy" / "kind"
CONFIG = KIND / "cluster.yaml"
SCRIPT = KIND / "cluster.sh"
TOOLS = ("docker", "kind", "ctlptl", "kubectl")
NODE_IMAGE = re.compile(r"kindest/node:v(\d+)\.(\d+)\.(\d+)@sha256:[0-9a-f]{64}")


def _config() -> tuple[dict[str, Any], dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(CONFIG.read_text()) if doc]
    [registry] = [doc for doc in documents if doc["kind"] == "Registry"]
    [cluster] = [doc for doc in documents if doc["kind"] == "Cluster"]
    return registry, cluster


def _script_constant(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", SCRIPT.read_text(), re.MULTILINE)
    assert match, name
    return match[1]


def test_the_cluster_uses_a_local_registry_on_loopback() -> None:
    registry, cluster = _config()
    assert registry["apiVersion"] == cluster["apiVersion"] == "ctlptl.dev/v1alpha1"
    assert cluster["product"] == "kind"
    assert cluster["registry"] == registry["name"]
    assert registry["listenAddress"] == "127.0.0.1"
    assert isinstance(registry["port"], int)


def test_the_context_name_is_the_one_the_script_waits_for() -> None:
    _, cluster = _config()
    # ctlptl requires the kind- prefix; the kind cluster itself is called "catalog".
    assert cluster["name"] == _script_constant("CONTEXT") == "kind-catalog"


def test_every_node_runs_one_image_pinned_by_digest() -> None:
    _, cluster = _config()
    nodes = cluster["kindV1Alpha4Cluster"]["nodes"]
    images = {node["image"] for node in nodes}
    assert len(images) == 1, images
    [image] = images
    match = NODE_IMAGE.fullmatch(image)
    assert match, image
    chart_minimum = yaml.safe_load((ROOT / "deploy" / "helm" / "catalog" / "Chart.yaml").read_text())["kubeVersion"]
    minimum = re.match(r">=(\d+)\.(\d+)", chart_minimum)
    assert minimum
    assert (int(match[1]), int(match[2])) >= (int(minimum[1]), int(minimum[2])), "the chart's kubeVersion refuses it"
    assert [node["role"] for node in nodes].count("control-plane") == 1


def test_the_ingress_node_publishes_http_and_https_on_the_host() -> None:
    _, cluster = _config()
    [control_plane] = [n for n in cluster["kindV1Alpha4Cluster"]["nodes"] if n["role"] == "control-plane"]
    ports = {m["containerPort"]: (m["hostPort"], m["listenAddress"]) for m in control_plane["extraPortMappings"]}
    assert ports == {80: (8080, "127.0.0.1"), 443: (8443, "127.0.0.1")}
    # The controller values put the controller on exactly that node, with host ports.
    controller = yaml.safe_load((KIND / "ingress-nginx-values.yaml").read_text())["controller"]
    assert controller["hostPort"]["enabled"] is True
    assert controller["nodeSelector"].items() <= control_plane["labels"].items()
    assert {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"} in (
        controller["tolerations"]
    )


def test_the_stated_versions_agree() -> None:
    """The script warns about another kind than the one the node image was made for; the config says which."""
    kind_version, ctlptl_version = _script_constant("KIND_VERSION"), _script_constant("CTLPTL_VERSION")
    comment = CONFIG.read_text()
    assert f"kind {kind_version}" in comment
    assert f"ctlptl v{ctlptl_version}" in comment


def _stand_ins(tmp_path: Path, tools: tuple[str, ...], docker_info_fails: bool = False) -> dict[str, str]:
    """A PATH with only dirname and stand-ins for `tools` (each records its arguments and succeeds)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname
    (bin_dir / "dirname").symlink_to(dirname)
    for tool in tools:
        fail = 'if [ "$1" = info ]; then exit 1; fi\n' if tool == "docker" and docker_info_fails else ""
        stand_in = bin_dir / tool
        stand_in.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n{fail}exit 0\n')
        stand_in.chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    return subprocess.run([bash, str(SCRIPT), *args], capture_output=True, text=True, check=False, env=env, cwd="/")


def test_kind_up_names_every_missing_tool_and_where_to_get_it(tmp_path: Path) -> None:
    result = _run(_stand_ins(tmp_path, ()), "up")
    assert result.returncode == 1
    for tool in TOOLS:
        assert re.search(rf"missing: {tool} \(.*https://", result.stderr), result.stderr
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize("absent", TOOLS)
def test_kind_up_names_only_the_missing_tool(tmp_path: Path, absent: str) -> None:
    result = _run(_stand_ins(tmp_path, tuple(t for t in TOOLS if t != absent)), "up")
    assert result.returncode == 1
    assert re.findall(r"missing: (\w+)", result.stderr) == [absent]


def test_kind_up_refuses_when_the_docker_daemon_does_not_answer(tmp_path: Path) -> None:
    result = _run(_stand_ins(tmp_path, TOOLS, docker_info_fails=True), "up")
    assert result.returncode == 1
    assert "daemon does not answer" in result.stderr
    assert "ctlptl" not in (tmp_path / "calls").read_text()


def test_kind_up_and_down_apply_and_delete_the_config(tmp_path: Path) -> None:
    env = _stand_ins(tmp_path, TOOLS)
    assert _run(env, "up").returncode == 0
    assert _run(env, "down").returncode == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    config = os.path.relpath(CONFIG, ROOT)
    assert f"ctlptl apply -f {config}" in calls
    assert f"ctlptl delete -f {config}" in calls
    assert "kubectl --context kind-catalog wait --for=condition=Ready nodes --all --timeout=180s" in calls
    assert _run(env, "sideways").returncode == 2


def test_make_targets_call_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("kind-up", "kind-down"):
        recipe = re.search(rf"^{target}:\n\t(.+)$", makefile, re.MULTILINE)
        assert recipe, target
        assert f"deploy/kind/cluster.sh {target.removeprefix('kind-')}" in recipe[1]
