"""The chart's version follows SemVer, changes whenever what the chart renders changes,
and every version has its entry in the chart's CHANGELOG.md, newest first."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.fixtures.chart import CHART
from tests.fixtures.chart_history import chart_states, history_problem, rendered_files

# SemVer 2.0's own grammar (semver.org), without build metadata (helm writes "+" into labels as "_").
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?$"
)
ENTRY = re.compile(r"^## (\S+) \((\d{4}-\d{2}-\d{2})(?: to \d{4}-\d{2}-\d{2})?\)$", re.MULTILINE)


def _version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["version"])


def _key(version: str) -> tuple[int, int, int, int, str]:
    match = SEMVER.match(version)
    assert match, version
    # A pre-release sorts before its release (1.0.0-rc.1 < 1.0.0); string order among pre-releases suffices here.
    return (int(match[1]), int(match[2]), int(match[3]), 0 if match[4] else 1, match[4] or "")


def test_the_chart_version_is_semver() -> None:
    assert SEMVER.match(_version()), f"Chart.yaml version {_version()!r} is not SemVer 2.0"


def test_the_changelog_starts_with_this_version_and_goes_back_in_order() -> None:
    versions = [match[1] for match in ENTRY.finditer((CHART / "CHANGELOG.md").read_text())]
    assert versions, "CHANGELOG.md has no '## <version> (<date>)' entries"
    assert versions[0] == _version(), "add a CHANGELOG.md entry for the version in Chart.yaml"
    assert [_key(v) for v in versions] == sorted((_key(v) for v in versions), reverse=True)
    assert len(set(versions)) == len(versions)


@pytest.mark.skipif(history_problem() is not None, reason=f"needs the repository's history: {history_problem()}")
def test_the_version_changed_with_what_the_chart_renders() -> None:
    # Every earlier chart that carried this version must render from the same files as the
    # working tree; otherwise the chart changed under one version (as 0.1.0 did 19 times).
    now, version = rendered_files(None), _version()
    drifted = [
        f"{state.short} ({state.date}) {sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))}"
        for state in chart_states()
        if state.version == version and (then := rendered_files(state.commit)) != now
    ]
    assert drifted == [], (
        f"the chart changed since it was committed as version {version}: bump version in Chart.yaml "
        f"and add a CHANGELOG.md entry (files that differ, per earlier commit: {drifted})"
    )
