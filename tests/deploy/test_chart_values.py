"""values.yaml and values.schema.json follow the chart style: every value is
commented starting with its own name, and the schema refuses unknown keys at
every level."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fixtures.chart import CHART

VALUES = CHART / "values.yaml"
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
# Kubernetes structures passed through as they are (their fields are Kubernetes', not ours).
PASSTHROUGH = {"resources"}
KEY = re.compile(r"^(\s*)(- )?([A-Za-z][A-Za-z0-9]*):")


def _undocumented(text: str) -> list[str]:
    lines = text.splitlines()
    missing: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, inside a list item)
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent, in_list, key = len(match[1]), bool(match[2]), match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [name for _, name, _ in stack]
        inside_data = in_list or any(flag for _, _, flag in stack) or bool(PASSTHROUGH & set(parents))
        stack.append((indent, key, in_list))
        if inside_data:
            continue
        previous = number - 1
        while previous >= 0 and lines[previous].lstrip().startswith("#"):
            if lines[previous].lstrip().startswith(f"# {key} "):
                break
            previous -= 1
        if previous < 0 or not lines[previous].lstrip().startswith(f"# {key} "):
            missing.append(".".join([*parents, key]))
    return missing


def test_every_value_is_commented_starting_with_its_name() -> None:
    assert _undocumented(VALUES.read_text()) == []


def test_the_comment_check_notices_a_missing_comment() -> None:
    text = VALUES.read_text().replace("# nameOverride replaces", "# replaces", 1)
    assert _undocumented(text) == ["nameOverride"]


def _objects_without_additional_properties_false(schema: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False:
            found.append(path or "/")
        for key, value in schema.items():
            found += _objects_without_additional_properties_false(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found += _objects_without_additional_properties_false(item, f"{path}/{index}")
    return found


def test_schema_refuses_unknown_keys_at_every_level() -> None:
    assert _objects_without_additional_properties_false(SCHEMA) == []


def test_values_use_camel_case() -> None:
    for line in VALUES.read_text().splitlines():
        match = KEY.match(line)
        if match and not match[2]:
            assert "_" not in match[3], line
