"""The README and the pages under docs/ name only what is real.

Beside `test_fresh_clone.py` (every repository path named exists, every relative link's file
exists), this checks what those cannot: every `make` target a page tells the reader to run is
a target of the Makefile, every environment variable a page names is read or set somewhere in
the repository (or is a setting of `service/config.py`), and every `#anchor` of a link is a
heading of the page it points at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from service.config import Settings, WorkerSettings
from tests.fixtures.paths import ROOT

_MAKE = re.compile(r"\bmake ((?:[a-z][a-z0-9-]*)(?: [a-z][a-z0-9-]*)*)")
# An environment variable as the pages write one: upper case with at least one underscore,
# in a code span, a code block or as NAME=...; a pattern (`OTEL_BSP_*`) is not one name.
_VARIABLE = re.compile(r"(?<![\w$/.-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![\w*a-z-])")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_SKIP_DIRS = {".venv", ".tools", ".run", "__pycache__", ".git", "node_modules", ".mypy_cache", ".ruff_cache"}

# Variables the pages name that no file of ours reads, each with who reads it.
EXTERNAL: dict[str, str] = {
    "GF_PATHS_PROVISIONING": "Grafana's own setting (docs/operations.md runs a standalone Grafana)",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "read by the OpenTelemetry SDK's exporter",
    "OTEL_EXPORTER_OTLP_HEADERS": "read by the OpenTelemetry SDK's exporter",
    "OTEL_RESOURCE_ATTRIBUTES": "read by the OpenTelemetry SDK's resource detector",
    "OTEL_TRACES_SAMPLER_ARG": "read by the OpenTelemetry SDK's sampler",
}


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _prose(page: Path) -> str:
    return re.sub(r"https?://\S+", "", page.read_text(encoding="utf-8"))


def _code(text: str) -> Iterator[str]:
    """The code spans and code-block lines of a page: where a command is written to be run."""
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block:
            yield line
        else:
            yield from re.findall(r"`([^`]+)`", line)


def make_targets(text: str) -> set[str]:
    """Targets a page says to run (`make down && make up` names two), read from its code only."""
    return {match.group(1).split(" ", 1)[0] for code in _code(text) for match in _MAKE.finditer(code)}


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def variables(text: str) -> set[str]:
    """Environment variables a page names (upper case with an underscore, not a pattern)."""
    return set(_VARIABLE.findall(text))


def _repository_text() -> Iterator[str]:
    """Every file a variable can be read or set in: code, scripts, templates, not the pages themselves."""
    for path in ROOT.rglob("*"):
        if not path.is_file() or _SKIP_DIRS & set(path.relative_to(ROOT).parts):
            continue
        if path.suffix in {".md", ".lock", ".svg", ".png", ".json", ".html"}:
            continue
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"^#{1,6} (.+)$", line)):
            found.add(slug(match.group(1)))
    return found


def broken_anchors(page: Path, base: Path = ROOT) -> list[str]:
    """`file:line: link` for each link whose #anchor is not a heading of the Markdown page it names."""
    broken = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for match in _LINK.finditer(line):
            target, _, anchor = match.group(1).partition("#")
            if not anchor or re.match(r"^[a-z]+:", target):
                continue
            linked = (page.parent / target).resolve() if target else page
            if linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(base)}:{number}: {match.group(1)}")
    return broken


def test_every_make_target_the_pages_name_exists() -> None:
    defined = makefile_targets()
    missing = {f"{page.relative_to(ROOT)}: make {name}" for page in pages() for name in make_targets(_prose(page))}
    missing = {entry for entry in missing if entry.rsplit(" ", 1)[1] not in defined}
    assert missing == set(), "a page names a make target the Makefile does not define"


def test_every_variable_the_pages_name_is_read_or_set_somewhere() -> None:
    settings = {name.upper() for name in (*Settings.model_fields, *WorkerSettings.model_fields)}
    named = {name: page for page in pages() for name in variables(_prose(page))}
    unknown = set(named) - settings - set(EXTERNAL)
    corpus = "\n".join(_repository_text())
    missing = sorted(f"{named[name].relative_to(ROOT)}: {name}" for name in unknown if name not in corpus)
    assert missing == [], "named by a page, read or set nowhere (fix the page, or add to EXTERNAL with who reads it)"


def test_every_link_anchor_is_a_heading_of_its_page() -> None:
    broken = [entry for page in pages() for entry in broken_anchors(page)]
    assert broken == [], "\n".join(broken)


def test_the_checks_catch_a_renamed_target_a_stray_variable_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Run it\n\nRun `make up`, then `make down && make restart-api`; set `API_PORT=8001`, make entries,\n"
        "`OTEL_BSP_*` is a pattern and SIGTERM no variable. See [run](#run-it), [gone](#nowhere)"
        " and [other](other.md#missing).\n"
    )
    (tmp_path / "other.md").write_text("# Other\n")
    text = page.read_text()
    assert make_targets(text) == {"up", "down", "restart-api"}
    assert variables(text) == {"API_PORT"}
    assert {entry.rsplit(": ", 1)[1] for entry in broken_anchors(page, tmp_path)} == {"#nowhere", "other.md#missing"}
    assert "up" in makefile_targets()
    assert "renamed-target" not in makefile_targets()
