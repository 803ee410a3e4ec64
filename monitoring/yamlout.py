"""A small, deterministic YAML writer for the generated rule and test files.

Only what the generated files use: mappings (key order kept), sequences,
strings, numbers and booleans. Multi-line strings become `|-` blocks so PromQL
stays readable; anything else that could be misread is single-quoted, or
JSON-quoted when it holds control characters (a JSON string is a valid YAML
double-quoted scalar). tests/deploy/test_monitoring.py
reads every output back with a real YAML parser and compares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

Yaml: TypeAlias = "str | int | float | bool | Sequence[Yaml] | Mapping[str, Yaml] | None"

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_ ./:()-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def dump(value: Yaml, header: str = "") -> str:
    """The document for `value`, preceded by `header` as comment lines."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + "".join(line + "\n" for line in _lines(value, 0))


def _scalar(value: Yaml) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    assert isinstance(value, str)
    if _PLAIN.match(value) and value.lower() not in _RESERVED and not value.endswith(" ") and ": " not in value:
        return value
    if value.isprintable():  # single quotes keep PromQL's double quotes unescaped
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value, ensure_ascii=False)


def _is_block(value: Yaml) -> bool:
    return isinstance(value, str) and "\n" in value and not any(line != line.rstrip() for line in value.splitlines())


def _lines(value: Yaml, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        lines: list[str] = []
        for key, item in value.items():
            lines.extend(_entry(pad + _scalar(key) + ":", item, indent))
        return lines
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            nested = _lines(item, indent + 2) if _is_collection(item) else None
            if nested is not None and nested[0].strip() not in ("{}", "[]"):
                lines.append(pad + "- " + nested[0].lstrip())
                lines.extend(nested[1:])
            else:
                lines.extend(_entry(pad + "-", item, indent))
        return lines
    return [pad + _scalar(value)]


def _is_collection(value: Yaml) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str))


def _entry(prefix: str, item: Yaml, indent: int) -> list[str]:
    if _is_collection(item):
        nested = _lines(item, indent + 2)
        if nested[0].strip() in ("{}", "[]"):
            return [prefix + " " + nested[0].strip()]
        return [prefix, *nested]
    if _is_block(item):
        assert isinstance(item, str)
        body = " " * (indent + 2)
        return [prefix + " |-", *((body + line) if line else "" for line in item.splitlines())]
    return [prefix + " " + _scalar(item)]
