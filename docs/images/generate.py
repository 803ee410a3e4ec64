"""`make docs-images`: every picture the docs show, drawn again from the data it shows.

    uv run python docs/images/generate.py              # write the pictures and docs/images/images.json
    uv run python docs/images/generate.py --out DIR    # the same pictures under DIR (the test compares them)

| picture | drawn from |
|---|---|
| docs/images/topology-local.png | deploy/local/stack.py: what `make up` starts, its ports and URLs |
| docs/images/topology-cluster.png | `helm template` of deploy/helm/catalog (production values, KEDA on) |
| docs/images/drills.png | bench/results/drills.json: each drill's recorded timeline (`make drill RECORD=1`) |
| bench/results/loadtest/*.png | bench/results/loadtest/charts.json: the run's series (`make loadtest RECORD=1`) |

The load test's charts stay beside the run they belong to (bench/results/loadtest/,
where `make loadtest RECORD=1` writes them); the pages link them there.

images.json (the manifest) holds, per picture, the files its data came from, a
SHA-256 of that data (canonical JSON) and the PNG's size in pixels, plus the
matplotlib version that drew them. tests/unit/test_docs_images.py recomputes the
data digests (a picture no longer saying what the repository says fails), draws
everything into a temporary directory and compares it with the committed PNGs:
pixel for pixel when the matplotlib version is the manifest's (uv.lock pins it,
and matplotlib's wheels bring their own FreeType and fonts, so the same version
draws the same pixels), by size and a small pixel tolerance when it is not.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root and bench/ importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import matplotlib
from loadtest import report  # bench/loadtest/report.py: the load test's own chart drawing

from docs.images import graph, timeline, topology

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "docs" / "images" / "images.json"
LOADTEST = Path("bench/results/loadtest")
DRILLS = Path("bench/results/drills.json")


@dataclass(frozen=True)
class Picture:
    path: Path  # relative to the repository root
    sources: tuple[str, ...]  # where its data comes from, for the manifest and the reader
    data: Callable[[], Any]  # the facts drawn, JSON-able
    draw: Callable[[Any, Path], None]  # (data, output file)


@functools.cache
def helm_binary() -> str:
    """helm as the chart tests get it: $HELM, else deploy/local/tools.sh (`make tools`) provides it."""
    if explicit := os.environ.get("HELM"):
        return explicit
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy" / "local" / "tools.sh")],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"deploy/local/tools.sh could not provide helm:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def _drills() -> list[dict[str, Any]]:
    drills: list[dict[str, Any]] = json.loads((ROOT / DRILLS).read_text())["drills"]
    return timeline.drawable(drills)


def _loadtest_chart(name: str) -> Picture:
    def draw(data: Any, path: Path) -> None:
        getattr(report.Charts(data, path.parent), name)()

    return Picture(
        LOADTEST / f"{name}.png",
        (str(LOADTEST / "charts.json"),),
        lambda: json.loads((ROOT / LOADTEST / "charts.json").read_text()),
        draw,
    )


def pictures() -> list[Picture]:
    """Every picture, in the order they are drawn."""

    def graph_picture(make: Callable[[], graph.Graph]) -> Callable[[], Any]:
        return lambda: make().data()

    def draw_graph(data: Any, path: Path) -> None:
        nodes = [graph.Node(**{**n, "lines": tuple(n["lines"])}) for n in data["nodes"]]
        edges = [graph.Edge(**e) for e in data["edges"]]
        graph.draw(graph.Graph(data["title"], data["columns"], nodes, edges, data["note"]), path)

    return [
        Picture(
            Path("docs/images/topology-local.png"),
            ("deploy/local/stack.py", "monitoring/prometheus/prometheus.yml", "monitoring/prometheus/rules"),
            graph_picture(topology.local_graph),
            draw_graph,
        ),
        Picture(
            Path("docs/images/topology-cluster.png"),
            ("deploy/helm/catalog", "deploy/helm/catalog/ci/production-values.yaml"),
            graph_picture(lambda: topology.cluster_graph(topology.render_chart(helm_binary()))),
            draw_graph,
        ),
        Picture(
            Path("docs/images/drills.png"),
            (str(DRILLS),),
            _drills,
            lambda data, path: timeline.draw(data, path, "make drill: each fault under steady load, as recorded"),
        ),
        *(_loadtest_chart(name) for name in ("latency", "errors", "throughput", "jobs", "pods")),
    ]


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def manifest_entries(chosen: list[Picture]) -> dict[str, dict[str, Any]]:
    """Per picture: its sources and its data's digest (no drawing)."""
    return {str(p.path): {"sources": list(p.sources), "data_sha256": digest(p.data())} for p in chosen}


def generate(out: Path, chosen: list[Picture]) -> dict[str, Any]:
    """Draws `chosen` under `out` (paths kept) and returns the manifest describing them."""
    entries: dict[str, dict[str, Any]] = {}
    for picture in chosen:
        data = picture.data()
        target = out / picture.path
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.draw(data, target)
        entries[str(picture.path)] = {
            "sources": list(picture.sources),
            "data_sha256": digest(data),
            "pixels": list(png_size(target)),
        }
    return {"matplotlib": matplotlib.__version__, "pictures": entries}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make docs-images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write under DIR instead of the repository")
    arguments = parser.parse_args(argv)
    out = arguments.out or ROOT
    manifest = generate(out, pictures())
    target = (out / MANIFEST.relative_to(ROOT)) if arguments.out else MANIFEST
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(manifest, indent=2) + "\n")
    for name, entry in manifest["pictures"].items():
        print(f"docs-images: {name} ({entry['pixels'][0]}x{entry['pixels'][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
