"""Upgrades to the chart in the tree from every earlier chart in git history.

Each distinct earlier content of deploy/helm/catalog is installed with a release given
only its secrets and with each of its own ci/*-values.yaml scenarios, then upgraded to
this chart with `helm upgrade --reuse-values` and with `helm upgrade -f <the same file>`,
emulated with the real helm as tests/fixtures/chart_history.py explains (no cluster
here; tests/cluster/test_chart_upgrade.py installs the same table on the local cluster
and holds this emulation's verdicts to the API server's).
`pytest tests/deploy/test_chart_upgrade.py -s` prints the table; for a chart at another
commit: `uv run python -m tests.fixtures.chart_history <commit>`. docs/chart-upgrades.md
says which upgrade to use and how to change the chart without breaking this test.

An upgrade may end in a refusal of the chart only when the refusal says what to change
and doing that works: the connection budget (CHANGELOG.md, "Upgrading").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.chart import CHART, Manifest, helm_binary
from tests.fixtures.chart_history import (
    Cell,
    ChartState,
    Kind,
    Mode,
    chart_states,
    differing,
    format_table,
    history_problem,
    upgrade_cell,
    upgrade_table,
    working_tree_content,
)

_PROBLEM = history_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"needs the repository's history: {_PROBLEM}")


@pytest.fixture(scope="module")
def earlier() -> list[ChartState]:
    """Every chart state in history except the one the working tree holds (when it is committed)."""
    current = working_tree_content()
    states = [s for s in chart_states() if s.content != current]
    assert states, "the history holds no earlier chart"
    return states


@pytest.fixture(scope="module")
def cells(earlier: list[ChartState]) -> list[Cell]:
    found = upgrade_table(CHART, earlier)
    print("\n" + format_table(found, "the working tree"))
    return found


def _where(cell: Cell) -> str:
    return f"{cell.state.short} ({cell.state.subject[:50]}) / {cell.scenario}"


def test_every_earlier_release_installs_with_its_own_chart(cells: list[Cell]) -> None:
    # Otherwise the emulation, not the chart, is off (each scenario rendered when it was committed).
    failed = [f"{_where(c)}: {c.install.reason}" for c in cells if c.install.kind is not Kind.OK]
    assert failed == []


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_no_upgrade_breaks(cells: list[Cell], mode: Mode) -> None:
    broken = [f"{_where(c)}: {c.upgrades[mode].reason}" for c in cells if c.upgrades[mode].kind is Kind.BROKEN]
    assert broken == []


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_every_refusal_states_a_remedy_that_works(cells: list[Cell], mode: Mode) -> None:
    refused = [c for c in cells if c.upgrades[mode].kind is Kind.REFUSED]
    without = [f"{_where(c)}: {c.upgrades[mode].reason}" for c in refused if mode not in c.remedied]
    assert without == [], "a refusal other than the connection budget"
    still = [f"{_where(c)}: {c.remedied[mode].reason}" for c in refused if c.remedied[mode].kind is not Kind.OK]
    assert still == []


# Defaults changed on purpose, each under "Upgrading" in CHANGELOG.md: a --reuse-values release keeps
# the value its first chart had (helm's design, docs/chart-upgrades.md), so these rendered fields may
# differ from -f's. Keyed by kind and name suffix; each path leads to one field.
CHANGED_DEFAULTS: dict[tuple[str, str], list[tuple[str | int, ...]]] = {
    # 0.7.0: api.resources.requests.cpu 500m -> 900m (make capacity)
    ("Deployment", "-api"): [("spec", "template", "spec", "containers", 0, "resources", "requests", "cpu")],
    # 0.7.0: worker.keda.maxReplicas 10 -> 4, worker.keda.jobsPerReplica 10 -> 686
    ("ScaledObject", "-worker"): [("spec", "maxReplicaCount"), ("spec", "triggers", 0, "metadata", "targetQueryValue")],
}


def _without_changed_defaults(objects: Sequence[Manifest]) -> list[Manifest]:
    out = []
    for obj in objects:
        copy = json.loads(json.dumps(obj))
        for (kind, suffix), paths in CHANGED_DEFAULTS.items():
            if copy["kind"] != kind or not copy["metadata"]["name"].endswith(suffix):
                continue
            for path in paths:
                parent: Any = copy
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = "<changed default>"
        out.append(copy)
    return out


def _reuse_vs_values(cell: Cell) -> list[str]:
    """The objects --reuse-values renders otherwise than -f, but for CHANGED_DEFAULTS' fields."""
    reuse, values = cell.final(Mode.REUSE).objects, cell.final(Mode.VALUES).objects
    return differing(_without_changed_defaults(reuse), _without_changed_defaults(values))


def test_reuse_values_renders_what_the_values_file_renders(cells: list[Cell]) -> None:
    # Values added since an old chart are read with a default when absent (--reuse-values
    # renders with the old chart's defaults): that default must be values.yaml's. Defaults
    # changed on purpose (CHANGED_DEFAULTS) are the exception.
    # (Upgrades that did not render are test_no_upgrade_breaks's findings.)
    rendered = [c for c in cells if c.final(Mode.REUSE).kind is Kind.OK and c.final(Mode.VALUES).kind is Kind.OK]
    assert rendered, "no upgrade rendered both ways"

    different = [f"{_where(c)}: {_reuse_vs_values(c)}" for c in rendered if _reuse_vs_values(c)]
    assert different == []


def _chart_with(tmp_path: Path, values: dict[str, object], schema: dict[str, object], template: str) -> Path:
    """A copy of this chart with one more top-level value, its schema and a template reading it."""
    chart = tmp_path / "catalog"
    shutil.copytree(CHART, chart)
    if values:
        with (chart / "values.yaml").open("a") as file:
            file.write("\n" + yaml.safe_dump(values))
    schema_path = chart / "values.schema.json"
    document = json.loads(schema_path.read_text())
    document["properties"].update(schema)
    schema_path.write_text(json.dumps(document))
    if template:
        (chart / "templates" / "probe.yaml").write_text(template)
    return chart


_PROBE_SCHEMA: dict[str, object] = {
    "probe": {"type": "object", "additionalProperties": False, "properties": {"enabled": {"type": "boolean"}}}
}
_PROBE_CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  on: {{ %s | quote }}\n"


def test_the_table_sees_a_new_value_read_without_its_default(tmp_path: Path, earlier: list[ChartState]) -> None:
    chart = _chart_with(
        tmp_path, {"probe": {"enabled": False}}, _PROBE_SCHEMA, _PROBE_CONFIGMAP % ".Values.probe.enabled"
    )
    cells = upgrade_cell(earlier[-1], chart)
    assert {c.upgrades[Mode.REUSE].kind for c in cells} == {Kind.BROKEN}
    assert all("nil pointer" in c.upgrades[Mode.REUSE].reason for c in cells)
    assert {c.upgrades[Mode.VALUES].kind for c in cells} == {Kind.OK}


def test_the_table_passes_a_new_value_read_with_its_default(tmp_path: Path, earlier: list[ChartState]) -> None:
    read = 'dig "probe" "enabled" false .Values.AsMap'
    chart = _chart_with(tmp_path, {"probe": {"enabled": False}}, _PROBE_SCHEMA, _PROBE_CONFIGMAP % read)
    cells = upgrade_cell(earlier[-1], chart)
    assert {c.final(Mode.REUSE).kind for c in cells} == {Kind.OK}
    assert all(not _reuse_vs_values(c) for c in cells)


def test_the_table_sees_a_wrong_default_for_a_missing_value(tmp_path: Path, earlier: list[ChartState]) -> None:
    # A fallback that differs from values.yaml's default renders differently with --reuse-values.
    read = 'dig "probe" "enabled" true .Values.AsMap'
    chart = _chart_with(tmp_path, {"probe": {"enabled": False}}, _PROBE_SCHEMA, _PROBE_CONFIGMAP % read)
    cells = upgrade_cell(earlier[-1], chart)
    assert all(_reuse_vs_values(c) == ["ConfigMap/probe"] for c in cells)


def test_the_table_sees_a_removed_value_the_schema_refuses(tmp_path: Path, earlier: list[ChartState]) -> None:
    # Every earlier chart has image.pullPolicy; a schema without it refuses what --reuse-values brings.
    chart = _chart_with(tmp_path, {}, {}, "")
    schema_path = chart / "values.schema.json"
    document = json.loads(schema_path.read_text())
    del document["properties"]["image"]["properties"]["pullPolicy"]
    document["properties"]["image"]["required"].remove("pullPolicy")
    schema_path.write_text(json.dumps(document))
    values = yaml.safe_load((chart / "values.yaml").read_text())
    del values["image"]["pullPolicy"]
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    cells = upgrade_cell(earlier[-1], chart)
    assert {c.upgrades[Mode.REUSE].kind for c in cells} == {Kind.BROKEN}
    assert all("pullPolicy" in c.upgrades[Mode.REUSE].reason for c in cells)


def _notes(tmp_path: Path, *flags: str) -> str:
    """NOTES.txt as `helm install` prints it, rendered client-side (no cluster is contacted)."""
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")}
    result = subprocess.run(
        [helm_binary(), "install", "rel", str(CHART), "--dry-run=client",
         "--set", "secrets.databaseUrl=postgresql://catalog:secret@db.example.internal:5432/catalog", *flags],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_a_removed_value_is_accepted_and_its_deprecation_noted(tmp_path: Path) -> None:
    held = _notes(tmp_path, "--set", "worker.databaseConnectionsPerPod=3")
    assert "DEPRECATED: worker.databaseConnectionsPerPod is ignored" in held
    assert "--set worker.databaseConnectionsPerPod=null" in held
    assert "DEPRECATED" not in _notes(tmp_path)
