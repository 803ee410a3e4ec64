"""The image, run the way the chart runs it.

The image is built from the real Dockerfile; the chart is rendered with its
default values plus the image, the test backends and an API key; the
migration Job, the API Deployment and the worker Deployment then run as
containers derived from that render (tests/fixtures/podspec.py) against the
test PostgreSQL and Redis, probed and stopped as a kubelet would
(tests/fixtures/kubelet.py). The tests share one API and one worker container and
run in file order: the stop tests come last.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from service.migrate import discover
from tests.fixtures.engine import STANDIN_PYTHON, Engine
from tests.fixtures.image import BuiltImage, ChartUnderTest, Report, new_container
from tests.fixtures.kubelet import Container, Prober, stop
from tests.fixtures.paths import ROOT
from tests.fixtures.podspec import ContainerRun

# Every tmpfs a container runtime mounts whatever the pod spec says (Kubernetes pods get them too).
RUNTIME_TMPFS = ("/dev/shm", "/dev/mqueue")
# Lists every directory a process can create a file in (it removes what it created).
WRITABLE_DIRS = """
import json, os
found = []
for root, dirs, _ in os.walk("/"):
    if root in ("/proc", "/sys") or root.startswith(("/proc/", "/sys/")):
        dirs[:] = []
        continue
    probe = os.path.join(root, ".write-probe-%d" % os.getpid())
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        continue
    os.unlink(probe)
    found.append(root)
print(json.dumps(found))
"""


def _json_logs(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


@dataclass
class Running:
    container: Container
    prober: Prober
    url: str


def _start(engine: Engine, run: ContainerRun, name: str, workdir: Path) -> Iterator[Running]:
    container = new_container(engine, run, name, workdir).start()
    prober = Prober(container).start()
    port = run.ports.get("http", run.ports.get("metrics"))
    try:
        yield Running(container, prober, f"http://127.0.0.1:{port}")
    finally:
        prober.close()
        container.remove()


@pytest.fixture(scope="module")
def api(engine: Engine, derived: dict[str, ContainerRun], workdir: Path, migrated: None) -> Iterator[Running]:
    yield from _start(engine, derived["api"], "api", workdir)


@pytest.fixture(scope="module")
def worker(engine: Engine, derived: dict[str, ContainerRun], workdir: Path, migrated: None) -> Iterator[Running]:
    yield from _start(engine, derived["worker"], "worker", workdir)


@pytest.fixture(scope="module")
def migrated(engine: Engine, derived: dict[str, ContainerRun], workdir: Path) -> list[list[str]]:
    """Runs the migration Job's container twice; returns what each run applied."""
    run = derived["migrations"]
    applied: list[list[str]] = []
    for attempt in (1, 2):
        container = new_container(engine, run, f"migrations-{attempt}", workdir).start()
        try:
            code = container.wait(timeout=120)
            logs = container.logs()
            assert code == 0, f"migration run {attempt} exited {code}:\n{logs}"
            [done] = [line for line in _json_logs(logs) if line.get("msg") == "schema up to date"]
            assert isinstance(done["applied"], list)
            applied.append([str(label) for label in done["applied"]])
        finally:
            container.remove()
    return applied


def test_the_image_is_built_from_the_dockerfile(image: BuiltImage) -> None:
    assert image.config["User"] == "10001:10001"
    assert image.config["Cmd"] == ["gunicorn", "-c", "python:service.gunicorn_conf"]
    assert not image.config.get("Entrypoint")
    assert image.size_bytes < 1_000_000_000, f"{image.size_bytes / 1e6:.0f} MB"


def test_runtime_dependencies_are_consistent(
    engine: Engine, image: BuiltImage, runtime_uv: Path, report: Report
) -> None:
    # uv is not in the runtime image; the one the build used is mounted read-only for the check.
    result = engine.docker(
        *["run", "--rm", "--network", "host", "--user", "10001:10001", "--read-only", "--tmpfs", "/tmp"],
        *["--env", "UV_CACHE_DIR=/tmp/uv", "--volume", f"{runtime_uv}:/usr/local/bin/uv:ro", "--entrypoint", "uv"],
        *[image.tag, "pip", "check", "--python", "/app/.venv/bin/python"],
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    python = engine.docker("run", "--rm", "--network", "host", image.tag, "python", "--version").stdout.strip()
    report.add("Runtime environment", f"{python} in /app/.venv; `uv pip check`: {output.splitlines()[-1]}")
    # The tests ran the image's Python minor version (tests/deploy/test_dockerfile.py checks the Dockerfile's).
    minor = ".".join(python.split()[1].split(".")[:2])
    assert minor == "{}.{}".format(*sys.version_info[:2]), f"image has {python}, tests run {sys.version}"
    if image.bases.build_args.get("PYTHON_IMAGE", "").startswith("catalog-standin/"):
        assert minor == "{}.{}".format(*STANDIN_PYTHON), f"stand-in base has {python}, expected {STANDIN_PYTHON}"


def test_migrations_exit_0_and_a_second_run_is_a_no_op(
    migrated: list[list[str]], chart_under_test: ChartUnderTest, report: Report
) -> None:
    first, second = migrated
    expected = [f"{m.version:04d}_{m.name}" for m in discover()]
    assert first == expected, "a fresh database gets every migration"
    assert second == [], "the second run finds nothing to do"

    async def recorded() -> int:
        conn = await asyncpg.connect(chart_under_test.database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM schema_migrations"))
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == len(expected)
    report.add("Migrations", f"run 1 applied {first}; run 2 applied {second}; both exited 0")


def test_api_probes_pass_within_the_startup_budget(api: Running, report: Report) -> None:
    probes = api.container.run.probes
    budget = probes["startup"].budget_seconds
    ready = api.prober.wait_ready(timeout=budget + probes["readiness"].period_seconds + 5)
    assert api.prober.started_at is not None
    assert api.prober.started_at <= budget, f"startup took {api.prober.started_at:.1f} s of a {budget:g} s budget"
    deadline = time.monotonic() + probes["liveness"].period_seconds + probes["liveness"].timeout_seconds + 2
    while not any(r.ok for r in api.prober.of("liveness")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(r.ok for r in api.prober.of("liveness")), api.prober.results
    assert api.prober.longest_failure_streak("liveness") == 0
    assert all(r.ok for r in api.prober.of("readiness")), "ready from its first readiness probe on"
    report.add(
        "API start",
        f"startup probe passed {api.prober.started_at:.2f} s after `docker run` (budget {budget:g} s); "
        f"ready {ready:.2f} s after start; liveness passing",
    )


def test_the_api_runs_with_the_chart_s_security_settings(api: Running, engine: Engine, report: Report) -> None:
    run = api.container.run
    status = api.container.process_status()
    assert status["Uid"].split() == [str(run.user)] * 4
    assert status["Gid"].split() == [str(run.group)] * 4
    assert str(run.supplementary_groups[0]) in status["Groups"].split()
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 0, "all capabilities dropped"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "the runtime's default seccomp filter"
    [inspected] = json.loads(engine.docker("inspect", api.container.name).stdout)
    host = inspected["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert set(host["Tmpfs"]) == {mount.path for mount in run.tmpfs} == {"/tmp"}
    report.add(
        "Process credentials (API, /proc/1/status)",
        "; ".join(
            f"{key} {status[key]}" for key in ("Uid", "Gid", "Groups", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp")
        ),
    )


def test_nothing_outside_the_tmpfs_is_writable(api: Running, report: Report) -> None:
    writable = json.loads(api.container.exec("python", "-c", WRITABLE_DIRS, timeout=120))
    allowed = tuple(mount.path for mount in api.container.run.tmpfs) + RUNTIME_TMPFS
    outside = [path for path in writable if not any(path == a or path.startswith(a + "/") for a in allowed)]
    assert not outside, outside
    assert "/tmp" in writable, "the emptyDir is mounted and writable"
    report.add("Writable directories (API, as uid 10001)", ", ".join(writable))


def test_an_item_created_with_the_secret_s_key_reads_back(api: Running, chart_under_test: ChartUnderTest) -> None:
    item = {"sku": "IMG-1", "name": "image test", "category": "tests", "price_cents": 1234, "stock": 5}
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.post("/v1/items", json=item).status_code == 401, "writes need a key"
        created = http.post("/v1/items", json=item, headers={"Authorization": f"Bearer {chart_under_test.writer_key}"})
        assert created.status_code == 201, created.text
        fetched = http.get(f"/v1/items/{created.json()['id']}")
    assert fetched.status_code == 200
    assert {key: fetched.json()[key] for key in item} == item


def test_deeply_nested_job_params_are_a_problem_on_the_image_s_python(
    api: Running, chart_under_test: ChartUnderTest
) -> None:
    """The image's interpreter meets client JSON as production does (Python 3.12 once answered 500 here)."""
    api.prober.wait_ready(timeout=60)
    headers = {"Authorization": f"Bearer {chart_under_test.writer_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=10) as http:
        for depth in (40, 960, 5000):
            nested = '{"a":' * depth + "1" + "}" * depth
            body = f'{{"kind":"cpu.burn","params":{{"milliseconds":1,"x":{nested}}}}}'
            response = http.post("/v1/jobs", content=body)
            assert response.status_code in {400, 422}, (depth, response.status_code, response.text[:200])
            assert response.headers["content-type"] == "application/problem+json"


def _post_job(api: Running, key: str, params: dict[str, object]) -> str:
    response = httpx.post(
        f"{api.url}/v1/jobs",
        json={"kind": "cpu.burn", "params": params},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _job(api: Running, job_id: str) -> dict[str, object]:
    response = httpx.get(f"{api.url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    found: dict[str, object] = response.json()
    return found


def _wait_state(api: Running, job_id: str, states: set[str], timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(api, job_id)
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout:g} s: {_job(api, job_id)}")


def test_the_worker_s_probes_pass_and_it_completes_a_job(
    api: Running, worker: Running, chart_under_test: ChartUnderTest, report: Report
) -> None:
    probes = worker.container.run.probes
    ready = worker.prober.wait_ready(timeout=probes["startup"].budget_seconds + probes["readiness"].period_seconds + 5)
    job_id = _post_job(api, chart_under_test.writer_key, {"milliseconds": 50})
    job = _wait_state(api, job_id, {"succeeded", "dead"}, timeout=30)
    assert job["state"] == "succeeded", job
    assert isinstance(job["result"], dict)
    assert job["result"]["milliseconds"] == 50
    assert any(r.ok for r in worker.prober.of("liveness"))
    report.add("Worker", f"ready {ready:.2f} s after start; a cpu.burn job succeeded")


def test_the_worker_stopped_mid_job_finishes_or_releases_it(
    api: Running, worker: Running, chart_under_test: ChartUnderTest, report: Report
) -> None:
    job_id = _post_job(api, chart_under_test.writer_key, {"milliseconds": 3000})
    _wait_state(api, job_id, {"running"}, timeout=30)
    ended = stop(worker.container)
    logs = worker.container.logs()
    assert ended.exit_code == 0, logs[-4000:]
    assert not ended.killed
    assert ended.exited_after <= worker.container.run.grace_seconds
    job = _job(api, job_id)
    assert job["state"] in {"succeeded", "queued"}, job  # finished within the grace, or released for another worker
    report.add(
        "Worker stop mid-job",
        f"SIGTERM while a 3 s job ran: exit {ended.exit_code} after {ended.exited_after:.1f} s "
        f"(grace {worker.container.run.grace_seconds:g} s); the job ended {job['state']}",
    )


@dataclass
class Traffic:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def test_the_api_stopped_like_the_kubelet_loses_no_request(
    api: Running, chart_under_test: ChartUnderTest, report: Report
) -> None:
    """Steady reads while the API goes through preStop, SIGTERM, its drain and exit.

    An endpoint removal reaches the edge while the preStop sleep runs; the
    drain (SHUTDOWN_DRAIN_SECONDS, /readyz 503) covers slower edges. Traffic
    keeps coming through both, stopping 1 s before the drain ends, as from the
    slowest edge the chart's settings allow for.
    """
    run = api.container.run
    drain = float(run.env_value("SHUTDOWN_DRAIN_SECONDS"))
    item = {"sku": "IMG-STOP", "name": "stop", "category": "tests", "price_cents": 1, "stock": 1}
    headers = {"Authorization": f"Bearer {chart_under_test.writer_key}"}
    item_id = httpx.post(f"{api.url}/v1/items", json=item, headers=headers, timeout=10).json()["id"]

    signalled = threading.Event()
    traffic = Traffic()
    interval = 0.02  # 50 requests a second

    def send() -> None:
        signal_at: float | None = None
        with httpx.Client(base_url=api.url, timeout=10) as http:
            next_at = time.monotonic()
            while True:
                now = time.monotonic()
                if signalled.is_set():
                    signal_at = signal_at or now
                    if now - signal_at >= drain - 1:
                        return
                traffic.sent += 1
                try:
                    response = http.get(f"/v1/items/{item_id}")
                    if response.status_code != 200:
                        traffic.failed += 1
                        traffic.errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    traffic.failed += 1
                    traffic.errors.append(repr(error))
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # steady before termination begins
    draining: list[int] = []

    def readiness_after_signal() -> None:
        signalled.wait(timeout=run.grace_seconds)
        time.sleep(min(0.5, drain / 2))
        try:
            draining.append(httpx.get(f"{api.url}/readyz", timeout=2).status_code)
        except httpx.HTTPError:
            draining.append(0)

    checker = threading.Thread(target=readiness_after_signal)
    checker.start()
    ended = stop(api.container, on_signal=signalled)
    sender.join(timeout=30)
    checker.join(timeout=10)
    logs = api.container.logs()
    assert traffic.failed == 0, traffic.errors[:10]
    assert traffic.sent >= (run.pre_stop.sleep_seconds if run.pre_stop else 0) * 0.8 / interval
    assert draining == [503], "readyz answers 503 while draining"
    assert ended.exit_code == 0, logs[-4000:]
    assert not ended.killed
    assert ended.exited_after <= run.grace_seconds
    report.add(
        "API stop under steady traffic (kubelet order: preStop, SIGTERM, grace period)",
        f"requests sent {traffic.sent}, failed {traffic.failed}; preStop sleep "
        f"{run.pre_stop.sleep_seconds if run.pre_stop else 0:g} s, SIGTERM at {ended.signalled_after:.1f} s, "
        f"exit code {ended.exit_code} at {ended.exited_after:.1f} s "
        f"({ended.exited_after - ended.signalled_after:.1f} s after SIGTERM; drain {drain:g} s; "
        f"grace {run.grace_seconds:g} s); /readyz during the drain: {draining[0]}",
    )


def test_the_dev_target_gives_only_the_source_to_the_container_user(engine: Engine, image: BuiltImage) -> None:
    """Tilt's live update writes into /app/service as uid 10001: the `dev` target (and only it) allows that."""
    build_args = [arg for name, value in image.bases.build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    dev_tag = f"{image.tag}-dev"
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "local" / "image.sh"), "--target", "dev", *build_args],
        env={**engine.env, "IMAGE": dev_tag, "CONTAINER_ENGINE": "docker"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    def owners(tag: str) -> str:
        probe = "stat -c '%n %u' /app/service /app/service/app.py /app/.venv /app/.venv/bin/python; id -u"
        run = engine.docker("run", "--rm", "--network", "host", "--entrypoint", "sh", tag, "-c", probe)
        return run.stdout

    dev = owners(dev_tag)
    assert "/app/service 10001" in dev
    assert "/app/service/app.py 10001" in dev
    assert "/app/.venv 0" in dev  # the virtualenv stays root's: only the source is live-updated
    assert dev.splitlines()[-1] == "10001"  # the same user the production stage runs as
    production = owners(image.tag)
    assert "/app/service 0" in production  # production: the app cannot modify itself
    assert production.splitlines()[-1] == "10001"
