"""The worker scaled by KEDA on queue depth: a batch of jobs scales it up, a drained queue scales it back.

Runs only with CATALOG_KEDA=1 (`make cluster-test-keda`): KEDA is built from its Go module by
`make platform-keda`, and that cold build takes longer than the CI budget leaves (docs/keda.md
gives the numbers); a cached build takes seconds. Without it the test is skipped, saying so.

A release of its own (namespace catalog-keda-test, so it never disturbs the shared release of the
other cluster tests) is installed with `worker.keda.enabled=true`: the chart then renders the
ScaledObject and TriggerAuthentication instead of the worker's CPU HPA. Polling every 5 s and a
30 s scale-down window instead of the chart's 15 s and 600 s: only so the test ends in minutes;
the scale-down policy stays the chart's (one pod per 120 s). A bounded batch of cpu.burn jobs is posted
through the API Service; every 5 s the test samples the worker Deployment's replicas and ready
pods, KEDA's HPA (current/desired replicas and the external metric it sees), the ScaledObject's
Active condition, and PostgreSQL's ready-job count (the trigger's own query) and running jobs.
Asserted: the worker scales above its minimum while the queue holds more than one pod's share,
never above its maximum, every job of the batch succeeds exactly once, and the worker returns to
its minimum once the queue is empty. Drawn as .run/cluster-test/keda.png, tabled in keda.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.auth import new_key
from tests.fixtures import chart
from tests.fixtures.cluster import (
    PLATFORM_SCRIPT,
    START_TIMEOUT,
    ClusterBackends,
    LocalCluster,
    Release,
    ctr,
    eventually,
    query,
)
from tests.fixtures.image import IMAGE_REPOSITORY, IMAGE_TAG
from tests.fixtures.paths import ROOT

pytestmark = [
    pytest.mark.timeout(2400),
    pytest.mark.skipif(
        os.environ.get("CATALOG_KEDA") != "1",
        reason="KEDA's cold build does not fit the CI budget: `make cluster-test-keda` (CATALOG_KEDA=1) runs it",
    ),
]

OUT = ROOT / ".run" / "cluster-test"
NAMESPACE = "catalog-keda-test"
RELEASE = "keda"
JOBS = 30  # the batch: bounded in count
JOB_MILLISECONDS = 4000  # CPU time per job: one worker alone needs about 2 minutes for the batch
MIN_REPLICAS = 1
MAX_REPLICAS = 3
JOBS_PER_REPLICA = 4  # the scaler's target: 30 ready jobs ask for 8 pods, capped at MAX_REPLICAS
SAMPLE_EVERY = 5.0
DRAIN_TIMEOUT = 600  # the batch done, however slowly the busy node runs it
SCALE_DOWN_TIMEOUT = 480  # 30 s window + one pod per 120 s from MAX_REPLICAS, with margin
READY_JOBS = "SELECT count(*) FROM jobs WHERE state IN ('queued', 'failed') AND run_at <= now()"


@dataclass
class Sample:
    at: float
    replicas: int  # the Deployment's spec.replicas, as KEDA's HPA sets it
    ready_pods: int
    desired: int | None  # the HPA's desiredReplicas; None until its first sync
    metric: float | None  # the external metric's value the HPA last read (ready jobs, per its view)
    active: bool  # the ScaledObject's Active condition
    ready_jobs: int  # PostgreSQL, the trigger's query
    running_jobs: int


@pytest.fixture(scope="module")
def keda(local_cluster: LocalCluster) -> str:
    """`make platform-keda` on the cluster (idempotent; builds KEDA unless cached); its output."""
    env = {**os.environ, "CATALOG_CLUSTER_KUBECONFIG": str(local_cluster.kubeconfig)}
    result = subprocess.run(["python3", str(PLATFORM_SCRIPT), "up", "keda"], capture_output=True, text=True,
                            env=env, timeout=START_TIMEOUT, check=False)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"`make platform-keda` failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def keda_image(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> str:
    """The catalog image in the cluster: the one the cluster tests imported if there is one, else built.

    This test is about the scaling, not the service's code; re-importing the image while other
    cluster tests run would pull it from under their new pods.
    """
    if f"docker.io/library/{IMAGE_REPOSITORY}:{IMAGE_TAG}" in ctr("images", "list", "--quiet").stdout.split():
        return f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
    return str(request.getfixturevalue("cluster_image"))


@pytest.fixture(scope="module")
def keda_release(
    local_cluster: LocalCluster, keda: str, keda_image: str, cluster_backends: ClusterBackends
) -> Iterator[Release]:
    """The chart with worker.keda on, in a namespace of its own (restricted Pod Security), uninstalled after."""
    cluster = local_cluster
    cluster.fresh_restricted_namespace(NAMESPACE)
    token, digest = new_key()
    repository, tag = keda_image.split(":")
    values: dict[str, object] = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "IfNotPresent",
        "secrets.databaseUrl": cluster_backends.database_url,
        "secrets.redisUrl": cluster_backends.redis.url(),
        "secrets.apiKeys": json.dumps([{"name": "keda-test", "sha256": digest, "scopes": ["jobs:write"]}]),
        # One 2-core node shared with the other cluster tests' releases.
        "api.resources.requests.cpu": "100m",
        "worker.resources.requests.cpu": "100m",
        "worker.keda.enabled": True,
        "worker.keda.minReplicas": MIN_REPLICAS,
        "worker.keda.maxReplicas": MAX_REPLICAS,
        "worker.keda.jobsPerReplica": JOBS_PER_REPLICA,
        "worker.keda.pollingIntervalSeconds": 5,
        "worker.keda.scaleDownStabilizationSeconds": 30,
    }
    started = time.monotonic()
    installed = cluster.helm(
        "install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE, "--wait", "--timeout", "600s",
        *(flag for key, value in values.items() for flag in ("--set-json", f"{key}={json.dumps(value)}")),
        timeout=900,
    )  # fmt: skip
    if installed.returncode != 0:
        events = cluster.kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False)
        pytest.fail(f"helm install failed:\n{installed.stdout}\n{installed.stderr}\nevents:\n{events[-5000:]}")
    try:
        yield Release(cluster, NAMESPACE, RELEASE, token, values, installed.stdout + installed.stderr,
                      time.monotonic() - started, False, cluster_backends.database_url)  # fmt: skip
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--ignore-not-found")
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)


def _quantity(value: str) -> float:
    """A Kubernetes quantity as the HPA reports an external metric ("12", "1500m")."""
    return float(value.removesuffix("m")) / 1000 if value.endswith("m") else float(value)


def _sample(release: Release, began: float, batch: list[str]) -> Sample:
    ns, name = release.namespace, release.resource("worker")
    deployment = release.cluster.json("-n", ns, "get", "deployment", name)
    hpa_result = release.cluster.run("-n", ns, "get", "hpa", f"keda-hpa-{name}", "-o", "json")
    desired: int | None = None
    metric = None
    if hpa_result.returncode == 0:
        status = json.loads(hpa_result.stdout).get("status", {})
        desired = status.get("desiredReplicas") or None  # 0 before the HPA first computed it
        for current in status.get("currentMetrics") or []:
            if current.get("type") == "External":
                value = current["external"]["current"]
                raw = value.get("averageValue") or value.get("value")
                metric = _quantity(raw) if raw is not None else None
    scaled: dict[str, Any] = release.cluster.json("-n", ns, "get", "scaledobject", name)
    conditions = scaled.get("status", {}).get("conditions", [])
    active = any(c["type"] == "Active" and c["status"] == "True" for c in conditions)
    [counts] = query(release.database_url,
                     f"SELECT ({READY_JOBS}) AS ready, "
                     "(SELECT count(*) FROM jobs WHERE state = 'running' AND id = ANY($1::uuid[])) AS running",
                     batch)  # fmt: skip
    return Sample(time.monotonic() - began, int(deployment["spec"].get("replicas", 0)),
                  int(deployment.get("status", {}).get("readyReplicas", 0)), desired, metric, active,
                  int(counts["ready"]), int(counts["running"]))  # fmt: skip


def _draw(samples: list[Sample], posted_in: float, drained_at: float | None) -> None:
    import matplotlib  # noqa: PLC0415  # only the cluster tests draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (pods_axis, jobs_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    times = [s.at for s in samples]
    pods_axis.step(times, [s.replicas for s in samples], where="post", label="worker replicas (KEDA's HPA)")
    pods_axis.step(times, [s.ready_pods for s in samples], where="post", linestyle=":", label="ready worker pods")
    desired = [float("nan") if s.desired is None else s.desired for s in samples]
    pods_axis.step(times, desired, where="post", linestyle="--", label="HPA desired replicas")
    pods_axis.axhline(MAX_REPLICAS, color="grey", linestyle="--", linewidth=0.8, label="maxReplicas")
    pods_axis.set_ylabel("worker pods")
    pods_axis.set_ylim(0, MAX_REPLICAS + 1)
    pods_axis.legend(loc="upper right")
    jobs_axis.plot(times, [s.ready_jobs for s in samples], label="ready jobs (PostgreSQL, the trigger's query)")
    jobs_axis.plot(times, [s.running_jobs for s in samples], label="running jobs of the batch")
    jobs_axis.plot(times, [s.metric if s.metric is not None else float("nan") for s in samples], linestyle="--",
                   label="external metric the HPA read (per pod)")  # fmt: skip
    jobs_axis.axhline(JOBS_PER_REPLICA, color="grey", linestyle=":", label=f"target {JOBS_PER_REPLICA} jobs per pod")
    jobs_axis.set_ylabel("jobs")
    jobs_axis.set_xlabel("seconds since the batch was posted")
    jobs_axis.legend(loc="upper right")
    for axis in (pods_axis, jobs_axis):
        axis.axvspan(0, posted_in, color="orange", alpha=0.2)
        if drained_at is not None:
            axis.axvline(drained_at, color="green", linestyle="-.", linewidth=0.8)
    figure.suptitle(
        f"Worker scaled by KEDA on ready jobs: {JOBS} x cpu.burn {JOB_MILLISECONDS} ms "
        "(posted: shaded; queue empty: green)"
    )
    figure.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT / "keda.png", dpi=100)
    plt.close(figure)


def _post_batch(release: Release) -> list[str]:
    headers = {"Authorization": f"Bearer {release.writer_key}"}
    ids = []
    with httpx.Client(base_url=release.service_url(), headers=headers, timeout=10) as http:
        for _ in range(JOBS):
            created = http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": JOB_MILLISECONDS}})
            assert created.status_code == 202, created.text
            ids.append(str(created.json()["id"]))
    return ids


def _write_report(samples: list[Sample], summary: str) -> None:
    rows = "\n".join(
        f"| {s.at:.0f} | {s.replicas} | {s.ready_pods} | {'' if s.desired is None else s.desired} | "
        f"{'' if s.metric is None else f'{s.metric:g}'} | {s.active} | {s.ready_jobs} | {s.running_jobs} |"
        for s in samples
    )
    (OUT / "keda.md").write_text(
        f"# Worker scaled by KEDA on queue depth\n\n{summary}\n\n![replicas and ready jobs](keda.png)\n\n"
        "| s | replicas | ready pods | HPA desired | metric (per pod) | active | ready jobs | running |\n"
        "|---:|---:|---:|---:|---:|:--|---:|---:|\n"
        f"{rows}\n"
    )


def _run_batch(release: Release) -> tuple[list[Sample], list[str], float, float | None]:
    """Posts the batch and samples until the worker is back at its minimum (or the time is up)."""
    samples: list[Sample] = []
    began = time.monotonic()
    batch = _post_batch(release)
    posted_in = time.monotonic() - began
    drained_at = None
    while time.monotonic() - began < DRAIN_TIMEOUT + SCALE_DOWN_TIMEOUT:
        samples.append(_sample(release, began, batch))
        last = samples[-1]
        if drained_at is None and last.ready_jobs == 0 and last.running_jobs == 0:
            drained_at = last.at
        if drained_at is None and last.at > DRAIN_TIMEOUT:
            break
        if drained_at is not None and last.replicas == MIN_REPLICAS and last.ready_pods == MIN_REPLICAS:
            break
        time.sleep(SAMPLE_EVERY)
    return samples, batch, posted_in, drained_at


def test_keda_scales_the_worker_up_on_queued_jobs_and_back_when_drained(keda_release: Release) -> None:
    release = keda_release
    ns, name = release.namespace, release.resource("worker")
    chart_hpa = release.cluster.run("-n", ns, "get", "hpa", name)
    assert chart_hpa.returncode != 0, "the chart's worker HPA is there beside KEDA's"

    def scaled_object_ready() -> str | None:
        scaled = release.cluster.json("-n", ns, "get", "scaledobject", name)
        conditions = {c["type"]: c for c in scaled.get("status", {}).get("conditions", [])}
        ready = conditions.get("Ready", {})
        hpa = release.cluster.run("-n", ns, "get", "hpa", f"keda-hpa-{name}")
        return None if ready.get("status") == "True" and hpa.returncode == 0 else f"{ready} {hpa.stderr.strip()}"

    eventually(scaled_object_ready, "the ScaledObject Ready and its HPA created", timeout=180, every=2)
    eventually(lambda: None if _sample(release, 0, []).replicas == MIN_REPLICAS else "not at minReplicas",
               "the worker at minReplicas before the batch", timeout=SCALE_DOWN_TIMEOUT, every=5)  # fmt: skip
    samples, batch, posted_in, drained_at = _run_batch(release)
    _draw(samples, posted_in, drained_at)

    outcomes = query(release.database_url,
                     "SELECT j.state, count(a.*) FILTER (WHERE a.outcome = 'succeeded') AS successes "
                     "FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id WHERE j.id = ANY($1::uuid[]) "
                     "GROUP BY j.id, j.state", batch)  # fmt: skip
    succeeded = sum(1 for row in outcomes if row["state"] == "succeeded" and row["successes"] == 1)
    peak = max(s.replicas for s in samples)
    up = next((s.at for s in samples if s.replicas > MIN_REPLICAS), None)
    back = next((s.at for s in samples if drained_at is not None and s.at >= drained_at
                 and s.replicas == MIN_REPLICAS and s.ready_pods == MIN_REPLICAS), None)  # fmt: skip
    summary = (
        f"batch: {JOBS} cpu.burn jobs of {JOB_MILLISECONDS} ms posted in {posted_in:.1f} s; "
        f"{succeeded}/{JOBS} succeeded exactly once; peak ready jobs {max(s.ready_jobs for s in samples)}; "
        f"worker replicas {MIN_REPLICAS} -> {peak} (max {MAX_REPLICAS}), first above {MIN_REPLICAS} "
        f"{up if up is None else round(up)} s after posting; queue empty at "
        f"{drained_at if drained_at is None else round(drained_at)} s; back to {MIN_REPLICAS} at "
        f"{back if back is None else round(back)} s (polling 5 s, {JOBS_PER_REPLICA} jobs per pod, scale-down "
        "window 30 s for the test, then one pod per 120 s as the chart sets)"
    )
    _write_report(samples, summary)
    print(summary)
    assert up is not None, f"KEDA never scaled the worker up: {samples}"
    assert peak <= MAX_REPLICAS, samples
    assert drained_at is not None, f"the batch did not drain within {DRAIN_TIMEOUT} s: {samples[-3:]}"
    assert succeeded == JOBS, [dict(row) for row in outcomes]
    assert back is not None, f"not back to {MIN_REPLICAS} within {SCALE_DOWN_TIMEOUT} s of draining: {samples[-3:]}"
