"""Fixtures of the image test: an engine, the built image, the chart rendered for it, a report.

The report (image facts, the derived engine command per workload, the API's
stop under traffic) is printed at the end of the pytest run and written to
`.run/image-test/report.md`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import servers  # deploy/local, put on sys.path by tests/conftest.py

from service.auth import new_key
from tests.conftest import ROOT, Backends
from tests.deploy import chart
from tests.deploy.chart import Rendered
from tests.image.engine import Bases, Engine, EngineUnavailable, pinned_uv_version, stand_in_bases, uv_binary
from tests.image.kubelet import Container
from tests.image.podspec import ContainerRun, derive

IMAGE_REPOSITORY = "catalog"
IMAGE_TAG = "image-test"
RELEASE = "img"
REPORT_FILE = ROOT / ".run" / "image-test" / "report.md"


@dataclass
class Report:
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, title: str, text: str) -> None:
        self.sections.append((title, text))

    def text(self) -> str:
        return "\n\n".join(f"## {title}\n{body}" for title, body in self.sections)


REPORT = Report()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT.sections:
        return
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text(f"# Image test report\n\n{REPORT.text()}\n")
    terminalreporter.section("image test report")
    terminalreporter.write_line(REPORT.text())
    terminalreporter.write_line(f"(also in {REPORT_FILE.relative_to(ROOT)})")


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="catalog-image-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="session")
def engine(report: Report) -> Iterator[Engine]:
    try:
        found = Engine.find_or_start()
    except EngineUnavailable as why:
        pytest.skip(f"no container engine for the image test: {why}")
    report.add("Engine", "\n".join(found.notes))
    try:
        yield found
    finally:
        found.close()


@pytest.fixture(scope="session")
def bases(engine: Engine, workdir: Path, report: Report) -> Bases:
    """Stand-ins unless CATALOG_IMAGE_BASES=real asks for the Dockerfile's own (registry-pulled) bases."""
    if os.environ.get("CATALOG_IMAGE_BASES") == "real":
        return Bases({}, "the Dockerfile's default bases (pulled from their registries)")
    started = time.monotonic()
    try:
        found = stand_in_bases(engine, workdir)
    except EngineUnavailable as why:
        pytest.skip(f"cannot make the stand-in base images: {why}")
    report.add("Bases", f"{found.description}\n(ready in {time.monotonic() - started:.1f} s; cached by tag)")
    return found


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    seconds: float
    size_bytes: int
    config: dict[str, object]
    bases: Bases


@pytest.fixture(scope="session")
def image(engine: Engine, bases: Bases, report: Report) -> BuiltImage:
    """The image built from the real Dockerfile by `deploy/local/image.sh` (what `make image` runs)."""
    tag = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
    build_args = [arg for name, value in bases.build_args.items() for arg in ("--build-arg", f"{name}={value}")]

    def build() -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(ROOT / "deploy" / "local" / "image.sh"), *build_args],
            env={**engine.env, "IMAGE": tag, "CONTAINER_ENGINE": "docker"},
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        return result, time.monotonic() - started

    result, seconds = build()
    if "failed to read dockerfile" in result.stderr:
        # BuildKit's stale state after an interrupted build: start its cache afresh, once.
        engine.docker("builder", "prune", "-af", timeout=600, check=False)
        result, seconds = build()
    assert result.returncode == 0, f"the build failed:\n{result.stderr[-6000:]}"
    if engine.started is not None:
        # Our own data root only: the image this replaced would pile up run after run.
        engine.docker("image", "prune", "--force", check=False)
    [inspected] = json.loads(engine.docker("image", "inspect", tag).stdout)
    command = next(line for line in result.stderr.splitlines() if line.startswith("image: "))
    cached = sum(1 for line in result.stderr.splitlines() if line.endswith(" CACHED"))
    built = BuiltImage(tag, seconds, int(inspected["Size"]), inspected["Config"], bases)
    report.add(
        "Image",
        f"{command}\nbuilt in {seconds:.1f} s ({cached} steps taken from the build cache of earlier runs); "
        f"size {built.size_bytes / 1e6:.1f} MB; user {inspected['Config'].get('User')}",
    )
    return built


@dataclass(frozen=True)
class ChartUnderTest:
    rendered: Rendered
    writer_key: str  # the API key whose hash the rendered Secret holds with items:write and jobs:write
    database_url: str


@pytest.fixture(scope="session")
def fresh_database(backends: Backends) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL, so the first migration run has work to do."""
    name = f"catalog_image_{uuid.uuid4().hex[:8]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(backends.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    url = urlsplit(backends.database_url)
    yield urlunsplit(url._replace(path=f"/{name}"))
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def chart_under_test(backends: Backends, fresh_database: str, image: BuiltImage) -> ChartUnderTest:
    """The chart's defaults, with only what must differ here: the image, the backends and an API key."""
    token, digest = new_key()
    api_keys = [{"name": "image-test", "sha256": digest, "scopes": ["items:write", "jobs:write"]}]
    rendered = chart.render(
        set_values={
            "image.repository": IMAGE_REPOSITORY,
            "image.tag": IMAGE_TAG,
            "secrets.databaseUrl": fresh_database,
            "secrets.redisUrl": backends.redis_url,
            "secrets.apiKeys": json.dumps(api_keys),
        },
        release=RELEASE,
    )
    # The key the test presents is one whose hash the rendered Secret holds, with the scope writes need.
    secret = rendered.get("Secret", f"{RELEASE}-catalog-settings")
    entries = json.loads(secret["stringData"]["API_KEYS"])
    [entry] = [e for e in entries if e["sha256"] == hashlib.sha256(token.encode()).hexdigest()]
    assert "items:write" in entry["scopes"]
    return ChartUnderTest(rendered, token, fresh_database)


def workload(chart_under_test: ChartUnderTest, image: BuiltImage, kind: str, component: str) -> ContainerRun:
    """The derived run of the `component` container of `<release>-catalog-<component>` (a Deployment or Job)."""
    name = f"{RELEASE}-catalog-{component}"
    rendered_image = chart.container(chart_under_test.rendered.get(kind, name), component)["image"]
    assert rendered_image == image.tag, "the render points at the image this test built"
    return derive(chart_under_test.rendered, kind, name, component, image.tag, servers.free_port)


@pytest.fixture(scope="session")
def derived(
    chart_under_test: ChartUnderTest, image: BuiltImage, report: Report, workdir: Path
) -> dict[str, ContainerRun]:
    runs = {
        "migrations": workload(chart_under_test, image, "Job", "migrations"),
        "api": workload(chart_under_test, image, "Deployment", "api"),
        "worker": workload(chart_under_test, image, "Deployment", "worker"),
    }
    report.add(
        "Derived engine commands",
        "\n\n".join(run.describe(f"catalog-image-{name}", workdir / f"{name}.env") for name, run in runs.items()),
    )
    return runs


def new_container(engine: Engine, run: ContainerRun, name: str, workdir: Path) -> Container:
    return Container(engine, run, f"catalog-image-{name}", workdir / f"{name}.env")


@pytest.fixture(scope="session")
def runtime_uv(engine: Engine, bases: Bases, workdir: Path) -> Path:
    """The uv binary of the uv image the build used."""
    return uv_binary(engine, bases.build_args.get("UV_IMAGE", f"ghcr.io/astral-sh/uv:{pinned_uv_version()}"), workdir)
