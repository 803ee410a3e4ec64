"""The README's configuration table documents every setting, and nothing that is not one."""

from __future__ import annotations

import re

from service.config import Settings, WorkerSettings
from tests.fixtures.paths import ROOT


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    settings = {name.upper() for name in (*Settings.model_fields, *WorkerSettings.model_fields)}
    assert settings - documented == set(), "add these to the README's configuration table"
    assert documented - settings == set(), "the README documents variables the service does not read"
