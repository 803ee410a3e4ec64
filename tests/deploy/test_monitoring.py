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

from monitoring import generate, rules
from service import slo
from tests.conftest import ROOT

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


def _alert_tests() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in (MONITORING / "prometheus" / "tests").glob("*.yaml"):
        for group in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(group["alert_rule_test"])
    return cases


def test_every_alert_rule_is_tested_silent_before_its_for_and_firing_at_it() -> None:
    mon = slo.load_monitoring()
    cases = _alert_tests()
    for alert in rules.all_alerts(mon):
        expected_labels = {"severity": alert.severity, **alert.labels}
        firing = [
            case
            for case in cases
            if case["alertname"] == alert.name
            and any(expected_labels.items() <= exp["exp_labels"].items() for exp in case.get("exp_alerts", []))
        ]
        assert firing, f"no promtool case shows {alert.name} {alert.labels} firing"
        for case in firing:
            at = rules.duration_to_seconds(case["eval_time"])
            before = [
                other
                for other in cases
                if other["alertname"] == alert.name
                and other["exp_alerts"] == []
                and at > rules.duration_to_seconds(other["eval_time"]) >= at - 15 * 60
            ]
            assert before, (
                f"{alert.name}: no case shows it silent one evaluation before it fires at {case['eval_time']}"
            )
    healthy = {case["alertname"] for case in cases if case["exp_alerts"] == []}
    assert healthy >= {alert.name for alert in rules.all_alerts(mon)}


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
