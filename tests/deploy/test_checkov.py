"""checkov on the rendered chart (every scenario) and on the Dockerfile: no
failed check; the only skips are the ones the chart and the Dockerfile declare,
each with a written reason.

checkov runs through `uv tool run` at a pinned version instead of from the dev
dependencies: every checkov release pins boto3/urllib3 versions that conflict
with the kubernetes client the cluster tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.chart import SCENARIOS, template
from tests.fixtures.paths import ROOT

CHECKOV = "checkov==3.3.30"
# `uv run` exports UV; otherwise the uv on PATH or the one make install put in .tools.
UV = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "uv" / "bin" / "uv")
# CKV_K8S_8 and CKV_K8S_9 only on `helm test`'s pod: a check that runs once has nothing to probe.
ALLOWED_CHART_SKIPS = {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_11", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}


def _checkov(*args: str) -> list[dict[str, Any]]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    result = subprocess.run(
        [UV, "tool", "run", "--quiet", "--from", CHECKOV, "checkov", "--skip-download", "-o", "json", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def _failed(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]


def _skipped(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [check for report in reports for check in report["results"]["skipped_checks"]]


def _reason(check: dict[str, Any]) -> str:
    reason: str = check["check_result"].get("suppress_comment") or ""
    return reason.strip()


@pytest.fixture(scope="module")
def chart_reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("rendered")
    for label, files in [("defaults", []), *[(path.stem, [path]) for path in SCENARIOS]]:
        result = template(files)
        assert result.returncode == 0, result.stderr
        (directory / f"{label}.yaml").write_text(result.stdout)
    return _checkov("--framework", "kubernetes", "--directory", str(directory))


def test_rendered_chart_has_no_failed_check(chart_reports: list[dict[str, Any]]) -> None:
    passed = sum(report["summary"]["passed"] for report in chart_reports)
    assert passed > 100, "checkov ran the Kubernetes checks"
    assert _failed(chart_reports) == []


def test_chart_skips_are_declared_with_reasons(chart_reports: list[dict[str, Any]]) -> None:
    skipped = _skipped(chart_reports)
    assert {check["check_id"] for check in skipped} == ALLOWED_CHART_SKIPS
    for check in skipped:
        assert len(_reason(check)) > 40, f"{check['check_id']} has no written reason"


def test_dockerfile_has_no_failed_check() -> None:
    reports = _checkov("--framework", "dockerfile", "--file", str(Path("Dockerfile")))
    assert sum(report["summary"]["passed"] for report in reports) > 10
    assert _failed(reports) == []
    # Each declared skip, with the words of its reason that matter.
    declared = {"CKV_DOCKER_2": "Kubernetes probes", "CKV_DOCKER_7": "defaults are pinned versions"}
    for check in _skipped(reports):
        assert check["check_id"] in declared, check["check_id"]
        assert declared[check["check_id"]] in _reason(check)
