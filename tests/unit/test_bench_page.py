"""The benchmark page (bench/results/README.md) says what the results say: regenerating it changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import page
from loadtest import drills

from tests.fixtures.paths import ROOT


def test_the_benchmark_page_is_regenerated_from_the_results() -> None:
    committed = (ROOT / "bench" / "results" / "README.md").read_text(encoding="utf-8")
    assert committed == page.render(), "bench/results changed: run `uv run python bench/page.py`"


def test_every_benchmark_with_results_has_rows_and_a_command() -> None:
    text = page.render()
    for bench in page.BENCHES:
        if (page.RESULTS / f"{bench.results}.json").exists():
            assert f"`{bench.command}`" in text, bench.name
            assert f"| {bench.name} | not run |" not in text


def test_the_drills_table_is_the_recorded_drills() -> None:
    """bench/results/drills.md's table of the recorded run is what drills.json says (`make drill RECORD=1`
    writes both); the prose around it is the author's."""
    recorded = json.loads(drills.RECORDED.read_text())
    text = drills.RECORDED_PAGE.read_text(encoding="utf-8")
    assert drills.TABLE_START in text, "the table's markers are gone from bench/results/drills.md"
    table = text.split(drills.TABLE_START, 1)[1].split(drills.TABLE_END, 1)[0].strip()
    assert table == drills.recorded_table(recorded)


def test_recording_rewrites_only_the_marked_table(tmp_path: Path) -> None:
    page_file = tmp_path / "drills.md"
    page_file.write_text(
        f"# Drills\n\nprose before\n\n{drills.TABLE_START}\nold table\n{drills.TABLE_END}\n\nprose after\n"
    )
    recorded = json.loads(drills.RECORDED.read_text())
    drills.write_recorded_table(recorded, page_file)
    text = page_file.read_text()
    assert "old table" not in text
    assert text.startswith("# Drills\n\nprose before\n\n")
    assert text.endswith(f"{drills.TABLE_END}\n\nprose after\n")
    assert drills.recorded_table(recorded) in text
    drills.write_recorded_table(recorded, page_file)  # idempotent
    assert page_file.read_text() == text
