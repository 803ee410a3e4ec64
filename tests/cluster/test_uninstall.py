"""The end of a release's life on the local cluster, and of the cluster itself: `helm rollback` to
the previous revision, `helm uninstall`, and `make cluster-down` (when this session started the
cluster) leaving no process, mount, interface or firewall rule behind. Runs last (file order).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cluster import CLUSTER_SCRIPT, LocalCluster, Release, eventually

# The first test also waits for the cluster, the image and the install (tests/fixtures/cluster.py).
pytestmark = pytest.mark.timeout(1500)


# Kept on purpose after uninstall: the migration hook Job (hook-delete-policy before-hook-creation keeps
# the last run for `kubectl logs`; helm never deletes hooks on uninstall) and the pod it ran in.
def _kept(name: str, release: Release) -> bool:
    job = release.resource("migrations")
    return name == f"Job/{job}" or name.startswith(f"Pod/{job}-")


def _history(release: Release) -> list[dict[str, object]]:
    out = release.cluster.helm("history", release.name, "--namespace", release.namespace, "-o", "json")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def _template_annotations(release: Release) -> dict[str, str]:
    deployment = release.cluster.json("-n", release.namespace, "get", "deployment", release.resource("api"))
    return dict(deployment["spec"]["template"]["metadata"].get("annotations", {}))


def test_rollback_then_uninstall_leaves_only_what_is_kept_on_purpose(release: Release) -> None:
    before = _template_annotations(release)
    changed = release.upgrade({"api.podAnnotations": {"cluster-test/rollback": "new"}})
    assert changed.returncode == 0, changed.stderr
    assert _template_annotations(release).get("cluster-test/rollback") == "new"
    history = _history(release)
    previous = int(str(history[-2]["revision"]))
    rolled = release.cluster.helm("rollback", release.name, str(previous), "--namespace", release.namespace,
                                  "--wait", "--timeout", "300s")  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    assert _template_annotations(release) == before
    last = _history(release)[-1]
    print(f"rollback: revision {last['revision']} is {last['description']!r}")
    assert last["description"] == f"Rollback to {previous}"

    gone = release.cluster.helm(
        "uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "300s"
    )
    assert gone.returncode == 0, gone.stderr
    selector = f"app.kubernetes.io/instance={release.name}"

    def remaining() -> list[str]:
        kinds = "deployments,replicasets,pods,services,configmaps,secrets,serviceaccounts,jobs,hpa,pdb,networkpolicies"
        if release.monitoring_crds:
            kinds += ",servicemonitors,podmonitors,prometheusrules"
        listing = release.cluster.json("-n", release.namespace, "get", kinds, "-l", selector)
        names = [f"{item['kind']}/{item['metadata']['name']}" for item in listing["items"]]
        helm_secrets = release.cluster.json(
            "-n", release.namespace, "get", "secrets", "-l", f"owner=helm,name={release.name}"
        )
        return names + [f"Secret/{item['metadata']['name']}" for item in helm_secrets["items"]]

    eventually(lambda: None if all(_kept(name, release) for name in remaining()) else str(remaining()),
               "everything of the release but what is kept on purpose to go", timeout=180, every=2)  # fmt: skip
    print(f"after uninstall, kept on purpose: {remaining()}")


def _ours(pid_dir: str) -> list[str]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catalog-cluster"
    found = []
    for entry in os.listdir(pid_dir):
        if entry.isdigit():
            try:
                exe = os.readlink(f"{pid_dir}/{entry}/exe")
            except OSError:
                continue
            if exe.startswith(str(cache)) or Path(exe).name in ("kube-apiserver", "kubelet", "etcd", "kube-proxy"):
                found.append(f"{entry} {exe}")
    return found


def test_cluster_down_leaves_nothing_behind(local_cluster: LocalCluster) -> None:
    if not local_cluster.started_here:
        pytest.skip("the cluster was started by `make cluster`, not this session: it stays up")
    down = local_cluster.script("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert _ours("/proc") == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert " cni0:" not in links, links
    assert "master cni0" not in links, links
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "/run/catalog-cluster" not in mounts
    assert "/var/lib/catalog-cluster" not in mounts
    for binary in ("iptables", "ip6tables"):
        rules = subprocess.run([f"{binary}-save"], capture_output=True, text=True, check=True).stdout
        ours = [line for line in rules.splitlines() if any(mark in line for mark in ("KUBE-", "CNI-", "CATALOG-"))]
        assert ours == [], ours
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert "kube-proxy" not in tables, tables
    addresses = subprocess.run(["ip", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True)
    assert "198.19.255.1" not in addresses.stdout
    assert not list(Path("/sys/fs/cgroup").glob("*/kubepods")), "the pods' cgroups are gone"
    assert CLUSTER_SCRIPT.exists()
