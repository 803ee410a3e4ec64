"""The benchmark page (bench/results/README.md) says what the results say: regenerating it changes nothing."""

from __future__ import annotations

import page

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
