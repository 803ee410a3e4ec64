"""The chart's monitoring objects against the Prometheus Operator and a Prometheus in the cluster.

`make platform` (deploy/platform/) runs the operator with a Prometheus that selects what
kube-prometheus-stack selects by default (release=kube-prometheus-stack, any namespace); the
release has its ServiceMonitor, PodMonitor and PrometheusRule on. Checked, in order:

1. every API and worker pod is an `up` target (1), found through the chart's selectors;
2. the chart's PrometheusRule is loaded whole (every group of monitoring/prometheus/rules,
   every rule healthy) and, after traffic, its 5-minute recording rules produce series;
3. every dashboard panel and variable query runs; how many return data is reported (the
   production windows reach back days and a week, which a fresh cluster does not have);
4. a drill on the real pods: the worker scaled to 0 while jobs arrive, and reads held by a
   lock on the items table until their statement timeout (the API answers 503): the
   production rules' CatalogApiErrorBudgetBurn (for: 2m) and CatalogWorkerDown (for: 5m)
   must fire; the seconds from the fault to each `firing` are reported; then the worker is
   back and every job accepted during the drill succeeds.

Numbers go to .run/cluster-test/monitoring.md and the pytest output.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from monitoring import queries
from tests.fixtures.cluster import Platform, Release, eventually, query
from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.timeout(1800)

REPORT = ROOT / ".run" / "cluster-test" / "monitoring.md"
RULES_DIR = ROOT / "monitoring" / "prometheus" / "rules"
DRILL_ALERTS = {"CatalogApiErrorBudgetBurn": 2 * 60, "CatalogWorkerDown": 5 * 60}  # their `for:` (production)
DRILL_DEADLINE = 9 * 60  # the slowest `for:` plus scrapes, evaluation and a busy machine
_report: list[str] = []


def _note(line: str) -> None:
    _report.append(line)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("# Monitoring in the cluster\n\n" + "\n".join(f"- {n}" for n in _report) + "\n")
    print(line)


def _prom(platform: Platform, path: str, **params: str) -> Any:
    response = httpx.get(platform.prometheus_url() + path, params=params, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def _pod_ips(release: Release, component: str) -> set[str]:
    return {pod["status"]["podIP"] for pod in release.pods(component) if pod["status"].get("podIP")}


def test_every_api_and_worker_pod_is_an_up_target(platform: Platform, release: Release) -> None:
    def missing() -> str | None:
        targets = _prom(platform, "/api/v1/targets", state="active")["activeTargets"]
        by_job: dict[str, dict[str, str]] = {}
        for target in targets:
            labels = target["labels"]
            if labels.get("namespace") == release.namespace:
                by_job.setdefault(labels["job"], {})[target["scrapeUrl"].split("//")[1].split(":")[0]] = target[
                    "health"
                ]
        for job, component in (("catalog-api", "api"), ("catalog-worker", "worker")):
            pods = _pod_ips(release, component)
            seen = by_job.get(job, {})
            if not pods or set(seen) != pods or set(seen.values()) != {"up"}:
                return f"{job}: pods {sorted(pods)}, targets {seen}"
        return None

    eventually(missing, "every API and worker pod an up target", timeout=180, every=3)
    up = _prom(platform, "/api/v1/query", query=f'up{{namespace="{release.namespace}"}}')["result"]
    jobs = sorted((sample["metric"]["job"], sample["value"][1]) for sample in up)
    assert {value for _, value in jobs} == {"1"}, jobs
    assert {job for job, _ in jobs} == {"catalog-api", "catalog-worker"}
    _note(f"`up` targets of the release: {len(jobs)}, all 1 ({', '.join(job for job, _ in jobs)})")


def _chart_groups() -> dict[str, int]:
    """group name -> rule count, from the rule files the chart ships (synced from monitoring/)."""
    groups: dict[str, int] = {}
    for path in sorted(RULES_DIR.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            groups[group["name"]] = len(group["rules"])
    return groups


def _traffic(release: Release, seconds: float) -> dict[int, int]:
    """Reads, misses and one job a second for `seconds`; returns the count per status."""
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {release.writer_key}"}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=release.service_url(), headers=headers, timeout=10) as http:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            for method, path, body in (
                ("GET", "/v1/items?limit=5", None),
                ("GET", f"/v1/items/{random.randint(10**12, 10**15)}", None),  # an id that does not exist
                ("POST", "/v1/jobs", {"kind": "cpu.burn", "params": {"milliseconds": 20}} if n % 4 == 0 else None),
            ):
                if method == "POST" and body is None:
                    continue
                response = http.request(method, path, json=body)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            time.sleep(0.25)
    return statuses


def test_the_chart_rules_are_loaded_and_the_recordings_produce_series(platform: Platform, release: Release) -> None:
    expected = _chart_groups()

    def not_loaded() -> str | None:
        loaded = {group["name"]: group for group in _prom(platform, "/api/v1/rules")["groups"]}
        absent = sorted(set(expected) - set(loaded))
        if absent:
            return f"groups not loaded: {absent}"
        unhealthy = [
            f"{group['name']}/{rule.get('name')}: {rule.get('lastError')}"
            for name, group in loaded.items()
            if name in expected
            for rule in group["rules"]
            if rule.get("health") not in ("ok", "unknown")
        ]
        counts = {name: len(loaded[name]["rules"]) for name in expected}
        return f"unhealthy: {unhealthy}" if unhealthy else (None if counts == expected else f"{counts} != {expected}")

    eventually(not_loaded, "the chart's PrometheusRule loaded by the operator's Prometheus", timeout=180, every=3)
    statuses = _traffic(release, 75)  # more than a 1m rate window plus two 15 s evaluations
    assert statuses.get(200, 0) > 0, statuses
    assert statuses.get(404, 0) > 0, statuses
    recordings = queries.recording_rules("production")
    five_minute = [(name, expr) for name, expr in recordings if "5m" in name]
    assert five_minute, "the 5-minute recording rules exist"

    def empty_recordings() -> str | None:
        empty = [name for name, _ in five_minute if not _prom(platform, "/api/v1/query", query=name)["result"]]
        return f"no series yet: {empty}" if empty else None

    eventually(empty_recordings, "the 5-minute recording rules to produce series", timeout=120, every=5)
    with_data = sum(1 for name, _ in recordings if _prom(platform, "/api/v1/query", query=name)["result"])
    _note(f"rule groups loaded: {len(expected)} of {len(expected)}, {sum(expected.values())} rules, all healthy; "
          f"recording rules with series after 75 s of traffic: {with_data} of {len(recordings)} "
          f"(every 5-minute one: {len(five_minute)})")  # fmt: skip


def test_every_dashboard_query_runs_and_the_count_with_data_is_reported(platform: Platform, release: Release) -> None:
    values = {"__rate_interval": "1m"}
    ran, with_data, failed = 0, 0, []
    for where, expr in queries.panel_queries():
        response = httpx.get(platform.prometheus_url() + "/api/v1/query",
                             params={"query": queries.substitute(expr, values)}, timeout=30)  # fmt: skip
        ran += 1
        if response.status_code != 200 or response.json()["status"] != "success":
            failed.append(f"{where}: {response.text[:200]}")
        elif response.json()["data"]["result"]:
            with_data += 1
    variables = 0
    for where, definition in queries.variable_queries():
        metric, label = definition.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        found = _prom(platform, f"/api/v1/label/{label}/values", **{"match[]": queries.substitute(metric)})
        variables += 1
        if not found:
            failed.append(f"{where}: {definition} has no values")
    assert failed == [], "\n".join(failed)
    assert ran > 40
    # The panels of the request rate, errors, latency and saturation all read the last minutes.
    assert with_data >= ran // 2, f"{with_data} of {ran} panel queries returned data"
    _note(f"dashboard panel queries with data: {with_data} of {ran} (none failed); template variables with "
          f"values: {variables} of {variables}")  # fmt: skip


class DrillLoad:
    """Reads (held by the lock: 503 after the statement timeout) from READERS threads, and a job a second.

    A read waits up to the statement timeout (5 s), so each reader offers about one read per 5 s
    while the lock holds; the load is bounded by DRILL_DEADLINE, not by a count.
    """

    READERS = 4

    def __init__(self, release: Release) -> None:
        self.release = release
        self.statuses: dict[int, int] = {}
        self.jobs: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.began = time.monotonic()

    def _count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def _client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.release.writer_key}"}
        return httpx.Client(base_url=self.release.service_url(), headers=headers, timeout=15)

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() - self.began < DRILL_DEADLINE + 60

    def reads(self) -> None:
        with self._client() as http:
            while self._running():
                try:  # a new id each time: a cache miss, so a read that waits for the lock
                    self._count(http.get(f"/v1/items/{random.randint(10**12, 10**15)}").status_code)
                except httpx.HTTPError:
                    self._count(0)
                time.sleep(0.5)

    def jobs_arrive(self) -> None:
        with self._client() as http:
            while self._running():
                try:
                    response = http.post("/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 20}})
                    self._count(response.status_code)
                    if response.status_code == 202:
                        with self.lock:
                            self.jobs.append(response.json()["id"])
                except httpx.HTTPError:
                    self._count(0)
                time.sleep(1)

    def threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=self.reads) for _ in range(self.READERS)] + [
            threading.Thread(target=self.jobs_arrive)
        ]


async def _hold_lock(database_url: str, release_lock: asyncio.Event) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            await release_lock.wait()
    finally:
        await conn.close()


def _firing(platform: Platform) -> set[str]:
    alerts = _prom(platform, "/api/v1/alerts")["alerts"]
    return {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}


def test_a_drill_on_the_real_pods_fires_the_production_alerts(platform: Platform, release: Release) -> None:
    worker = release.resource("worker")
    before = _firing(platform)
    assert not set(DRILL_ALERTS) & before, f"already firing before the drill: {before}"
    loop = asyncio.new_event_loop()
    release_lock = asyncio.Event()
    lock = threading.Thread(target=lambda: loop.run_until_complete(_hold_lock(release.database_url, release_lock)))
    load = DrillLoad(release)
    senders = load.threads()
    release.cluster.kubectl("-n", release.namespace, "scale", f"deployment/{worker}", "--replicas=0")
    lock.start()
    began = load.began = time.monotonic()
    for sender in senders:
        sender.start()
    fired: dict[str, float] = {}
    try:
        while time.monotonic() - began < DRILL_DEADLINE and set(fired) != set(DRILL_ALERTS):
            for name in _firing(platform) & set(DRILL_ALERTS):
                fired.setdefault(name, time.monotonic() - began)
            time.sleep(5)
    finally:
        load.stop.set()
        for sender in senders:
            sender.join()
        loop.call_soon_threadsafe(release_lock.set)
        lock.join()
        loop.close()
        release.cluster.kubectl("-n", release.namespace, "scale", f"deployment/{worker}", "--replicas=1")
    for name, seconds in sorted(fired.items(), key=lambda item: item[1]):
        _note(f"drill: {name} firing {seconds:.0f} s after the fault (its `for:` {DRILL_ALERTS[name]} s)")
    _note(f"drill load: {sum(load.statuses.values())} requests, by status {dict(sorted(load.statuses.items()))}; "
          f"{len(load.jobs)} jobs accepted while the worker was at 0")  # fmt: skip
    assert set(fired) == set(DRILL_ALERTS), f"fired {fired}; statuses {load.statuses}"
    for name, seconds in fired.items():
        assert seconds >= DRILL_ALERTS[name], f"{name} fired before its `for:` ({seconds:.0f} s)"
    assert load.statuses.get(503, 0) > 0, load.statuses
    assert load.jobs, load.statuses

    def unfinished() -> str | None:
        rows = query(release.database_url, "SELECT state, count(*) FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY 1",
                     load.jobs)  # fmt: skip
        counts = {row["state"]: row["count"] for row in rows}
        return None if counts == {"succeeded": len(load.jobs)} else str(counts)

    eventually(unfinished, "every job accepted during the drill to succeed once the worker is back", timeout=300,
               every=3)  # fmt: skip
    _note(f"after the drill: all {len(load.jobs)} jobs accepted while the worker was at 0 succeeded")
