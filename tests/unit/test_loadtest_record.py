"""`make loadtest RECORD=1`: a run becomes the recorded one, and its charts can be drawn again from its data alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loadtest import report, run

from tests.fixtures.paths import ROOT

RECORDED_RUN = ROOT / "bench" / "results" / "loadtest"


def test_the_recorded_charts_are_drawn_from_their_data_alone(tmp_path: Path) -> None:
    shutil.copy(RECORDED_RUN / report.CHART_DATA, tmp_path / report.CHART_DATA)
    names = report.redraw(tmp_path)
    assert names == ["latency.png", "errors.png", "throughput.png", "jobs.png", "pods.png"]
    for name in names:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name


def test_the_chart_data_holds_every_series_the_charts_draw() -> None:
    data = json.loads((RECORDED_RUN / report.CHART_DATA).read_text())
    assert set(data["server"]) == set(report.QUERIES)
    assert all(data["server"][name] for name in report.QUERIES), "a recorded series is empty"
    assert set(data["slo"]) >= {"p50_target", "p99_alert", "error_alert", "throughput_drop_alert"}
    assert len(data["client"]["times"]) == len(data["client"]["rps"]) > 60  # a 2-minute run, one row a second


def test_recording_copies_the_run_and_says_how_it_was_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    charts = report.redraw(_with_data(directory))
    (directory / "summary.json").write_text('{"passed": true}\n')
    (directory / "report.md").write_text("# Load test\n\n- verdict: PASS\n")
    recorded = tmp_path / "results"
    (recorded / "loadtest").mkdir(parents=True)
    (recorded / "loadtest" / "stale.png").write_bytes(b"old")
    monkeypatch.setattr(run, "RECORDED", recorded)
    run.record(directory, charts, run.parse_arguments(["--rate", "60", "--duration", "2m"]))
    assert sorted(p.name for p in (recorded / "loadtest").iterdir()) == sorted([*charts, report.CHART_DATA])
    assert json.loads((recorded / "loadtest.json").read_text()) == {"passed": True}
    text = (recorded / "loadtest.md").read_text()
    assert text.startswith(
        "# Load test\n\n- verdict: PASS\n\nRun with `make loadtest RECORD=1` (--rate 60, --duration 120 s)"
    )
    for name in charts:
        assert f"(loadtest/{name})" in text


def _with_data(directory: Path) -> Path:
    shutil.copy(RECORDED_RUN / report.CHART_DATA, directory / report.CHART_DATA)
    return directory
