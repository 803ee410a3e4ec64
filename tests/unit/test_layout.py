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


MAX_FUNCTION_LINES = 60  # issue 13: a function a reader can hold on one screen


def test_no_function_in_service_or_monitoring_is_over_60_lines() -> None:
    """Definition line to last line, docstring included; data tables are module-level constants, not functions."""
    long = []
    for package in ("service", "monitoring"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "split these:\n" + "\n".join(long)
