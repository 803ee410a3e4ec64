"""The worker on the local cluster: a pod deleted (as a rollout or a node drain does) while a job
runs. The kubelet sends SIGTERM and waits the pod's grace; the worker finishes the job within its
shutdown grace or releases it for the next pod. Either way the job ends `succeeded`, exactly once.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fixtures.cluster import Release, eventually, query

# The first test also waits for the cluster, the image and the install (tests/fixtures/cluster.py).
pytestmark = pytest.mark.timeout(1500)

JOB_MILLISECONDS = 8000  # CPU time; long enough to be in flight when the pod is deleted


def test_worker_pod_deleted_mid_job_the_job_succeeds_exactly_once(release: Release) -> None:
    url = release.service_url()
    headers = {"Authorization": f"Bearer {release.writer_key}"}
    created = httpx.post(f"{url}/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": JOB_MILLISECONDS}},
                         headers=headers, timeout=10)  # fmt: skip
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    def state() -> str:
        return str(httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()["state"])

    eventually(lambda: None if state() == "running" else state(), "the job to start", timeout=60, every=0.2)
    [pod] = release.pods("worker")
    deleted_at = time.monotonic()
    release.cluster.kubectl("-n", release.namespace, "delete", "pod", pod["metadata"]["name"], "--wait=false")
    eventually(lambda: None if state() in ("succeeded", "dead") else state(), "the job to end", timeout=300, every=1)
    assert state() == "succeeded"
    attempts = query(release.database_url, "SELECT attempt, worker, outcome FROM job_attempts WHERE job_id = $1 "
                     "ORDER BY attempt", job_id)  # fmt: skip
    outcomes = [row["outcome"] for row in attempts]
    print(f"job {job_id}: attempts {[(r['attempt'], r['worker'], r['outcome']) for r in attempts]}, "
          f"ended {time.monotonic() - deleted_at:.0f} s after the pod's deletion")  # fmt: skip
    assert outcomes.count("succeeded") == 1, outcomes
    # A replacement worker pod is running again.
    eventually(lambda: None if any(p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
                                   for p in release.pods("worker")) else "no running worker",
               "a replacement worker", timeout=180)  # fmt: skip
