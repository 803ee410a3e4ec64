"""docs/configuration.md documents every setting and nothing that is not one; docs/tilt.md names what exists."""

from __future__ import annotations

import re

from service.config import Settings, WorkerSettings
from tests.fixtures.paths import ROOT


def test_every_setting_is_documented() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    first_cells = [line.split("|")[1] for line in page.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    settings = {name.upper() for name in (*Settings.model_fields, *WorkerSettings.model_fields)}
    assert settings - documented == set(), "add these to the table in docs/configuration.md"
    assert documented - settings == set(), "docs/configuration.md documents variables the service does not read"


# Repository paths as docs/tilt.md writes them (URLs are removed first).
REPO_PATH = re.compile(r"(?<![\w./-])((?:deploy|tests|service|monitoring)/[\w./-]*\w/?|Tiltfile|Dockerfile|Makefile)")


def _tilt_page() -> str:
    return (ROOT / "docs" / "tilt.md").read_text()


def test_the_tilt_page_says_what_ci_runs_and_what_it_only_evaluates() -> None:
    page = _tilt_page()
    assert "Run in our CI on the single-node cluster built from source; the kind path is\nevaluated" in page
    assert "\n## On the cluster of `make cluster`\n" in page


def test_every_make_target_the_tilt_section_names_exists() -> None:
    named = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", _tilt_page()))
    defined = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert {"kind-up", "kind-down", "install", "tools"} <= named
    assert named - defined == set()


def test_every_file_the_tilt_section_names_exists() -> None:
    text = re.sub(r"https?://\S+", "", _tilt_page())
    paths = set(REPO_PATH.findall(text))
    assert len(paths) >= 15, paths
    assert sorted(path for path in paths if not (ROOT / path).exists()) == []


def test_every_tilt_resource_and_label_the_tilt_section_names_is_in_the_tiltfile() -> None:
    table = _tilt_page().split("**What each Tilt resource is**", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|") for line in table.splitlines() if re.match(r"\| [a-z]+ \| `", line)]
    tiltfile = (ROOT / "Tiltfile").read_text()
    quoted = set(re.findall(r"'([\w.-]+)'", tiltfile))
    labels = set(re.findall(r"labels=\['([\w-]+)'\]", tiltfile))
    assert {row[1].strip() for row in rows} == labels, "one row per label group, every group listed"
    resources = {name for row in rows for name in re.findall(r"`([\w*-]+)`", row[2])}
    assert len(resources) >= 15
    for name in resources:
        if name.endswith("*"):
            assert f"'{name[:-1]}" in tiltfile, name
        else:
            assert name in quoted, f"{name} is not a resource name in the Tiltfile"


def test_the_versions_the_tilt_section_states_are_the_pinned_ones() -> None:
    section = _tilt_page()
    tiltfile = (ROOT / "Tiltfile").read_text()
    script = (ROOT / "deploy" / "kind" / "cluster.sh").read_text()
    charts = re.findall(r"chart (\d+\.\d+\.\d+)", section)
    assert len(charts) == 4
    for version in charts:
        assert f"'{version}'" in tiltfile, version
    kind = re.search(r"^KIND_VERSION=(\S+)$", script, re.MULTILINE)
    ctlptl = re.search(r"^CTLPTL_VERSION=(\S+)$", script, re.MULTILINE)
    assert kind
    assert ctlptl
    assert f"| kind | {kind[1]} " in section
    assert f"| ctlptl | v{ctlptl[1]} |" in section
    tilt = re.search(r"constraint='>=(\d+\.\d+)\.0 <", tiltfile)
    assert tilt
    assert f"| Tilt | v{tilt[1]}.x " in section
