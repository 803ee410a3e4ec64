"""The API's HorizontalPodAutoscaler on real CPU from metrics-server: a burst scales it up, quiet scales it down.

`kubectl top` answers for the release's pods (metrics-server of `make platform`). Then the release's
HPA is given a short scale-down window (30 s instead of 300 s, 100 %/min: only so the test ends in
minutes; the scale-up policy stays the chart's: at most `scaleUpPodsPerMinute` pods a minute), and a
bounded open-model burst (paced arrivals, a new connection per request so kube-proxy spreads them
over new pods too) goes to the API Service from the node. Sampled every 5 s: the HPA's current
and desired replicas, its CPU utilization, the ready pods and `kubectl top`'s CPU. Asserted: the
HPA scales up during the burst, never faster than its policy, no request fails while pods are
added, and it returns to minReplicas after the burst. The samples are drawn as
.run/cluster-test/autoscaling.png and tabled in .run/cluster-test/autoscaling.md.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Release, eventually
from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.timeout(1800)

OUT = ROOT / ".run" / "cluster-test"
# Arrivals per second during the burst: 60/s held two pods at 62-72 % of their 100m request (inside
# the HPA's 10 % tolerance around its 70 % target: no scale-up), so twice that.
RATE = 120.0
TARGET_PERCENT = 70  # the HPA target this burst is sized for (set by the test, not the chart default)
BURST_SECONDS = 150  # the burst ends here whatever happens
SCALE_DOWN_TIMEOUT = 360
SAMPLE_EVERY = 5.0
WORKERS = 16  # sender threads: enough that slow answers never hold back arrivals at RATE


@dataclass
class Sample:
    at: float
    current: int
    desired: int
    utilization: int | None  # % of the CPU request, the HPA's view
    ready: int
    top_millicores: int | None  # sum over the API pods, kubectl top


@dataclass
class Burst:
    url: str
    key: str
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seconds: float) -> None:
        started = time.monotonic()
        counter = iter(range(10**9))

        def sender() -> None:
            with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=10,
                              limits=httpx.Limits(max_keepalive_connections=0)) as http:  # fmt: skip
                while True:
                    with self.lock:
                        n = next(counter)
                    due = started + n / RATE
                    if due - started >= seconds:
                        return
                    time.sleep(max(0.0, due - time.monotonic()))
                    path = "/v1/items?limit=20" if n % 2 else f"/v1/items/{1 + n % 50}"
                    try:
                        status = http.get(path).status_code
                        ok = status in (200, 404)
                        detail = str(status)
                    except httpx.HTTPError as error:
                        ok, detail = False, repr(error)
                    with self.lock:
                        self.sent += 1
                        if not ok:
                            self.failed.append(detail)

        threads = [threading.Thread(target=sender) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _sample(release: Release, began: float) -> Sample:
    hpa: dict[str, Any] = release.cluster.json("-n", release.namespace, "get", "hpa", release.resource("api"))
    status = hpa.get("status", {})
    utilization = None
    for metric in status.get("currentMetrics") or []:
        if metric.get("type") == "Resource" and metric["resource"]["name"] == "cpu":
            utilization = metric["resource"]["current"].get("averageUtilization")
    ready = sum(
        1
        for pod in release.pods("api")
        if any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
        and not pod["metadata"].get("deletionTimestamp")
    )
    top = release.cluster.run("-n", release.namespace, "top", "pods", "--no-headers", "-l",
                              f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=api")  # fmt: skip
    millicores = None
    if top.returncode == 0 and top.stdout.strip():
        millicores = sum(int(line.split()[1].removesuffix("m")) for line in top.stdout.splitlines())
    return Sample(time.monotonic() - began, int(status.get("currentReplicas", 0)),
                  int(status.get("desiredReplicas", 0)), utilization, ready, millicores)  # fmt: skip


def _draw(samples: list[Sample], burst_end: float, request_millicores: int) -> None:
    import matplotlib  # noqa: PLC0415  # only this test draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (replicas_axis, cpu_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    times = [s.at for s in samples]
    replicas_axis.step(times, [s.current for s in samples], where="post", label="current replicas (HPA)")
    replicas_axis.step(times, [s.desired for s in samples], where="post", linestyle="--", label="desired replicas")
    replicas_axis.step(times, [s.ready for s in samples], where="post", linestyle=":", label="ready pods")
    replicas_axis.set_ylabel("API pods")
    replicas_axis.legend(loc="upper right")
    cpu_axis.plot(times, [s.top_millicores or 0 for s in samples], label="CPU of all API pods (kubectl top, m)")
    cpu_axis.plot(times, [(s.utilization or 0) * request_millicores / 100 for s in samples],
                  label="HPA: average CPU per pod (m)")  # fmt: skip
    cpu_axis.axhline(TARGET_PERCENT / 100 * request_millicores, color="grey", linestyle="--",
                     label=f"target per pod ({TARGET_PERCENT} % of request)")  # fmt: skip
    cpu_axis.set_ylabel("millicores")
    cpu_axis.set_xlabel("seconds since the burst began")
    cpu_axis.legend(loc="upper right")
    for axis in (replicas_axis, cpu_axis):
        axis.axvspan(0, burst_end, color="orange", alpha=0.1)
    figure.suptitle(f"API HPA under a {RATE:.0f} req/s burst for {BURST_SECONDS} s (shaded), then quiet")
    figure.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT / "autoscaling.png", dpi=100)
    plt.close(figure)


def test_kubectl_top_answers_for_the_release_pods(release: Release) -> None:
    def top() -> str | None:
        result = release.cluster.run("-n", release.namespace, "top", "pods", "--no-headers")
        names = {line.split()[0] for line in result.stdout.splitlines()}
        pods = {pod["metadata"]["name"] for pod in release.pods("api") + release.pods("worker")}
        return None if result.returncode == 0 and pods <= names else f"{result.stderr.strip()} {names} vs {pods}"

    eventually(top, "kubectl top pods to list every API and worker pod", timeout=180, every=5)


def test_a_burst_scales_the_api_up_within_its_policy_and_quiet_scales_it_back(release: Release) -> None:
    autoscaling: dict[str, object] = {
        "api.autoscaling.scaleDownStabilizationSeconds": 30,
        "api.autoscaling.scaleDownPercentPerMinute": 100,
        # The burst (RATE through the Service) is sized for this target, on this 2-core node's
        # pods; the chart's default comes from `make capacity` (bench/results/capacity.md) and scales
        # later, at the CPU a pod carries near its knee.
        "api.autoscaling.targetCPUUtilizationPercentage": TARGET_PERCENT,
    }
    chart_defaults = {key: release.values.get(key) for key in autoscaling}
    upgraded = release.upgrade(autoscaling)
    assert upgraded.returncode == 0, upgraded.stderr
    minimum = int(release.cluster.json("-n", release.namespace, "get", "hpa", release.resource("api"))["spec"][
        "minReplicas"])  # fmt: skip
    per_minute = 4  # the chart's api.autoscaling.scaleUpPodsPerMinute
    request = release.cluster.json("-n", release.namespace, "get", "deployment", release.resource("api"))
    cpu = request["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    request_millicores = int(cpu.removesuffix("m")) if cpu.endswith("m") else int(float(cpu) * 1000)
    eventually(lambda: None if _sample(release, 0).current == minimum else "not at minReplicas yet",
               "the HPA at minReplicas before the burst", timeout=SCALE_DOWN_TIMEOUT, every=5)  # fmt: skip

    burst = Burst(release.service_url(), release.writer_key)
    samples: list[Sample] = []
    began = time.monotonic()
    sender = threading.Thread(target=burst.run, args=(BURST_SECONDS,))
    sender.start()
    try:
        while sender.is_alive():
            samples.append(_sample(release, began))
            time.sleep(SAMPLE_EVERY)
        burst_end = time.monotonic() - began
        while time.monotonic() - began < burst_end + SCALE_DOWN_TIMEOUT:
            samples.append(_sample(release, began))
            if samples[-1].current == minimum and samples[-1].ready == minimum:
                break
            time.sleep(SAMPLE_EVERY)
    finally:
        sender.join()
        for key, value in chart_defaults.items():  # back to what the release had (the chart's defaults)
            if value is None:
                release.values.pop(key, None)
        restored = release.upgrade({k: v for k, v in chart_defaults.items() if v is not None})
        assert restored.returncode == 0, restored.stderr
    _draw(samples, burst_end, request_millicores)

    up = next((s.at for s in samples if s.current > minimum), None)
    peak = max(s.current for s in samples)
    down = next((s.at - burst_end for s in samples if s.at > burst_end and s.current == minimum), None)
    rows = "\n".join(
        f"| {s.at:.0f} | {s.current} | {s.desired} | {s.ready} | {s.utilization} | {s.top_millicores} |"
        for s in samples
    )
    summary = (
        f"burst: {burst.sent} requests at {RATE:.0f}/s for {BURST_SECONDS} s, failed {len(burst.failed)}; "
        f"replicas {minimum} -> {peak}; first scale-up {up if up is None else round(up)} s after the burst began; "
        f"back to {minimum} {down if down is None else round(down)} s after it ended "
        f"(scale-down window 30 s for the test; CPU request {request_millicores}m, target 70 %)"
    )
    (OUT / "autoscaling.md").write_text(
        f"# API HPA under a burst\n\n{summary}\n\n![replicas and CPU](autoscaling.png)\n\n"
        "| s | current | desired | ready | CPU % of request | kubectl top (m) |\n|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
    )
    print(summary)
    assert burst.failed == [], burst.failed[:10]
    assert up is not None, f"the HPA never scaled up: {samples}"
    for earlier in samples:
        later = [s.current for s in samples if earlier.at < s.at <= earlier.at + 60]
        if later:
            assert max(later) - earlier.current <= per_minute, f"faster than {per_minute} pods/min: {samples}"
    assert down is not None, f"not back to {minimum} within {SCALE_DOWN_TIMEOUT} s: {samples[-3:]}"
