"""Test modules share helpers through tests/fixtures/ only: none imports another test module or a conftest."""

from __future__ import annotations

import ast

from tests.fixtures.paths import ROOT

TESTS = ROOT / "tests"


def _imported_modules(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _is_test_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and any(part.startswith("test_") or part == "conftest" for part in parts[1:])


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative == "tests/conftest.py":
            continue  # it registers the fixture modules
        bad = sorted(module for module in _imported_modules(relative) if _is_test_module(module))
        if bad:
            offenders.append(f"{relative}: {', '.join(bad)}")
    assert offenders == [], "import shared helpers from tests.fixtures.* instead:\n" + "\n".join(offenders)


def test_the_check_sees_a_forbidden_import() -> None:
    assert _is_test_module("tests.conftest")
    assert _is_test_module("tests.integration.test_items.ITEM")
    assert _is_test_module("tests.e2e.conftest.ApiProcess")
    assert not _is_test_module("tests.fixtures.items.ITEM")
    assert not _is_test_module("service.jobs.schemas")
