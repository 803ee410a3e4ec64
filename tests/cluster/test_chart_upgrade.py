"""Upgrades to the chart in the tree from every earlier chart in git history, on the local cluster.

tests/deploy/test_chart_upgrade.py's table again, installed: each earlier state with each of
its scenarios is `helm install --no-hooks`ed into a namespace of its own and upgraded with
`helm upgrade --dry-run=server`, `--reuse-values` and `-f <the same file>`
(tests/fixtures/cluster_upgrades.py says what runs and why no pod starts). The API server
must accept every upgrade but the connection-budget refusal, which must pass with the
budget its message names, and its verdicts must be the offline emulation's, so the fast
offline table (run by every `make test`, cluster or not) stands for the cluster's.
`pytest tests/cluster/test_chart_upgrade.py -s` prints the table and the run time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.chart import CHART
from tests.fixtures.chart_history import (
    Cell,
    ChartState,
    Kind,
    Mode,
    Release,
    chart_states,
    format_table,
    history_problem,
    upgrade_table,
    working_tree_content,
)
from tests.fixtures.cluster import LocalCluster
from tests.fixtures.cluster_upgrades import ClusterRelease, apply_crds, delete_run, missing_crds, new_run

_PROBLEM = history_problem()
# About 90 installs and 200 dry-run upgrades, two at a time; the first test also waits for the cluster.
pytestmark = [
    pytest.mark.skipif(_PROBLEM is not None, reason=f"needs the repository's history: {_PROBLEM}"),
    pytest.mark.timeout(3600),
]


@pytest.fixture(scope="module")
def earlier() -> list[ChartState]:
    current = working_tree_content()
    states = [s for s in chart_states() if s.content != current]
    assert states, "the history holds no earlier chart"
    return states


@pytest.fixture(scope="module")
def offline(earlier: list[ChartState]) -> list[Cell]:
    return upgrade_table(CHART, earlier)


@pytest.fixture(scope="module")
def on_cluster(local_cluster: LocalCluster, earlier: list[ChartState]) -> Iterator[list[Cell]]:
    if missing := missing_crds():
        pytest.skip(f"the offline table renders for CRDs this cluster would lack: {missing} (CRD_SCHEMA_DIR)")
    apply_crds(local_cluster)
    run = new_run()

    def factory(workdir: Path) -> Release:
        return ClusterRelease(local_cluster, run, workdir)

    started = time.monotonic()
    try:
        cells = upgrade_table(CHART, earlier, release_factory=factory)
        seconds = time.monotonic() - started
        installs = len(cells)
        upgrades = sum(len(c.upgrades) + len(c.remedied) for c in cells)
        print("\n" + format_table(cells, "the working tree", "installed on the local cluster, --dry-run=server"))
        print(f"{installs} installs and {upgrades} server-side dry-run upgrades in {seconds:.0f} s (two at a time)")
        yield cells
    finally:
        left = delete_run(local_cluster, run)
        assert left == [], f"namespaces of this run not deleted in 300 s: {left}"


def _where(cell: Cell) -> str:
    return f"{cell.state.short} ({cell.state.subject[:50]}) / {cell.scenario}"


def test_every_earlier_release_installs(on_cluster: list[Cell]) -> None:
    failed = [f"{_where(c)}: {c.install.reason}" for c in on_cluster if c.install.kind is not Kind.OK]
    assert failed == []


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_no_upgrade_breaks_on_the_api_server(on_cluster: list[Cell], mode: Mode) -> None:
    installed = [c for c in on_cluster if c.install.kind is Kind.OK]
    broken = [f"{_where(c)}: {c.upgrades[mode].reason}" for c in installed if c.upgrades[mode].kind is Kind.BROKEN]
    assert broken == []


@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
def test_every_refusal_passes_with_the_remedy_it_names(on_cluster: list[Cell], mode: Mode) -> None:
    installed = [c for c in on_cluster if c.install.kind is Kind.OK]
    refused = [c for c in installed if c.upgrades[mode].kind is Kind.REFUSED]
    without = [f"{_where(c)}: {c.upgrades[mode].reason}" for c in refused if mode not in c.remedied]
    assert without == [], "a refusal other than the connection budget"
    still = [f"{_where(c)}: {c.remedied[mode].reason}" for c in refused if c.remedied[mode].kind is not Kind.OK]
    assert still == []


def _verdicts(cell: Cell) -> dict[str, str]:
    found = {"install": cell.install.kind.value}
    found |= {f"upgrade {mode.value}": outcome.kind.value for mode, outcome in cell.upgrades.items()}
    found |= {f"remedied {mode.value}": outcome.kind.value for mode, outcome in cell.remedied.items()}
    return found


def test_the_api_server_agrees_with_the_offline_emulation(on_cluster: list[Cell], offline: list[Cell]) -> None:
    cluster = {(c.state.commit, c.scenario): c for c in on_cluster}
    emulated = {(c.state.commit, c.scenario): c for c in offline}
    assert cluster.keys() == emulated.keys()
    different = [
        f"{_where(cell)}: cluster {_verdicts(cell)}, offline {_verdicts(emulated[key])}"
        for key, cell in cluster.items()
        if _verdicts(cell) != _verdicts(emulated[key])
    ]
    assert different == []
    # Refusals must agree in what they say too (the budget the remedy raises to).
    reasons = [
        f"{_where(cell)} {mode.value}: {cell.upgrades[mode].reason!r} != {emulated[key].upgrades[mode].reason!r}"
        for key, cell in cluster.items()
        for mode in cell.upgrades
        if cell.upgrades[mode].kind is Kind.REFUSED
        and cell.upgrades[mode].reason != emulated[key].upgrades[mode].reason
    ]
    assert reasons == []
