"""Monitoring in the chart: the rule files and dashboards are copies of
monitoring/ kept in sync by `make chart-sync`, the PrometheusRule embeds every
rule group, and each dashboard becomes one ConfigMap for the Grafana sidecar."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.fixtures.chart import CHART, NAMESPACE, RELEASE, Manifest, helm, name, render
from tests.fixtures.paths import ROOT

SOURCES = {
    "rules": (ROOT / "monitoring" / "prometheus" / "rules", CHART / "files" / "prometheus" / "rules", "*.yaml"),
    "dashboards": (
        ROOT / "monitoring" / "grafana" / "dashboards",
        CHART / "files" / "grafana" / "dashboards",
        "*.json",
    ),
}
ENABLED = {"monitoring.rules.enabled": True, "monitoring.dashboards.enabled": True}


def _contents(directory: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob(pattern))}


def test_chart_copies_match_monitoring_sources() -> None:
    for label, (source, copy, pattern) in SOURCES.items():
        assert _contents(copy, pattern) == _contents(source, pattern), (
            f"the chart's {label} differ from {source.relative_to(ROOT)}: run `make chart-sync`"
        )


def test_chart_sync_copies_and_removes(tmp_path: Path) -> None:
    """`make chart-sync` against a scratch copy of the repository layout."""
    (tmp_path / "monitoring" / "prometheus" / "rules").mkdir(parents=True)
    (tmp_path / "monitoring" / "grafana" / "dashboards").mkdir(parents=True)
    (tmp_path / "monitoring" / "prometheus" / "rules" / "a.yaml").write_text("groups: []\n")
    (tmp_path / "monitoring" / "grafana" / "dashboards" / "b.json").write_text("{}\n")
    stale = tmp_path / "deploy" / "helm" / "catalog" / "files" / "prometheus" / "rules" / "stale.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("groups: []\n")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    result = subprocess.run(["make", "-s", "chart-sync"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    files = tmp_path / "deploy" / "helm" / "catalog" / "files"
    assert sorted(p.name for p in (files / "prometheus" / "rules").glob("*.yaml")) == ["a.yaml"]
    assert sorted(p.name for p in (files / "grafana" / "dashboards").glob("*.json")) == ["b.json"]


def _render_chart(chart: Path) -> list[Manifest]:
    result = helm(
        "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--api-versions", "monitoring.coreos.com/v1",
        *[arg for key, value in ENABLED.items() for arg in ("--set", f"{key}={str(value).lower()}")],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def test_rules_and_dashboards_are_embedded(tmp_path: Path) -> None:
    chart = tmp_path / "catalog"
    shutil.copytree(CHART, chart)
    rules = chart / "files" / "prometheus" / "rules"
    dashboards = chart / "files" / "grafana" / "dashboards"
    for directory in (rules, dashboards):
        for old in directory.iterdir():
            old.unlink()
    alert = {"alert": "CatalogDown", "expr": 'up{job="catalog-api"} == 0', "for": "5m",
             "annotations": {"summary": "{{ $labels.instance }} is down"}}  # fmt: skip
    record = {"record": "job:up:sum", "expr": "sum by (job) (up)"}
    (rules / "alerts.yaml").write_text(yaml.safe_dump({"groups": [{"name": "catalog-alerts", "rules": [alert]}]}))
    (rules / "recording.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "catalog-recording", "rules": [record]}]})
    )
    api_dashboard = json.dumps({"title": "Catalog API", "templating": {"list": [{"name": "datasource"}]}}, indent=1)
    (dashboards / "catalog_api.json").write_text(api_dashboard)
    (dashboards / "catalog-worker.json").write_text('{"title": "Catalog worker"}')

    objects = _render_chart(chart)
    [rule] = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = {group["name"]: group["rules"] for group in rule["spec"]["groups"]}
    # Helm does not template the files: alert templates like {{ $labels.instance }} survive.
    assert groups == {"catalog-alerts": [alert], "catalog-recording": [record]}

    maps = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ConfigMap"}
    boards = {key: value for key, value in maps.items() if "dashboard" in key}
    assert len(boards) == 2
    for board in boards.values():
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    api_board = maps[name("dashboard-catalog-api")]
    assert api_board["data"] == {"catalog_api.json": api_dashboard}


def test_repository_rules_render_into_one_prometheus_rule() -> None:
    sources = sorted((CHART / "files" / "prometheus" / "rules").glob("*.yaml"))
    rendered = render(set_values=ENABLED)
    expected = [group for path in sources for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])]
    if not expected:
        assert "PrometheusRule" not in rendered.kinds(), "no groups, no empty PrometheusRule"
        return
    assert rendered.get("PrometheusRule", name())["spec"]["groups"] == expected


def test_repository_dashboards_render_one_configmap_each() -> None:
    sources = sorted((CHART / "files" / "grafana" / "dashboards").glob("*.json"))
    rendered = render(set_values=ENABLED)
    boards = [obj for obj in rendered.all("ConfigMap") if obj["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(key for board in boards for key in board["data"]) == [path.name for path in sources]
    for board in boards:
        [(file_name, text)] = board["data"].items()
        assert json.loads(text) == json.loads((CHART / "files" / "grafana" / "dashboards" / file_name).read_text())


def test_a_broken_rule_file_is_refused_by_name(tmp_path: Path) -> None:
    chart = tmp_path / "catalog"
    shutil.copytree(CHART, chart)
    (chart / "files" / "prometheus" / "rules" / "broken.yaml").write_text("groups: [\n  - name: x\n")
    result = helm(
        "template", RELEASE, str(chart), "--api-versions", "monitoring.coreos.com/v1",
        "--set", "monitoring.rules.enabled=true",
    )  # fmt: skip
    assert result.returncode != 0
    assert "files/prometheus/rules/broken.yaml is not valid YAML" in result.stderr
