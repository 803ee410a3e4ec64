"""The pictures the pages show exist, and are what `make docs-images` draws from the repository's data.

Three checks, cheapest first:
- every image a page embeds (README.md, docs/, bench/results/) exists, and every picture
  the generator draws is shown on some page;
- docs/images/images.json (the manifest) holds, per picture, a digest of the data it
  shows; recomputed from the repository now (deploy/local/stack.py, the chart through
  helm, bench/results/drills.json, bench/results/loadtest/charts.json), it must match:
  a topology, a drill or a load-test run that changed without `make docs-images` fails;
- everything is drawn again into a temporary directory and compared with the committed
  PNGs: pixel for pixel under the manifest's matplotlib version (uv.lock pins it; its wheels
  carry their own FreeType and fonts), by size and a small pixel tolerance under another,
  so an upgrade of matplotlib alone does not fail the suite while a change of drawing code does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from docs.images import generate
from tests.fixtures.paths import ROOT

_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")
# Mean absolute difference per channel (0..1) tolerated under another matplotlib version: a
# changed label or a moved box differs by far more; anti-aliasing and kerning changes by less.
TOLERANCE = 0.01


def _pages() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "bench" / "results").glob("*.md")),
    ]


def embedded() -> dict[Path, list[str]]:
    """Each PNG a page embeds (resolved), with the pages that embed it."""
    found: dict[Path, list[str]] = {}
    for page in _pages():
        for target in _IMAGE.findall(page.read_text(encoding="utf-8")):
            if "://" not in target:
                found.setdefault((page.parent / target).resolve(), []).append(str(page.relative_to(ROOT)))
    return found


def _manifest() -> dict[str, dict[str, object]]:
    pictures: dict[str, dict[str, object]] = json.loads(generate.MANIFEST.read_text())["pictures"]
    return pictures


def test_every_image_a_page_embeds_exists() -> None:
    missing = {str(path.relative_to(ROOT)): pages for path, pages in embedded().items() if not path.is_file()}
    assert not missing, f"pages embed images that do not exist: {missing}"
    assert len(embedded()) >= 5  # the topology, the drills and the load test's charts, at least


def test_every_picture_drawn_is_shown_on_a_page() -> None:
    shown = {path.relative_to(ROOT) for path in embedded() if path.is_relative_to(ROOT)}
    unshown = sorted(str(p.path) for p in generate.pictures() if p.path not in shown)
    assert not unshown, f"drawn by make docs-images but embedded in no page: {unshown}"


def test_the_manifest_lists_every_picture_with_the_data_it_shows_now() -> None:
    committed = _manifest()
    now = generate.manifest_entries(generate.pictures())
    assert sorted(committed) == sorted(now), "the pictures changed: run `make docs-images`"
    stale = [
        f"{name} (from {', '.join(entry['sources'])})"
        for name, entry in now.items()
        if committed[name]["data_sha256"] != entry["data_sha256"]
    ]
    assert not stale, f"these pictures no longer show what the repository says; run `make docs-images`: {stale}"


def test_the_committed_pictures_are_what_the_generator_draws(tmp_path: Path) -> None:
    manifest = generate.generate(tmp_path, generate.pictures())
    recorded = json.loads(generate.MANIFEST.read_text())
    same_version = recorded["matplotlib"] == matplotlib.__version__
    different: list[str] = []
    for name, entry in manifest["pictures"].items():
        assert entry["pixels"] == recorded["pictures"][name]["pixels"], f"{name}: size changed; `make docs-images`"
        drawn = matplotlib.image.imread(tmp_path / name)
        committed = matplotlib.image.imread(ROOT / name)
        assert drawn.shape == committed.shape, name
        if same_version and not np.array_equal(drawn, committed):
            different.append(f"{name} ({np.count_nonzero((drawn != committed).any(axis=-1))} pixels differ)")
        elif not same_version and float(np.abs(drawn - committed).mean()) > TOLERANCE:
            different.append(f"{name} (mean difference {float(np.abs(drawn - committed).mean()):.4f})")
    assert not different, f"committed pictures differ from what make docs-images draws: {different}"


@pytest.mark.parametrize(
    ("page", "name"),
    [
        ("docs/local.md", "docs/images/topology-local.png"),
        ("docs/deploy.md", "docs/images/topology-cluster.png"),
        ("docs/operations.md", "docs/images/drills.png"),
        ("docs/operations.md", "bench/results/loadtest/latency.png"),
    ],
)
def test_the_page_that_needs_a_picture_shows_it(page: str, name: str) -> None:
    assert str(Path(page)) in embedded().get((ROOT / name).resolve(), []), f"{page} should show {name}"
