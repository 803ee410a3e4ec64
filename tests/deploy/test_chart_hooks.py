"""The migration hook: when it runs, and that it needs nothing the release creates after it."""

from __future__ import annotations

from tests.fixtures.chart import CI, Manifest, container, defaults, env, name, pod_spec, render


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
