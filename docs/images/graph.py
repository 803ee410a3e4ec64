"""Boxes in columns and arrows between them: the topology pictures' drawing, with no facts of its own.

A `Graph` is what a picture says (nodes, edges, column headings); `draw` only places
it. Columns are given by the caller (a node's role: edge, pods, data, monitoring);
inside a column, nodes are ordered by the mean row of their neighbours in the
columns before it (one barycenter pass, enough for pictures of a dozen boxes), so
an arrow mostly runs straight across. Nothing is placed by hand: a node added to
the data appears in its column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

# Box and gap sizes in inches at DPI; the figure grows with the columns and the tallest column.
DPI = 100
BOX_WIDTH = 2.5
COLUMN_GAP = 1.3
LINE_HEIGHT = 0.19
BOX_PADDING = 0.16
ROW_GAP = 0.28
HEADING_HEIGHT = 0.55
TITLE_HEIGHT = 0.45

# One fill per kind of node (the caller's `tone`); the edge of a box says started/not started.
TONES = {
    "edge": "#dbe9f6",
    "api": "#d5efd5",
    "worker": "#fbe3c8",
    "data": "#eadcf2",
    "monitoring": "#fbf3c4",
    "config": "#ececec",
    "policy": "#f6d9d9",
}


@dataclass(frozen=True)
class Node:
    key: str
    title: str
    lines: tuple[str, ...] = ()
    column: int = 0
    tone: str = "config"
    dashed: bool = False  # not run by this form (shown for where it would sit)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""
    dashed: bool = False  # control or observation (scrapes, scales, selects), not request traffic


@dataclass
class Graph:
    title: str
    columns: list[str]
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    note: str = ""

    def data(self) -> dict[str, Any]:
        """Everything the picture shows, JSON-able: what the manifest's digest is taken over."""
        return asdict(self)

    def check(self) -> None:
        keys = [node.key for node in self.nodes]
        if len(keys) != len(set(keys)):
            raise ValueError(f"{self.title}: a node key appears twice: {sorted(keys)}")
        for edge in self.edges:
            for end in (edge.source, edge.target):
                if end not in keys:
                    raise ValueError(f"{self.title}: edge {edge.source} -> {edge.target} names no node {end!r}")
            if edge.source == edge.target:
                raise ValueError(f"{self.title}: edge from {edge.source} to itself")


def _height(node: Node) -> float:
    return BOX_PADDING * 2 + LINE_HEIGHT * (1 + len(node.lines))


def _centres(columns: dict[int, list[Node]]) -> dict[str, float]:
    """Each node's vertical centre, columns centred on one line as `draw` places them (0 = top)."""
    centres: dict[str, float] = {}
    for nodes in columns.values():
        stack = sum(_height(n) for n in nodes) + ROW_GAP * (len(nodes) - 1)
        y = -stack / 2
        for node in nodes:
            centres[node.key] = y + _height(node) / 2
            y += _height(node) + ROW_GAP
    return centres


def _order(graph: Graph) -> dict[int, list[Node]]:
    """Nodes per column, ordered so arrows cross little: sweeps left to right and back, each column
    sorted by the mean height of its neighbours (barycenter), ties kept in the data's order."""
    columns: dict[int, list[Node]] = {index: [] for index in range(len(graph.columns))}
    for node in graph.nodes:
        columns[node.column].append(node)
    neighbours: dict[str, list[str]] = {node.key: [] for node in graph.nodes}
    for edge in graph.edges:
        neighbours[edge.source].append(edge.target)
        neighbours[edge.target].append(edge.source)
    sweep = [*sorted(columns), *sorted(columns, reverse=True)]
    for index in sweep * 2:
        centres = _centres(columns)
        here = {node.key for node in columns[index]}

        def barycenter(node: Node, centres: dict[str, float] = centres, here: set[str] = here) -> float:
            around = [centres[other] for other in neighbours[node.key] if other not in here]
            return sum(around) / len(around) if around else centres[node.key]

        columns[index].sort(key=lambda n: (barycenter(n), graph.nodes.index(n)))
    return columns


def _box(axes: Axes, node: Node, x: float, top: float) -> None:
    height = _height(node)
    axes.add_patch(
        FancyBboxPatch(
            (x, top - height),
            BOX_WIDTH,
            height,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=TONES[node.tone],
            edgecolor="#555555",
            linestyle="--" if node.dashed else "-",
            linewidth=1,
        )
    )
    axes.text(x + 0.1, top - BOX_PADDING, node.title, fontsize=9, fontweight="bold", va="top", ha="left")
    for index, line in enumerate(node.lines, start=1):
        axes.text(x + 0.1, top - BOX_PADDING - index * LINE_HEIGHT, line, fontsize=7.5, va="top", ha="left")


def draw(graph: Graph, path: Path) -> None:
    """Writes `graph` as a PNG at `path` (DPI dots per inch, no timestamp in the file)."""
    graph.check()
    columns = _order(graph)
    tallest = max(sum(_height(n) for n in nodes) + ROW_GAP * (len(nodes) - 1) for nodes in columns.values())
    note_height = LINE_HEIGHT * 1.6 * (graph.note.count("\n") + 1) if graph.note else 0.0
    width = len(columns) * BOX_WIDTH + (len(columns) - 1) * COLUMN_GAP + 0.4
    height = TITLE_HEIGHT + HEADING_HEIGHT + tallest + note_height + 0.3
    figure = plt.figure(figsize=(width, height), dpi=DPI)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, width)
    axes.set_ylim(0, height)
    axes.axis("off")
    axes.text(0.2, height - 0.15, graph.title, fontsize=12, fontweight="bold", va="top")
    anchors: dict[str, tuple[float, float, float]] = {}  # key -> (left x, centre y, half height)
    for index, nodes in columns.items():
        x = 0.2 + index * (BOX_WIDTH + COLUMN_GAP)
        top = height - TITLE_HEIGHT
        axes.text(x + BOX_WIDTH / 2, top - 0.1, graph.columns[index], fontsize=9, color="#444444", ha="center")
        stack = sum(_height(n) for n in nodes) + ROW_GAP * (len(nodes) - 1)
        y = top - HEADING_HEIGHT - (tallest - stack) / 2
        for node in nodes:
            _box(axes, node, x, y)
            anchors[node.key] = (x, y - _height(node) / 2, _height(node) / 2)
            y -= _height(node) + ROW_GAP
    for edge in graph.edges:
        _arrow(axes, edge, anchors[edge.source], anchors[edge.target])
    if graph.note:
        axes.text(0.2, 0.15, graph.note, fontsize=8, color="#444444", va="bottom", linespacing=1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(figure)


def _arrow(axes: Axes, edge: Edge, source: tuple[float, float, float], target: tuple[float, float, float]) -> None:
    (sx, sy, _), (tx, ty, _) = source, target
    if abs(sx - tx) < 1e-6:  # same column: bend out to the right
        start, end, bend = (sx + BOX_WIDTH, sy), (tx + BOX_WIDTH, ty), "arc3,rad=-0.4"
    elif tx > sx:
        start, end, bend = (sx + BOX_WIDTH, sy), (tx, ty), "arc3,rad=0"
    else:
        start, end, bend = (sx, sy), (tx + BOX_WIDTH, ty), "arc3,rad=0"
    axes.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=11,
            connectionstyle=bend,
            color="#7a7a7a" if edge.dashed else "#333333",
            linestyle="--" if edge.dashed else "-",
            linewidth=1,
            shrinkA=2,
            shrinkB=2,
        )
    )
    if edge.label:
        # Near the target's end, where arrows into one box fan out least.
        x, y = start[0] + (end[0] - start[0]) * 0.62, start[1] + (end[1] - start[1]) * 0.62
        axes.text(
            x,
            y,
            edge.label,
            fontsize=7,
            ha="center",
            va="center",
            color="#333333",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
        )
