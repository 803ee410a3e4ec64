"""Monitoring as code: the generated rules, promtool tests and dashboards are current, valid and agree with slo.toml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import dashboards, generate, promtests, queries, rules
from service import slo
from tests.fixtures.paths import ROOT

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "prometheus" / "rules"
DASHBOARDS = MONITORING / "grafana" / "dashboards"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with Debian's prometheus package (make install installs it)"
    return promtool


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


def test_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    files = generate.outputs(slo.load_monitoring())
    generate.write(tmp_path, files)
    stale = []
    for relative in files:
        committed = ROOT / relative
        if not committed.exists() or committed.read_text(encoding="utf-8") != (tmp_path / relative).read_text():
            stale.append(str(relative))
    assert stale == [], f"out of date with service/slo.toml or monitoring/*.py: {stale}; run `make monitoring`"
    for directory, pattern in ((RULES, "*.yaml"), (MONITORING / "prometheus" / "tests", "*.yaml"), (DASHBOARDS, "*")):
        orphans = {str(path.relative_to(ROOT)) for path in directory.glob(pattern)} - {str(p) for p in files}
        assert orphans == set(), f"no longer generated, delete them: {orphans}"


def test_the_yaml_writer_round_trips_every_file() -> None:
    mon = slo.load_monitoring()
    for profile in rules.PROFILES.values():
        for file in rules.rule_files(mon, profile):
            text = generate.rule_outputs(mon, profile)[file.name]
            assert yaml.safe_load(text) == json.loads(json.dumps(file.to_yaml(profile))), file.name


@pytest.mark.parametrize("profile", sorted(rules.PROFILES))
def test_promtool_accepts_every_rule_file(profile: str, tmp_path: Path) -> None:
    mon = slo.load_monitoring()
    if profile == "production":
        paths = sorted(RULES.glob("*.yaml"))
    else:
        generate.main(["--profile", "test", "--rules-dir", str(tmp_path)])
        paths = sorted(tmp_path.glob("*.yaml"))
    assert {path.name for path in paths} == {file.name for file in rules.rule_files(mon, rules.PROFILES[profile])}
    result = _run("check", "rules", *map(str, paths))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_pass() -> None:
    tests = sorted((MONITORING / "prometheus" / "tests").glob("*.yaml"))
    assert tests
    result = _run("test", "rules", *(str(path.name) for path in tests), cwd=tests[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr


# Alerts that read only `up`, which Prometheus itself writes at every scrape: no first event to miss.
_UP_ONLY = {"CatalogApiDown", "CatalogWorkerDown"}
_CASES = [case for case in promtests.cases(slo.load_monitoring()) if case.alert.name not in _UP_ONLY]


@pytest.mark.parametrize("case", _CASES, ids=[f"{case.alert.name}: {case.name}" for case in _CASES])
def test_each_alert_counts_the_first_event_of_a_series_that_starts_at_zero(
    case: promtests.Case, tmp_path: Path
) -> None:
    """Each alert fires on time from the first errors in series at 0 (as our exporters create them),
    and the same case fails when the series are first scraped at their first event instead: each
    case can tell, so an exporter that stopped creating its series at zero would be caught by the
    series test in tests/e2e/test_first_errors.py, and these show what it would cost each alert."""
    mon = slo.load_monitoring()
    rule_files = [str(path) for path in sorted(RULES.glob("*.yaml"))]
    results = {}
    for late in (False, True):
        path = tmp_path / f"late-{late}.test.yaml"
        path.write_text(json.dumps(promtests.one_case(mon, case, rule_files, late=late)))  # JSON is YAML
        results[late] = _run("test", "rules", str(path))
    assert results[False].returncode == 0, results[False].stdout + results[False].stderr
    assert results[True].returncode != 0, f"{case.alert.name} fired on time even without the series at zero"
    failure = results[True].stdout + results[True].stderr
    assert case.alert.name in failure, failure
    assert "got:[]" in failure, failure  # missing when it was due, not a file promtool refused


def _test_groups() -> list[tuple[int, dict[str, Any]]]:
    """(evaluation interval in seconds, test group) for every promtool test group."""
    groups: list[tuple[int, dict[str, Any]]] = []
    for path in (MONITORING / "prometheus" / "tests").glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        every = rules.duration_to_seconds(document["evaluation_interval"])
        groups.extend((every, group) for group in document["tests"])
    return groups


def test_every_alert_rule_is_tested_silent_before_its_for_and_firing_at_it() -> None:
    mon = slo.load_monitoring()
    groups = _test_groups()
    for alert in rules.all_alerts(mon):
        expected_labels = {"severity": alert.severity, **alert.labels}
        shown = False
        for every, group in groups:
            cases = [case for case in group["alert_rule_test"] if case["alertname"] == alert.name]
            for case in cases:
                if not any(expected_labels.items() <= exp["exp_labels"].items() for exp in case["exp_alerts"]):
                    continue
                # Silent one evaluation earlier in the same scenario: the `for` really holds it back.
                at = rules.duration_to_seconds(case["eval_time"])
                silent = {rules.duration_to_seconds(c["eval_time"]) for c in cases if c["exp_alerts"] == []}
                assert at - every in silent, f"{group['name']}: no check that {alert.name} is silent before {at}s"
                shown = True
        assert shown, f"no promtool case shows {alert.name} {alert.labels} firing"
    healthy = [group for _, group in groups if group["name"].startswith("healthy")]
    assert len(healthy) == 1
    quiet = {case["alertname"] for case in healthy[0]["alert_rule_test"] if case["exp_alerts"] == []}
    assert quiet == {alert.name for alert in rules.all_alerts(mon)}


def _runbook_anchors() -> set[str]:
    text = (MONITORING / "runbooks.md").read_text()
    return {rules.anchor(heading) for heading in re.findall(r"^## (\S+)\s*$", text, flags=re.MULTILINE)}


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    mon = slo.load_monitoring()
    anchors = _runbook_anchors()
    loaded = [
        rule for path in RULES.glob("*.yaml") for g in yaml.safe_load(path.read_text())["groups"] for rule in g["rules"]
    ]
    alerts = [rule for rule in loaded if "alert" in rule]
    assert len(alerts) == len(rules.all_alerts(mon)) >= 10
    for alert in alerts:
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]+)+(?:P\d+)?[A-Za-z]*", alert["alert"]), alert["alert"]
        assert alert["labels"]["severity"] in slo.SEVERITIES, alert
        assert alert["annotations"]["summary"], alert
        assert alert["annotations"]["description"], alert
        url = alert["annotations"]["runbook_url"]
        base, _, fragment = url.partition("#")
        assert base == mon.runbook_base_url, url
        assert base.endswith("monitoring/runbooks.md"), url
        assert fragment in anchors, f"{alert['alert']}: add a `## {alert['alert']}` section to monitoring/runbooks.md"
    for rule in loaded:
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_alert_thresholds_come_from_the_slo_file() -> None:
    mon = slo.load_monitoring()
    text = "\n".join(path.read_text() for path in RULES.glob("*.alerts.yaml"))
    assert f"> {rules.number(mon.slo.error_alert)}\n" in text
    for rate in mon.burn_rates:
        assert f"> ({rules.number(rate.factor)} * {rules.number(mon.slo.error_target)})" in text
    assert f'{{le="{rules.le(mon.slo.p50_alert)}"}} > 0.5' in text
    assert f'{{le="{rules.le(mon.slo.p99_alert)}"}} > 0.01' in text
    assert f"< {rules.number(1 - mon.slo.throughput_drop_alert)} * " in text
    assert "histogram_quantile" not in (RULES / "catalog-api.alerts.yaml").read_text()
    assert "offset 1w" in text


def test_the_test_profile_changes_only_durations() -> None:
    mon = slo.load_monitoring()
    for production, test in zip(rules.all_alerts(mon), rules.all_alerts(mon, rules.TEST), strict=True):
        assert re.sub(r"\[\w+\]|offset \w+", "", production.expr) == re.sub(r"\[\w+\]|offset \w+", "", test.expr)
        assert rules.TEST.seconds(production.for_) <= 60
    windows = re.findall(r"\[(\w+)\]", "\n".join(r.expr for r in rules.all_recordings(mon, rules.TEST)))
    assert windows
    assert all(rules.duration_to_seconds(w) <= 120 for w in windows)


def _dashboards() -> dict[str, dict[str, Any]]:
    boards = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}
    assert set(boards) == {"catalog-slo.json", "catalog-red.json", "catalog-saturation.json", "catalog-worker.json"}
    return boards


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [panel for panel in board["panels"] if panel["title"] == title]
    assert len(matches) == 1, f"{board['uid']}: no single panel titled {title!r}"
    return matches[0]


def _steps(panel: dict[str, Any]) -> list[float | None]:
    return [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_dashboards_are_valid_with_unique_ids_and_a_pinned_schema() -> None:
    uids = set()
    for name, board in _dashboards().items():
        assert board["schemaVersion"] == dashboards.SCHEMA_VERSION, name
        uids.add(board["uid"])
        ids = [panel["id"] for panel in queries._panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        titles = [panel["title"] for panel in board["panels"]]
        assert len(titles) == len(set(titles)), f"{name}: duplicate panel titles"
        for panel in board["panels"]:
            box = panel["gridPos"]
            assert box["x"] + box["w"] <= 24, f"{name}: {panel['title']} is wider than the grid"
    assert len(uids) == 4


def test_no_panel_hard_codes_a_datasource() -> None:
    for name, board in _dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for node in _walk(board):
            if isinstance(node, dict) and "datasource" in node and isinstance(node["datasource"], dict):
                assert node["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"{name}: {node}"
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == dashboards.DATASOURCE, f"{name}: {panel['title']}"
                assert panel["targets"], f"{name}: {panel['title']} has no query"
                for target in panel["targets"]:
                    assert target["datasource"] == dashboards.DATASOURCE


def test_dashboard_thresholds_and_jobs_are_the_slo_file_numbers() -> None:
    mon = slo.load_monitoring()
    boards = _dashboards()
    overview = boards["catalog-slo.json"]
    assert _steps(_panel(overview, "P50 latency")) == [None, mon.slo.p50_target, mon.slo.p50_alert]
    assert _steps(_panel(overview, "P99 latency")) == [None, mon.slo.p99_target, mon.slo.p99_alert]
    assert _steps(_panel(overview, "Error ratio (5xx)")) == [None, mon.slo.error_target, mon.slo.error_alert]
    burn = _steps(_panel(overview, "Error budget burn rate"))
    assert burn == [None, *sorted(rate.factor for rate in mon.burn_rates)]
    throughput = _panel(overview, "Throughput")["targets"]
    assert any(t["expr"].startswith(f"{1 - mon.slo.throughput_drop_alert:g} * ") for t in throughput)
    assert any("offset 1w" in t["expr"] for t in throughput)
    worker = boards["catalog-worker.json"]
    assert _steps(_panel(worker, "Queue wait (P50, P90, P99)")) == [None, mon.queue_wait_alert_seconds]
    for board in boards.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for name, job in (("job", mon.api_job), ("worker_job", mon.worker_job)):
            if name in variables:
                assert variables[name]["current"]["value"] == job
        assert all('"$job"' in expr or '"$worker_job"' in expr for _, expr in queries.panel_queries() if "job=" in expr)


def test_latency_panels_show_exemplars() -> None:
    boards = _dashboards()
    red = boards["catalog-red.json"]
    for title in ("Latency by route (P50, P90, P99)", "Latency distribution"):
        assert all(target.get("exemplar") for target in _panel(red, title)["targets"]), title
    assert _panel(red, "Latency distribution")["type"] == "heatmap"
    assert any(v["name"] == "route" for v in red["templating"]["list"])


def test_every_dashboard_query_parses_once_its_variables_are_substituted(tmp_path: Path) -> None:
    expressions = queries.panel_queries() + queries.variable_queries()
    assert len(expressions) > 50
    rules_file: dict[str, Any] = {"groups": [{"name": "panels", "rules": []}]}
    for index, (where, expr) in enumerate(queries.panel_queries()):
        concrete = queries.substitute(expr)
        assert "$" not in concrete, where
        rules_file["groups"][0]["rules"].append({"record": f"panel:query:{index}", "expr": concrete})
    path = tmp_path / "panels.yaml"
    path.write_text(json.dumps(rules_file))  # JSON is YAML; promtool parses every expression
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(KeyError, match="unknown"):
        queries.substitute('up{job="$unknown"}')
    assert queries.substitute("rate(x[$__rate_interval])", {"__rate_interval": "2m"}) == "rate(x[2m])"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('long = "1h"\nshort = "5m"', 'long = "5m"\nshort = "1h"'), "short window must be shorter"),
        (('severity = "critical"', 'severity = "page"'), "severity one of"),
        (('short = "5m"\nlong = "30m"', 'short = "30m"\nlong = "30m"'), "short window must be shorter than long"),
        (('slo_window = "30d"', 'slo_window = "a month"'), "is not a duration"),
    ],
)
def test_inconsistent_monitoring_settings_are_refused(change: tuple[str, str], message: str) -> None:
    text = (ROOT / "service" / "slo.toml").read_text()
    assert change[0] in text
    with pytest.raises(ValueError, match=message):
        slo.parse_monitoring(text.replace(*change, 1))
